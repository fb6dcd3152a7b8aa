"""Glue between diffusers objects and the core sampler (duck-typed: nothing here imports diffusers).

* ``SchedulerSolver``: any diffusers scheduler that accepts ``set_timesteps(timesteps=...)`` used as the inner
  solver of the core ``NestedSolver``. A fresh instance is built from the config for every inner run (diffusers
  schedulers are stateful; reuse without reset raises or silently mixes runs).
* ``resolve_nested_args``: our argument names and the authors' (num_inference_steps, num_inner_steps,
  inner_scheduler, eta) → one validated set, before any model is called.
* ``resolve_schedule``: a named nested schedule (``schedule="progressive"``, ``total_nfe=100``) or a
  ``core.schedules.Schedule`` instead of explicit outer/inner step counts.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from ..core.events import SolverEvent, step_event
from ..core.grids import check_step_counts, check_steps, step_grid, zero_ending_grid
from ..core.eta import SQRT_ONE_MINUS_ALPHA_BAR, validate_eta
from ..core.registry import eta_solvers, solver_names, solver_spec, spec_of
from ..core.schedule import NoiseSchedule
from ..core.schedules import Schedule, make_schedule, schedule_names
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


def resolve_inner_solver(spec: Any, inner_eta: Any) -> Solver:
    """A registered name (``core.registry``: 'ddim', 'dpmpp_2s', 'dpmpp_2m', 'ddpm', …, also the authors' 'DDIM' /
    'DPMSolver'), a core Solver, or a diffusers scheduler instance (wrapped in SchedulerSolver). ``inner_eta``
    applies to solvers that take η; a DDIM inner run defaults to the registry's inner η (0.85)."""
    if is_diffusers_scheduler(spec):
        if inner_eta is not None:
            raise ValueError(f"inner_eta: only the {_eta_names()} inner solver takes η, got inner_eta={inner_eta} "
                             f"with {type(spec).__name__}")
        return SchedulerSolver(spec)
    if isinstance(spec, Solver):
        if inner_eta is not None:
            raise ValueError("inner_eta: pass η to the Solver instance itself, not as inner_eta")
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"inner_solver: expected a name ({', '.join(solver_names())}), a core Solver or a diffusers "
                        f"scheduler instance, got {type(spec).__name__}")
    try:
        entry = solver_spec(spec, "inner_solver")
    except ValueError:
        raise ValueError(f"inner_solver: unknown solver {spec!r}; valid: {', '.join(solver_names())} "
                         f"(or the authors' 'DDIM', 'DPMSolver'), or a diffusers scheduler instance") from None
    if inner_eta is not None and not entry.takes_eta:
        raise ValueError(f"inner_eta: only the {_eta_names()} inner solver takes η, got inner_eta={inner_eta} "
                         f"with {spec!r}")
    return entry.build(inner_eta, inner=True, eta_name="inner_eta")


def _eta_names() -> str:
    return "/".join(f"'{n}'" for n in eta_solvers())


def implied_outer_eta(solver: Solver) -> Any:
    """The outer η an inner solver implies: its registry entry's, or √(1−ᾱ_t) for a diffusers DPM-Solver."""
    entry = spec_of(solver)
    if entry is not None:
        return entry.outer_eta_default
    return SQRT_ONE_MINUS_ALPHA_BAR if getattr(solver, "is_dpm_solver", False) else 0.0


def step_counts(outer: Any, inner: Any, default_outer: int, default_inner: int) -> tuple[int, Any]:
    """Outer and inner step counts with their defaults applied, validated (inner: an int or one per outer step)."""
    outer = default_outer if outer is None else outer
    inner = default_inner if inner is None else inner
    check_steps(outer, 10 ** 9, 10 ** 9, "outer_steps")
    if isinstance(inner, (list, tuple)) and len(inner) != outer:
        raise ValueError(f"inner_steps: a list needs one entry per outer step ({outer}), got {len(inner)}")
    check_step_counts(inner, "inner_steps")
    return int(outer), inner


def merge_names(ours: Any, ours_name: str, theirs: Any, theirs_name: str) -> Any:
    """Our argument name and the authors' for one setting: at most one value (or equal values)."""
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
    outer_times: list[int] | None = None   # explicit outer grid (a schedule's); None: the evenly spaced one


STEP_ARGS = ("outer_steps", "num_inference_steps", "inner_steps", "num_inner_steps")


def resolve_schedule(schedule: Any, total_nfe: Any, steps: dict, default_budget: int,
                     t_start: int) -> Schedule | None:
    """The call's nested schedule, or None for explicit step counts. ``schedule``: a name from
    ``core.schedules`` ("progressive", "uniform") built for ``total_nfe`` inner steps in total (default
    ``default_budget``, the pipeline's default outer × inner) from ``t_start``, or a ``Schedule``. ``steps``: the
    explicit step arguments of the call (name → value); any of them given together with a schedule is an error."""
    if schedule is None:
        if total_nfe is not None:
            raise ValueError(f"total_nfe: the NFE budget of a named schedule; pass it with schedule= (one of "
                             f"{schedule_names()}), or give outer_steps/inner_steps instead")
        return None
    given = [name for name, value in steps.items() if value is not None]
    if given:
        raise ValueError(f"schedule and {'/'.join(given)}: a schedule sets the outer and inner steps itself; pass "
                         f"either schedule= (with total_nfe=) or explicit step counts, not both")
    if isinstance(schedule, Schedule):
        if total_nfe is not None:
            raise ValueError(f"total_nfe: only with a schedule given by name; this Schedule already spends "
                             f"{schedule.inner_total} inner steps")
        return schedule
    if not isinstance(schedule, str):
        raise TypeError(f"schedule: expected a name ({', '.join(schedule_names())}) or a Schedule, got "
                        f"{type(schedule).__name__}")
    budget = default_budget if total_nfe is None else total_nfe
    check_steps(budget, 10 ** 9, 10 ** 9, "total_nfe")
    if t_start is None:
        raise ValueError(f"t_start: schedule {schedule!r} needs the sampler's start time for its outer times")
    return make_schedule(schedule, int(budget), int(t_start))


def resolve_nested_args(outer_steps, num_inference_steps, inner_steps, num_inner_steps, inner_solver,
                        inner_scheduler, inner_eta, outer_eta, eta, *, default_outer: int, default_inner: int,
                        default_solver: str, auto_outer_eta_for_dpm: bool, schedule: Any = None,
                        total_nfe: Any = None, t_start: int | None = None) -> NestedArgs:
    """Merge both naming schemes and apply the defaults. Outer η default: √(1−ᾱ_t) when the inner solver is
    DPM-Solver++ and ``auto_outer_eta_for_dpm`` (the paper's high-order setting, §C.2), else 0 (DDIM).
    ``schedule``/``total_nfe`` (see ``resolve_schedule``; ``t_start``: the sampler's start time) replace the
    step counts: then ``outer_times`` is the schedule's outer grid."""
    named = resolve_schedule(schedule, total_nfe, dict(zip(STEP_ARGS, (outer_steps, num_inference_steps,
                                                                        inner_steps, num_inner_steps))),
                             default_outer * default_inner, t_start)
    if named is not None:
        outer_steps, inner_steps = named.outer_steps, list(named.inner_steps)
    outer, inner = step_counts(merge_names(outer_steps, "outer_steps", num_inference_steps, "num_inference_steps"),
                               merge_names(inner_steps, "inner_steps", num_inner_steps, "num_inner_steps"),
                               default_outer, default_inner)
    chosen = merge_names(inner_solver, "inner_solver", inner_scheduler, "inner_scheduler")
    o_eta = merge_names(outer_eta, "outer_eta", eta, "eta")
    solver = resolve_inner_solver(default_solver if chosen is None else chosen, inner_eta)
    if o_eta is None:
        o_eta = implied_outer_eta(solver) if auto_outer_eta_for_dpm else 0.0
    validate_eta(o_eta, "outer_eta")
    times = None if named is None or named.outer_times is None else list(named.outer_times)
    return NestedArgs(int(outer), inner, solver, o_eta, times)
