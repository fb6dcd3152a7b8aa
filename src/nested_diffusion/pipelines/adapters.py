"""Glue between diffusers objects and the core sampler (duck-typed: nothing here imports diffusers).

* ``SchedulerSolver``: any diffusers scheduler that accepts ``set_timesteps(timesteps=...)`` used as the inner
  solver of the core ``NestedSolver``. A fresh instance is built from the config for every inner run (diffusers
  schedulers are stateful; reuse without reset raises or silently mixes runs).
* ``resolve_nested_args``: our argument names and the authors' (num_inference_steps, num_inner_steps,
  inner_scheduler, eta) → one validated set, before any model is called.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from ..core.schedule import NoiseSchedule
from ..core.solvers import (SQRT_ONE_MINUS_ALPHA_BAR, DDIMSolver, DDPMLearnedSolver, DPMSolverPP2M, DPMSolverPP2S, Solver,
                       SolverEvent, _check_steps, step_grid, validate_eta, zero_ending_grid)
from .noise import step_generator

INNER_SOLVERS = ("ddim", "dpmpp_2s", "dpmpp_2m", "ddpm")
_NAME_ALIASES = {"ddim": "ddim", "dpmsolver": "dpmpp_2s", "dpmpp_2s": "dpmpp_2s", "dpm++2s": "dpmpp_2s",
                 "dpmpp_2m": "dpmpp_2m", "dpm++2m": "dpmpp_2m", "ddpm": "ddpm", "ddpm_learned": "ddpm"}
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
            yield SolverEvent(i + 1, state if final else out.x0, "result" if final else "preview", final, True,
                              i, pts[i])


def resolve_inner_solver(spec: Any, inner_eta: Any, default_eta: float = 0.85) -> Solver:
    """'ddim' | 'dpmpp_2s' | 'dpmpp_2m' | 'ddpm' (also the authors' 'DDIM' / 'DPMSolver'), a core Solver, or a
    diffusers scheduler instance (wrapped in SchedulerSolver). ``inner_eta`` applies to DDIM only."""
    if is_diffusers_scheduler(spec):
        if inner_eta is not None:
            raise ValueError(f"inner_eta: only the 'ddim' inner solver takes η, got inner_eta={inner_eta} with "
                             f"{type(spec).__name__}")
        return SchedulerSolver(spec)
    if isinstance(spec, Solver):
        if inner_eta is not None:
            raise ValueError("inner_eta: pass η to the Solver instance itself, not as inner_eta")
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"inner_solver: expected a name ({', '.join(INNER_SOLVERS)}), a core Solver or a diffusers "
                        f"scheduler instance, got {type(spec).__name__}")
    key = _NAME_ALIASES.get(spec.lower().replace("-", "_"))
    if key is None:
        raise ValueError(f"inner_solver: unknown solver {spec!r}; valid: {', '.join(INNER_SOLVERS)} "
                         f"(or the authors' 'DDIM', 'DPMSolver'), or a diffusers scheduler instance")
    if key == "ddim":
        return DDIMSolver(validate_eta(default_eta if inner_eta is None else inner_eta, "inner_eta"))
    if inner_eta is not None:
        raise ValueError(f"inner_eta: only the 'ddim' inner solver takes η, got inner_eta={inner_eta} with {spec!r}")
    return {"dpmpp_2s": DPMSolverPP2S, "dpmpp_2m": DPMSolverPP2M, "ddpm": DDPMLearnedSolver}[key]()


def is_dpm_solver(solver: Solver) -> bool:
    return isinstance(solver, (DPMSolverPP2S, DPMSolverPP2M)) or getattr(solver, "is_dpm_solver", False)


def _merge(ours: Any, ours_name: str, theirs: Any, theirs_name: str) -> Any:
    if ours is not None and theirs is not None and ours != theirs:
        raise ValueError(f"{ours_name}={ours!r} and {theirs_name}={theirs!r} name the same setting with different "
                         f"values; pass only one")
    return ours if ours is not None else theirs


@dataclass
class NestedArgs:
    outer_steps: int
    inner_steps: Any
    solver: Solver
    outer_eta: Any


def resolve_nested_args(outer_steps, num_inference_steps, inner_steps, num_inner_steps, inner_solver,
                        inner_scheduler, inner_eta, outer_eta, eta, *, default_outer: int, default_inner: int,
                        default_solver: str, auto_outer_eta_for_dpm: bool) -> NestedArgs:
    """Merge both naming schemes and apply the defaults. Outer η default: √(1−ᾱ_t) when the inner solver is
    DPM-Solver++ and ``auto_outer_eta_for_dpm`` (the paper's high-order setting, §C.2), else 0 (DDIM)."""
    outer = _merge(outer_steps, "outer_steps", num_inference_steps, "num_inference_steps")
    inner = _merge(inner_steps, "inner_steps", num_inner_steps, "num_inner_steps")
    solver_spec = _merge(inner_solver, "inner_solver", inner_scheduler, "inner_scheduler")
    o_eta = _merge(outer_eta, "outer_eta", eta, "eta")
    outer = default_outer if outer is None else outer
    inner = default_inner if inner is None else inner
    _check_steps(outer, 10 ** 9, 10 ** 9, "outer_steps")
    if isinstance(inner, (list, tuple)):
        if len(inner) != outer:
            raise ValueError(f"inner_steps: a list needs one entry per outer step ({outer}), got {len(inner)}")
        for s in inner:
            _check_steps(s, 10 ** 9, 10 ** 9, "inner_steps")
    else:
        _check_steps(inner, 10 ** 9, 10 ** 9, "inner_steps")
    solver = resolve_inner_solver(default_solver if solver_spec is None else solver_spec, inner_eta)
    if o_eta is None:
        o_eta = SQRT_ONE_MINUS_ALPHA_BAR if (auto_outer_eta_for_dpm and is_dpm_solver(solver)) else 0.0
    validate_eta(o_eta, "outer_eta")
    return NestedArgs(int(outer), inner, solver, o_eta)
