"""Glue between diffusers objects and the core sampler (duck-typed: nothing here imports diffusers).

* ``SchedulerSolver``: any diffusers scheduler that accepts ``set_timesteps(timesteps=...)`` used as the inner
  solver of the core ``NestedSolver``. A fresh instance is built from the config for every inner run (diffusers
  schedulers are stateful; reuse without reset raises or silently mixes runs).
* ``pipeline_run``: a call's arguments (ours and the authors': num_inference_steps, num_inner_steps,
  inner_scheduler, eta; a named ``schedule`` with ``total_nfe``) → the ``core.run.RunConfig`` of the call, with the
  family's defaults, before any model is called.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Iterator

import numpy as np
import torch

from ..core.events import SolverEvent, step_event
from ..core.grids import step_grid, zero_ending_grid
from ..core.registry import FLOW, VP, eta_solvers, solver_names
from ..core.run import RunConfig, RunDefaults, resolve_run
from ..core.noise_schedule import NoiseSchedule
from ..core.solvers import Solver
from .noise import step_generator
_ENDS_AT_ZERO = ("DDPMScheduler", "DDPMParallelScheduler")  # add noise whenever t > 0: their grid must end at 0


def is_diffusers_scheduler(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("set_timesteps", "step", "config")) and not isinstance(obj, Solver)


class SchedulerSolver(Solver):
    """A diffusers scheduler as an inner solver, run on the core's partial grid through ``timesteps=``.

    The fresh instance per run gets ``prediction_type="sample"`` (the core denoiser already returns x̂0, so one
    conversion path serves ε-, v- and x0-models), ``final_sigmas_type="zero"`` and ``lower_order_final=True``
    where the config has them (the run must end on the clean sample), and ``set_begin_index(0)`` (no per-step
    index lookup). VE-coordinate schedulers (Euler family) get the VP state scaled by √(1+σ²) on entry.
    Grid: the core's "clean" points; DDPM-type schedulers use round(linspace(t, 0, n)) ending at t = 0.
    """

    def __init__(self, scheduler: Any):
        if not is_diffusers_scheduler(scheduler):
            raise TypeError(f"inner_solver: expected a diffusers scheduler instance, got {type(scheduler).__name__}")
        cls = type(scheduler)
        if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError(f"inner_solver: {cls.__name__} cannot run an arbitrary partial grid (its set_timesteps "
                             f"has no timesteps= argument); use 'ddim', 'dpmpp_2s', 'dpmpp_2m', or e.g. "
                             f"DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, DDPMScheduler, "
                             f"EulerDiscreteScheduler")
        if getattr(scheduler, "order", 1) != 1:
            raise ValueError(f"inner_solver: {cls.__name__} has order {scheduler.order} (it repeats timesteps, so "
                             f"NFE ≠ grid points); use a scheduler with order 1")
        # private keys dropped: diffusers resets keys listed in "_use_default_values" to the class defaults
        config = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
        config["prediction_type"] = "sample"
        for key, value in (("final_sigmas_type", "zero"), ("lower_order_final", True)):
            if key in config:
                config[key] = value
        self.cls, self.config, self.name = cls, config, cls.__name__
        if self.fresh().config.get("prediction_type") != "sample":
            raise ValueError(f"inner_solver: {cls.__name__} does not accept prediction_type='sample'")
        self.ends_at_zero = cls.__name__ in _ENDS_AT_ZERO
        self.learned_variance = str(config.get("variance_type", "")).startswith("learned")
        self.is_dpm_solver = cls.__name__.startswith("DPMSolver")

    def fresh(self):
        return self.cls.from_config(self.config)

    def check_schedule(self, schedule: NoiseSchedule) -> None:
        """The scheduler must describe the same ᾱ_t as the pipeline's outer process."""
        ac = getattr(self.fresh(), "alphas_cumprod", None)
        if ac is None:
            return
        ac = np.asarray(ac.double().cpu() if isinstance(ac, torch.Tensor) else ac, dtype=np.float64)
        ref = schedule.alphas_cumprod
        if ac.shape != ref.shape or not np.allclose(ac, ref, rtol=1e-4, atol=1e-6):
            raise ValueError(f"inner_solver: {self.name}'s noise schedule (beta_schedule="
                             f"{self.config.get('beta_schedule')!r}, {ac.size} steps) differs from the pipeline's; "
                             f"build it with <Scheduler>.from_config(pipe.scheduler.config)")

    def max_steps(self, t_start, convention):
        return t_start + 1 if self.ends_at_zero else t_start

    def grid(self, t_start, n, convention, name="inner_steps"):
        if not self.ends_at_zero:
            return step_grid(t_start, n, convention, name)
        return zero_ending_grid(t_start, n, convention, name)

    def run(self, denoiser, x, t_start, n, noise, cond=None, convention="clean") -> Iterator[SolverEvent]:
        pts = self.grid(t_start, n, convention)[:-1]
        s = self.fresh()
        s.set_timesteps(timesteps=pts, device=x.device)
        got = [int(round(float(t))) for t in s.timesteps]
        if got != pts:
            raise RuntimeError(f"inner_solver: {self.name} turned the grid {pts} into {got}")
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(0)
        kw = {"generator": step_generator(noise)} if "generator" in inspect.signature(s.step).parameters else {}
        state, scale = x, 1.0
        sigmas = getattr(s, "sigmas", None)
        if sigmas is not None and s.scale_model_input(x, s.timesteps[0]) is not x:
            scale = math.sqrt(1.0 + float(sigmas[0]) ** 2)  # VE coordinates: x_VE = x_VP / √ᾱ
            state = x * scale
        for i, t in enumerate(s.timesteps):
            out = denoiser(s.scale_model_input(state, t), pts[i], cond)
            model_out = out.x0
            if self.learned_variance and out.var_values is not None:
                model_out = torch.cat([out.x0, out.var_values.to(out.x0.dtype)], dim=1)
            state = s.step(model_out, t, state, return_dict=False, **kw)[0]
            final = i == n - 1
            if final and sigmas is not None and float(s.sigmas[-1]) > 0 and scale != 1.0:
                state = state / math.sqrt(1.0 + float(s.sigmas[-1]) ** 2)
            yield step_event(i, n, state, out.x0, pts[i])


def resolve_inner_solver(spec: Any, inner_eta: Any, kind: str = VP) -> Any:
    """The pipelines' translation of an inner-solver argument: a diffusers scheduler instance becomes a
    ``SchedulerSolver`` (it carries no η); a name or a core Solver passes through to ``core.run.resolve_run``."""
    if is_diffusers_scheduler(spec):
        if kind == FLOW:
            raise ValueError(f"inner_solver: diffusers scheduler instances ({type(spec).__name__}) are not supported "
                             f"by the flow pipelines; use {' or '.join(repr(n) for n in solver_names(FLOW))}")
        if inner_eta is not None:
            raise ValueError(f"inner_eta: only the {_eta_names()} inner solver takes η, got inner_eta={inner_eta} "
                             f"with {type(spec).__name__}")
        return SchedulerSolver(spec)
    if spec is not None and not isinstance(spec, (str, Solver)):
        raise TypeError(f"inner_solver: expected a name ({', '.join(solver_names(kind))}), a core Solver or a "
                        f"diffusers scheduler instance, got {type(spec).__name__}")
    return spec


def _eta_names() -> str:
    return "/".join(f"'{n}'" for n in eta_solvers())


PIPELINE_NAMES = {"nfe": "total_nfe", "first": None}  # a call's names for run options (None: not offered)
RUN_ARGS = ("outer_steps", "num_inference_steps", "inner_steps", "num_inner_steps", "inner_eta", "outer_eta", "eta",
            "schedule", "total_nfe", "grid")


def pipeline_run(a: dict, defaults: RunDefaults, num_train_timesteps: int = 1000) -> RunConfig:
    """The run of one pipeline call: its bound arguments ``a`` (our names and the authors':
    num_inference_steps, num_inner_steps, inner_scheduler, eta) resolved by ``core.run.resolve_run`` with the
    pipeline family's ``defaults`` (the class attribute ``run_defaults``)."""
    solver = a.get("inner_solver")
    if a.get("inner_scheduler") is not None:
        if solver is not None and solver is not a["inner_scheduler"]:
            raise ValueError(f"inner_solver={solver!r} and inner_scheduler={a['inner_scheduler']!r} name the same "
                             f"setting with different values; pass only one")
        solver = a["inner_scheduler"]
    solver = resolve_inner_solver(solver, a.get("inner_eta"), defaults.kind)
    try:
        return resolve_run(defaults=defaults, names=PIPELINE_NAMES, num_train_timesteps=num_train_timesteps,
                           inner_solver=solver, **{k: a.get(k) for k in RUN_ARGS})
    except ValueError as e:
        if "unknown solver" in str(e) and defaults.kind == VP:
            raise ValueError(f"{e} (or the authors' 'DDIM', 'DPMSolver'), or a diffusers scheduler instance") from None
        raise


def checked_solver(run: RunConfig, schedule: NoiseSchedule) -> RunConfig:
    """A diffusers scheduler used as the inner solver must describe the pipeline's ᾱ_t."""
    if isinstance(run.inner_solver, SchedulerSolver):
        run.inner_solver.check_schedule(schedule)
    return run
