"""Nested Diffusion for an unmodified diffusers pipeline: ``pipe.scheduler = NestedScheduler(pipe.scheduler, ...)``.

A stock denoising loop asks its scheduler *where* to call the model next (``scheduler.timesteps``) and *how* to
move the latents (``scheduler.step``). ``NestedScheduler`` answers with the K inner runs of a nested run laid
back to back: its ``timesteps`` are run 0's, then run 1's, … (K·N entries, ``order`` 1). Inside a run every step
is the wrapped scheduler's own ``step``; the wrapped scheduler is re-set (its own ``set_timesteps``) at the start
of every run, so its shift / ``mu`` / ``shift_terminal`` apply and multistep histories start afresh. At the last
step of run k the wrapped scheduler returns x̂0 (its grid ends at σ = 0): that is recorded as the anytime result
(``result``), and the outer step from (x_{t_k}, x̂0) to the next run's first noise level is returned instead, so
the pipeline's next model call is at run k+1's first timestep. After the last run, the latents are x̂0.

Outer step (``outer_eta``, as the core): rectified flow x' = (1 − σ')x̂0 + σ'ε̂ (core ``flow_ddim_step``); VP
models in Euler-type coordinates (x = x̂0 + σε, SDXL's ``EulerDiscreteScheduler``) the DDIM step on the VP
state x/√(1 + σ²) (core ``ddim_step``), rescaled. σ of both ends is read from the wrapped scheduler's own runs.

The run's options are resolved by ``core.run.resolve_run`` (schedule — explicit steps, "uniform" or
"progressive" with ``nfe`` —, outer η, grid, t_start). Inner steps default to the pipeline's own
``num_inference_steps``. With one outer step of the pipeline's own step count, run 0 is set with the pipeline's
own arguments: the stock run, bit for bit.

What cannot be made right is refused before any model call (``NestedSchedulerError``, a ValueError naming the
argument, the value and what is valid): a non-zero begin index (image-to-image / inpainting ``strength``),
``scale_noise`` / ``add_noise`` with K > 1, schedulers without custom ``sigmas`` (flow) or ``timesteps`` (VP) or
whose runs do not end at σ = 0, multi-evaluation schedulers (``order`` > 1) with K > 1, the caller's own custom
``sigmas`` / ``timesteps`` with K > 1, a pipeline that branches on ``isinstance(self.scheduler, …)`` where the
wrapped scheduler would take the branch, and pipeline arguments that index the step list by position
(``POSITIONAL_ARGUMENTS``). A step at a timestep other than the one the wrapper presented there is refused too.
"""
from __future__ import annotations

import functools
import inspect
import math
import re
import sys
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..core.eta import resolve_eta
from ..core.flow_schedule import FLOW_CONVENTIONS, FlowSchedule, flow_grid
from ..core.flow_solvers import flow_eta
from ..core.flow_steps import FRESH_NOISE, flow_ddim_step, flow_noise_scale, vp_alpha_bar
from ..core.grids import outer_grid, step_grid
from ..core.noise import NoiseSource, as_noise_source
from ..core.registry import FLOW, VP
from ..core.run import RunConfig, RunDefaults, resolve_run
from ..core.solvers import Solver
from ..core.steps import ddim_sigma, ddim_step
from .noise import make_noise

# Defaults of a generic run when the caller names no family (a family's own live in ``pipelines.any_pipeline``).
GENERIC_DEFAULTS = {FLOW: RunDefaults(kind=FLOW, outer_steps=4, inner_steps=7, nfe=28, inner_solver="euler",
                                      outer_eta=0.0, grid="clean"),
                    VP: RunDefaults(kind=VP, outer_steps=4, inner_steps=10, nfe=40, inner_solver="ddim",
                                    outer_eta=0.0, grid="clean")}

# Pipeline arguments that act on positions in the step list (meaningless over K back-to-back runs):
# name → (is it in use?, why it is refused).
POSITIONAL_ARGUMENTS = {
    "strength": (lambda v: v is not None and float(v) < 1.0,
                 "image-to-image / inpainting starts part-way down the step list"),
    "denoising_start": (lambda v: v is not None, "it cuts the step list at a fraction of its length"),
    "denoising_end": (lambda v: v is not None, "it cuts the step list at a fraction of its length"),
    "skip_guidance_layers": (lambda v: v is not None and len(v) > 0,
                             "skip-layer guidance is switched on and off at fractions of the step count"),
}
RESULT_STEP = "run_end"


class NestedSchedulerError(ValueError):
    """A use the nested scheduler cannot make right (raised before any model call of the run)."""


class WrappedSchedulerStep(Solver):
    """The inner solver of a generic nested run: the wrapped diffusers scheduler's own ``step`` (its name, for
    records). It is driven by the pipeline's loop, never by the core's."""

    def __init__(self, scheduler: Any, eta: Any = None):
        self.name = type(scheduler).__name__
        self.eta = eta

    def run(self, *args, **kwargs):
        raise NotImplementedError("the wrapped scheduler's steps are driven by the pipeline's own loop")


def scheduler_kind(scheduler: Any) -> str | None:
    """FLOW (rectified-flow schedulers), VP (schedulers with ᾱ_t) or None."""
    cfg = getattr(scheduler, "config", {}) or {}
    if type(scheduler).__name__.startswith("FlowMatch") or cfg.get("use_flow_sigmas") or \
            cfg.get("prediction_type") == "flow_prediction":
        return FLOW
    if hasattr(scheduler, "alphas_cumprod"):
        return VP
    return None


@functools.lru_cache(maxsize=256)
def _parameters(fn: Callable) -> frozenset:
    """The parameter names of a function (cached: a scheduler class's methods do not change during a run)."""
    return frozenset(inspect.signature(fn).parameters)


def _method(obj: Any, name: str) -> Callable:
    """The function behind ``obj.name`` (the class's own function for a bound method: one cache entry per class)."""
    bound = getattr(obj, name)
    return getattr(bound, "__func__", bound)


def _accepts(scheduler: Any, name: str) -> bool:
    return name in _parameters(_method(scheduler, "set_timesteps"))


# Schedulers whose ``step(..., return_dict=False)`` is ``(prev_sample,)`` and whose output class holds nothing
# else (no ``pred_original_sample``): the wrapper takes the tuple and builds the output only when asked for it.
_TUPLE_STEP_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


def _tuple_step_output(scheduler: Any) -> type | None:
    """The output class of ``scheduler.step`` when its tuple form carries all of it, else None."""
    cls = type(scheduler)
    if cls.__name__ not in _TUPLE_STEP_SCHEDULERS or not cls.__module__.startswith("diffusers."):
        return None
    out = getattr(sys.modules.get(cls.__module__), cls.__name__ + "Output", None)
    fields = getattr(out, "__dataclass_fields__", None)
    return out if fields is not None and list(fields) == ["prev_sample"] else None


class StepInfo:
    """Where the last ``step`` was: global index i (0-based), run k, index j in the run, and its x̂0 (a raw
    prediction, or the run's output at a run end). ``t``: the run's start time (u for flow, an integer timestep
    for VP). A raw prediction is computed when ``x0`` is first read (a final-only run never reads it), from the
    step's own tensors."""

    __slots__ = ("i", "run", "j", "run_steps", "run_end", "final", "t", "_x0", "_x0_of")

    def __init__(self, i: int, run: int, j: int, run_steps: int, run_end: bool, final: bool,
                 x0: torch.Tensor | None = None, t: float | None = None, *, x0_of: Callable | None = None):
        self.i, self.run, self.j, self.run_steps, self.run_end, self.final, self.t = \
            i, run, j, run_steps, run_end, final, t
        self._x0, self._x0_of = x0, x0_of

    @property
    def x0(self) -> torch.Tensor:
        if self._x0_of is not None:
            self._x0, self._x0_of = self._x0_of(), None
        return self._x0

    def __repr__(self) -> str:
        return (f"StepInfo(i={self.i}, run={self.run}, j={self.j}, run_steps={self.run_steps}, "
                f"run_end={self.run_end}, final={self.final}, t={self.t})")


class NestedScheduler:
    """Wrap a diffusers scheduler so that a stock pipeline samples with Nested Diffusion (see the module doc).

    ``outer_steps``, ``inner_steps`` (an int or one per outer step; default: the pipeline's
    ``num_inference_steps``), ``schedule`` / ``nfe`` / ``first`` / ``outer_times``, ``outer_eta`` (flow: a number,
    a list, a callable or "fresh"; VP: the DDIM η rules), ``inner_eta`` (only where the wrapped scheduler has a
    stochastic mode: "fresh" for ``FlowMatchEulerDiscreteScheduler``), ``grid`` (flow: "clean" or "sigma_min";
    VP: "clean" or "authors"; default: the convention of the pipeline's own call), ``t_start``: as
    ``core.run.resolve_run``. ``seed``: the outer process's own per-sample noise (a base seed, one seed per
    sample, or a NoiseSource / torch generator(s)); None draws seeds from torch's global RNG when a stochastic
    outer η needs noise. ``defaults``: a family's ``RunDefaults`` (else ``GENERIC_DEFAULTS``); ``run``: a
    resolved ``RunConfig`` instead of the options."""

    order = 1

    def __init__(self, scheduler: Any, outer_steps: int | None = None, inner_steps: Any = None, *,
                 schedule: Any = None, nfe: int | None = None, first: int | None = None, outer_times: Any = None,
                 outer_eta: Any = None, inner_eta: Any = None, grid: str | None = None, t_start: Any = None,
                 seed: Any = None, defaults: RunDefaults | None = None, run: RunConfig | None = None):
        if isinstance(scheduler, NestedScheduler):
            raise NestedSchedulerError("scheduler: already a NestedScheduler; wrap the stock scheduler "
                                       "(scheduler.wrapped)")
        if not (hasattr(scheduler, "set_timesteps") and hasattr(scheduler, "step")):
            raise TypeError(f"scheduler: expected a diffusers scheduler, got {type(scheduler).__name__}")
        self.__dict__["wrapped"] = scheduler
        kind = scheduler_kind(scheduler)
        self.kind = kind
        given = dict(outer_steps=outer_steps, inner_steps=inner_steps, schedule=schedule, nfe=nfe, first=first,
                     outer_times=outer_times, outer_eta=outer_eta, grid=grid, t_start=t_start)
        self._given = {k: v for k, v in given.items() if v is not None}
        if run is not None and self._given:
            raise ValueError(f"run: pass a resolved RunConfig or the run's options ({', '.join(self._given)}), "
                             f"not both")
        if kind is None:
            if run is not None or any(k != "outer_steps" for k in self._given) or outer_steps not in (None, 1):
                raise NestedSchedulerError(
                    f"scheduler: {type(scheduler).__name__} is neither a flow-matching nor a VP (ᾱ_t) scheduler; "
                    f"only outer_steps=1 (the stock run) is possible with it")
            self.defaults = None
        else:
            if defaults is not None and defaults.kind != kind:
                raise ValueError(f"defaults: {defaults.kind} defaults for a {kind} scheduler "
                                 f"({type(scheduler).__name__})")
            self.defaults = defaults or GENERIC_DEFAULTS[kind]
        self.inner_eta = self._check_inner_eta(inner_eta)
        self.seed = seed
        self._noise: NoiseSource | None = None
        self._fixed_run = run
        if run is not None:
            if run.kind != kind:
                raise ValueError(f"run: a {run.kind} run for a {kind} scheduler ({type(scheduler).__name__})")
            self.run = run
        else:
            self.run = self._resolve(None, None) if kind is not None else None   # validates now
        if self.run is not None and self.run.outer_steps > 1:
            self._check_nestable()
        self.inner = self._inner_scheduler()
        # per-call constants of the step, found once here rather than at every step
        self._fresh_generators = self.inner_eta == FRESH_NOISE and "generator" in _parameters(
            _method(self.inner, "step"))
        self._tuple_step = _tuple_step_output(self.inner)
        self.timesteps = None
        self.result: torch.Tensor | None = None
        self.last: StepInfo | None = None
        self._i = 0

    # ------------------------------------------------------------------------------------------ set-up
    def _check_inner_eta(self, eta):
        if eta is None:
            return None
        s = self.wrapped
        if type(s).__name__ == "FlowMatchEulerDiscreteScheduler" and (eta == FRESH_NOISE or eta in (0, 0.0)):
            return eta
        valid = "None (the scheduler's own step)" + (
            ", 0 or 'fresh' (its stochastic_sampling)" if type(s).__name__ == "FlowMatchEulerDiscreteScheduler"
            else "")
        raise NestedSchedulerError(f"inner_eta: {eta!r} is not available with {type(s).__name__} (the inner steps "
                                   f"are its own step); valid: {valid}")

    def _inner_scheduler(self):
        s = self.wrapped
        if self.inner_eta is None or bool(s.config.get("stochastic_sampling")) == (self.inner_eta == FRESH_NOISE):
            return s
        return type(s).from_config(s.config, stochastic_sampling=self.inner_eta == FRESH_NOISE)

    def _check_nestable(self) -> None:
        s, name = self.wrapped, type(self.wrapped).__name__
        need = "sigmas" if self.kind == FLOW else "timesteps"
        if not _accepts(s, need):
            raise NestedSchedulerError(
                f"scheduler: {name}.set_timesteps takes no custom {need}, so inner runs cannot be placed below an "
                f"outer time; with outer_steps > 1 use a scheduler that does (e.g. "
                f"{'FlowMatchEulerDiscreteScheduler' if self.kind == FLOW else 'EulerDiscreteScheduler'}), or "
                f"outer_steps=1")
        if getattr(s, "order", 1) != 1:
            raise NestedSchedulerError(f"scheduler: {name} has order {s.order} (several model calls per step); "
                                       f"with outer_steps > 1 use a first-order scheduler")

    def _resolve(self, pipeline_steps: int | None, pipeline_grid: str | None) -> RunConfig:
        if self._fixed_run is not None:
            return self._fixed_run
        o = dict(self._given)
        uses_steps = not any(k in o for k in ("inner_steps", "nfe")) and not (
            o.get("schedule") not in (None, "uniform"))
        if uses_steps:
            o["inner_steps"] = pipeline_steps if pipeline_steps is not None else self.defaults.inner_steps
            if "outer_steps" not in o and "outer_times" not in o:
                o["outer_steps"] = self.defaults.outer_steps
        if "grid" not in o and pipeline_grid is not None:
            o["grid"] = pipeline_grid
        return resolve_run(defaults=self.defaults, inner_solver=WrappedSchedulerStep(self.wrapped, self.inner_eta),
                           **o)

    # ------------------------------------------------------------------------------------------ scheduler API
    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        if name.startswith("__") or "wrapped" not in d:
            raise AttributeError(name)
        return getattr(d.get("inner") or d["wrapped"], name)

    @property
    def step_index(self) -> int:
        return self._i

    @property
    def begin_index(self) -> int:
        return 0

    def set_begin_index(self, begin_index: int = 0) -> None:
        if begin_index != 0:
            raise NestedSchedulerError(
                f"begin_index: {begin_index}; the pipeline starts part-way down the step list (image-to-image or "
                f"inpainting strength < 1), which has no meaning across nested runs; use strength=1.0 or the stock "
                f"scheduler (scheduler.wrapped)")

    def scale_noise(self, *args, **kwargs):
        return self._noising("scale_noise", args, kwargs)

    def add_noise(self, *args, **kwargs):
        return self._noising("add_noise", args, kwargs)

    def _noising(self, name, args, kwargs):
        if self.run is not None and self.run.outer_steps > 1:
            raise NestedSchedulerError(f"scheduler.{name}: image-to-image / inpainting noising is positional in the "
                                       f"step list; not available with outer_steps > 1 (use outer_steps=1 or the "
                                       f"stock scheduler)")
        return getattr(self.inner, name)(*args, **kwargs)

    def save_pretrained(self, *args, **kwargs):
        raise NestedSchedulerError("save_pretrained: a NestedScheduler is a sampling-time wrapper; set "
                                   "pipe.scheduler = pipe.scheduler.wrapped before saving the pipeline")

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, *,
                      sigmas: Sequence[float] | None = None, timesteps: Sequence[float] | None = None, **kwargs):
        """The pipeline's call: its step count, its own grid arguments and extras (``mu``) → the K runs."""
        pipe_args = dict(kwargs)
        if sigmas is not None:
            pipe_args["sigmas"] = sigmas
        if timesteps is not None:
            pipe_args["timesteps"] = timesteps
        n_pipe = num_inference_steps if num_inference_steps is not None else \
            len(sigmas if sigmas is not None else timesteps)
        check_calling_pipeline(self.wrapped)
        s = self.inner
        if self.kind is None:          # outer_steps=1 on any scheduler: the stock run
            self._set_runs([dict(num_inference_steps=num_inference_steps, **pipe_args)], device, [None])
            return
        convention = self._pipeline_convention(n_pipe, sigmas, timesteps)
        self.run = run = self._resolve(n_pipe, convention if convention in self._conventions() else None)
        K, steps = run.outer_steps, list(run.inner_steps)
        stock = steps[0] == n_pipe and run.t_start == self._t_start_default() and (
            (K == 1 and "grid" not in self._given) or (self.kind == FLOW and run.grid == convention))
        if K > 1:
            self._check_nestable()
            if convention == "custom":
                given = "sigmas" if sigmas is not None else "timesteps"
                shown = [round(float(v), 4) for v in pipe_args[given]]
                raise NestedSchedulerError(
                    f"{given}: the pipeline passed its own {given} ({shown}); "
                    f"nested runs build every grid from grid={run.grid!r}, so custom {given} would be ignored; "
                    f"leave {given} out, or use outer_steps=1")
        starts = self._outer_times(run, pipe_args)
        runs = []
        schedule = None                  # the wrapped scheduler's time map, built once for every run's grid
        for k, (t, n) in enumerate(zip(starts, steps)):
            if k == 0 and stock:
                runs.append(dict(num_inference_steps=num_inference_steps, **pipe_args))
            else:
                if self.kind == FLOW and not _accepts(s, "sigmas") or self.kind == VP and not _accepts(s, "timesteps"):
                    self._check_nestable()   # raises: a generated grid needs custom sigmas/timesteps
                extra = {k2: v for k2, v in pipe_args.items() if k2 not in ("sigmas", "timesteps")}
                if self.kind == FLOW:
                    if schedule is None:
                        schedule = self._flow_schedule(pipe_args)
                    runs.append(dict(sigmas=flow_grid(schedule, t, n, run.grid)[:-1], **extra))
                else:
                    runs.append(dict(timesteps=step_grid(t, n, run.grid)[:-1], **extra))
        self._set_runs(runs, device, starts)

    def _conventions(self) -> tuple:
        return FLOW_CONVENTIONS if self.kind == FLOW else ("clean", "authors")

    def _t_start_default(self):
        return 1.0 if self.kind == FLOW else int(self.wrapped.config.get("num_train_timesteps", 1000)) - 1

    def _pipeline_convention(self, n: int, sigmas, timesteps) -> str:
        """The grid rule of the pipeline's own call: "clean" (FLUX-style sigmas linspace(1, 1/n, n)),
        "sigma_min" (a flow scheduler's default grid) / "stock" (a VP scheduler's own spacing), or "custom"."""
        if timesteps is not None:
            return "custom"
        if sigmas is None:
            return "sigma_min" if self.kind == FLOW else "stock"
        ref = np.linspace(1.0, 1.0 / n, n)
        got = np.asarray([float(v) for v in sigmas], dtype=float)
        # the pipelines build this grid in float64 (numpy) or float32 (torch): equal within float32 rounding
        # (np.allclose(got, ref, rtol=0, atol=1e-6) without its generic set-up)
        return "clean" if got.shape == ref.shape and bool(np.all(np.abs(got - ref) <= 1e-6)) else "custom"

    def _flow_schedule(self, pipe_args: dict) -> FlowSchedule:
        """The wrapped flow scheduler's time map (for the "sigma_min" grid's smallest time)."""
        cfg = self.wrapped.config
        T = int(cfg.get("num_train_timesteps", 1000))
        if cfg.get("use_dynamic_shifting"):
            return FlowSchedule(mu=float(pipe_args.get("mu") or 0.0), num_train_timesteps=T,
                                time_shift_type=cfg.get("time_shift_type", "exponential"))
        shift = float(cfg.get("shift", cfg.get("flow_shift", 1.0)))
        return FlowSchedule(shift=shift, num_train_timesteps=T)

    def _outer_times(self, run: RunConfig, pipe_args: dict) -> list:
        if run.outer_times is not None:
            return list(run.outer_times)
        if self.kind == FLOW:
            return flow_grid(self._flow_schedule(pipe_args), run.t_start, run.outer_steps, run.grid,
                             "outer_steps")[:-1]
        return outer_grid(run.t_start, run.outer_steps, run.grid)[:-1]

    def _set_runs(self, runs: list[dict], device: Any, starts: list) -> None:
        """Set every run once (its timesteps and σ), check it, then start run 0."""
        s, K = self.inner, len(runs)
        self._runs, self._starts, self._device = runs, starts, device
        ts, run_ts, first_sigma, positional_sigmas = [None] * K, [None] * K, [None] * K, [None] * K
        # run 0 is set last, so that it is the wrapped scheduler's state when the loop ends (as _start_run(0))
        for k in list(range(1, K)) + [0]:
            args = runs[k]
            s.set_timesteps(device=device, **args)
            t_k = s.timesteps.detach().clone()
            sig = getattr(s, "sigmas", None)
            if K > 1:
                n_k = int(self.run.inner_steps[k])
                if len(t_k) != n_k:
                    raise NestedSchedulerError(f"scheduler: {type(s).__name__} made {len(t_k)} steps for an inner run "
                                               f"of {n_k}; only first-order schedulers can be nested")
                if "timesteps" in args and [int(round(float(v))) for v in t_k.tolist()] != list(args["timesteps"]):
                    raise NestedSchedulerError(f"scheduler: {type(s).__name__} changed the inner grid "
                                               f"{args['timesteps']} into {t_k.tolist()}")
                if sig is None or float(sig[-1]) != 0.0:
                    raise NestedSchedulerError(
                        f"scheduler: {type(s).__name__}'s runs end at σ = "
                        f"{None if sig is None else float(sig[-1])}, not 0, so an inner run gives no clean x̂0; "
                        f"configure it to end at zero (e.g. final_sigmas_type='zero')")
            run_ts[k] = len(t_k)
            ts[k] = t_k
            first_sigma[k] = None if sig is None else float(sig[0])
            positional_sigmas[k] = None if sig is None else sig[:len(t_k)].detach().clone()
        self.timesteps = torch.cat(ts)
        self.num_inference_steps = len(self.timesteps)
        self._run_len = run_ts
        self._run_end = np.cumsum(run_ts).tolist()
        self._first_sigma = first_sigma + [0.0]
        self.sigmas = None if any(p is None for p in positional_sigmas) else \
            torch.cat(positional_sigmas + [positional_sigmas[0].new_zeros(1)])
        self._t_list = [float(v) for v in self.timesteps.tolist()]
        self._i, self.result, self.last = 0, None, None
        self._x_start = None
        if hasattr(s, "set_begin_index"):     # run 0 is set: the rest of _start_run(0)
            s.set_begin_index(0)
        self._k, self._j = 0, 0
        # x = x̂0 + σε (Euler-type: the first latents are scaled by init_noise_sigma ≠ 1) or the VP state
        self._ve = float(getattr(s, "init_noise_sigma", 1.0)) != 1.0

    def _start_run(self, k: int) -> None:
        s = self.inner
        s.set_timesteps(device=self._device, **self._runs[k])
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(0)
        self._k, self._j = k, 0

    @property
    def run_ends(self) -> list[int]:
        """NFE (steps) at which each inner run ends."""
        return list(self._run_end)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args, return_dict: bool = True,
             **kwargs):
        if self.timesteps is None:
            raise NestedSchedulerError("step: set_timesteps was not called first")
        i, k, j = self._i, self._k, self._j
        t_list = self._t_list
        if i >= len(t_list):
            raise NestedSchedulerError(f"step: called {i + 1} times for {len(t_list)} timesteps")
        if isinstance(timestep, torch.Tensor) and timestep.numel() == 1 or isinstance(timestep, (int, float)):
            if float(timestep) != t_list[i]:
                raise NestedSchedulerError(
                    f"timestep: step {i} was called at t={float(timestep)}, but the nested step list has "
                    f"t={t_list[i]} there; the pipeline reads the step list by position (e.g. a sliced or "
                    f"truncated schedule), which nested runs do not support")
        if j == 0:
            self._x_start = sample
        s = self.inner
        if self._fresh_generators and "generator" not in kwargs:
            kwargs["generator"] = self._generators(sample)
        if self._tuple_step is not None:
            # the wrapped step's tuple is (prev_sample,) and its output has no x̂0: skip building the output
            prev = s.step(model_output, timestep, sample, *args, return_dict=False, **kwargs)[0]
            out = None
        else:
            out = s.step(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            prev = out.prev_sample
        n_k = self._run_len[k]
        end = j == n_k - 1
        K = len(self._run_len)
        start = self._starts[k]
        t = start if start is not None else t_list[i]
        if end:
            self.last = StepInfo(i, k, j, n_k, True, k == K - 1, prev, t)
        else:
            pred = getattr(out, "pred_original_sample", None) if out is not None else None
            if pred is not None:
                self.last = StepInfo(i, k, j, n_k, False, False, pred, t)
            else:
                sigmas = getattr(s, "sigmas", None)
                self.last = StepInfo(i, k, j, n_k, False, False, None, t,
                                     x0_of=functools.partial(self._x0_prediction, model_output, sample, sigmas, j))
        self._i = i + 1
        if end:
            self.result = prev
            if k < K - 1:
                prev = self._outer_step(self._x_start, prev, k).to(prev.dtype)
                self._start_run(k + 1)
        else:
            self._j = j + 1
        if not return_dict:
            return (prev,)
        if out is None:
            return self._tuple_step(prev_sample=prev)
        out.prev_sample = prev
        return out

    # ------------------------------------------------------------------------------------------ maths
    def _x0_prediction(self, v: torch.Tensor, x: torch.Tensor, sigmas: Any, j: int) -> torch.Tensor:
        """The raw x̂0 of the model output v at sample x, step j of a run whose σ grid was ``sigmas`` (what a
        preview shows; the model output carried no ``pred_original_sample``)."""
        sig = sigmas[j] if sigmas is not None else None
        if sig is None:
            return x
        sigma = float(sig)
        if self.kind == FLOW:
            return x.float() - sigma * v.float()
        ptype = self.inner.config.get("prediction_type", "epsilon")
        ve = self._ve_coordinates()
        a = 1.0 / (1.0 + sigma ** 2)
        xv = x.float() / math.sqrt(1.0 + sigma ** 2) if ve else x.float()
        if ptype == "epsilon":
            return (xv - math.sqrt(1 - a) * v.float()) / math.sqrt(a)
        if ptype == "v_prediction":
            return math.sqrt(a) * xv - math.sqrt(1 - a) * v.float()
        return v.float()

    def _ve_coordinates(self) -> bool:
        """Euler-type VP schedulers keep x = x̂0 + σε (scaled by ``init_noise_sigma`` > 1 at the start)."""
        return self._ve

    def _generators(self, x: torch.Tensor):
        noise = self._noise_for(x)
        gens = getattr(noise, "_gens", None) or getattr(noise, "generator", None)
        return gens

    def _noise_for(self, x: torch.Tensor) -> NoiseSource:
        if self._noise is None or self._noise.batch_size != x.shape[0]:
            seed = self.seed
            if seed is None:
                seed = [int(v) for v in torch.randint(0, 2 ** 31 - 1, (x.shape[0],))]
            if isinstance(seed, torch.Generator) or (isinstance(seed, (list, tuple)) and seed and
                                                     isinstance(seed[0], torch.Generator)):
                self._noise = make_noise(seed, x.shape[0], x.device, torch.float32)
            else:
                self._noise = as_noise_source(seed, x.shape[0], "cpu", torch.float32)
            if self._noise.batch_size != x.shape[0]:
                raise ValueError(f"seed: {self._noise.batch_size} seeds for a batch of {x.shape[0]}")
        return self._noise

    def _outer_step(self, x: torch.Tensor, x0: torch.Tensor, k: int) -> torch.Tensor:
        """From x_{t_k} (σ_k, run k's first level) and run k's x̂0 to run k+1's first level σ_{k+1}."""
        run, K = self.run, len(self._run_len)
        s, s_next = self._first_sigma[k], self._first_sigma[k + 1]
        xf, x0f = x.float(), x0.float()
        if self.kind == FLOW:
            eta = flow_eta(run.outer_eta, k, self._starts[k], _AtSigma(s), K, "outer_eta")
            z = self._noise_for(x).randn_like(xf) if flow_noise_scale(s, s_next, eta) > 0 else None
            return flow_ddim_step(xf, x0f, s, s_next, eta, z)
        a, a_next = 1.0 / (1.0 + s ** 2), 1.0 / (1.0 + s_next ** 2)
        eta = resolve_eta(run.outer_eta, k, self._starts[k], a, K, "outer_eta")
        z = self._noise_for(x).randn_like(xf) if ddim_sigma(a, a_next, eta) > 0 else None
        if not self._ve_coordinates():
            return ddim_step(xf, x0f, a, a_next, eta, z)
        out = ddim_step(xf / math.sqrt(1.0 + s ** 2), x0f, a, a_next, eta, z)
        return out * math.sqrt(1.0 + s_next ** 2)


class _AtSigma:
    """The ᾱ an η rule sees at an outer point of noise level σ (the wrapped scheduler's own σ)."""

    def __init__(self, sigma: float):
        self.s = sigma

    def alpha_bar(self, u) -> float:
        return vp_alpha_bar(self.s)


# -------------------------------------------------------------------------------------------- pipeline checks
def calling_pipeline(max_depth: int = 8) -> tuple[Any, dict] | tuple[None, None]:
    """The diffusers pipeline whose ``__call__`` is on the stack (and its locals), if any."""
    frame = sys._getframe(2)
    for _ in range(max_depth):
        if frame is None:
            break
        obj = frame.f_locals.get("self")
        if obj is not None and any(c.__name__ == "DiffusionPipeline" for c in type(obj).__mro__):
            return obj, dict(frame.f_locals)
        frame = frame.f_back
    return None, None


def check_calling_pipeline(wrapped: Any) -> None:
    pipe, call_locals = calling_pipeline()
    if pipe is not None:
        check_pipeline(pipe, wrapped, call_locals)


_ISINSTANCE = re.compile(r"isinstance\(\s*self\.scheduler\s*,\s*\(?\s*([\w.\s,]+?)\s*\)?\s*\)")


@functools.lru_cache(maxsize=128)
def _scheduler_branches(cls: type) -> tuple:
    """The classes X of every ``isinstance(self.scheduler, X)`` in the modules of ``cls`` and its bases, in the
    order of the class's MRO and of the source (read once per pipeline class: reading and scanning the source
    took most of a call's set-up)."""
    targets = []
    for klass in cls.__mro__:
        if klass.__module__.startswith("diffusers.pipelines.pipeline_utils") or klass is object:
            continue
        module = sys.modules.get(klass.__module__)
        try:
            source = inspect.getsource(module) if module is not None else ""
        except (OSError, TypeError):
            source = ""
        for match in _ISINSTANCE.finditer(source):
            for name in (n.strip() for n in match.group(1).split(",")):
                target = getattr(module, name.split(".")[-1], None)
                if isinstance(target, type):
                    targets.append(target)
    return tuple(targets)


def check_pipeline(pipe: Any, wrapped: Any, call_args: dict | None = None) -> None:
    """Refuse what a nested run cannot make right for ``pipe`` with the stock scheduler ``wrapped``: a pipeline
    that branches on the scheduler's class where ``wrapped`` would take the branch, and positional arguments in
    use (``call_args``: the call's arguments)."""
    cls = type(pipe)
    for target in _scheduler_branches(cls):
        if isinstance(wrapped, target):
            raise NestedSchedulerError(
                f"scheduler: {cls.__name__} branches on isinstance(self.scheduler, {target.__name__}); with "
                f"the wrapped {type(wrapped).__name__} the stock pipeline takes that branch and a "
                f"NestedScheduler would not, changing the result; use another scheduler class or the "
                f"stock scheduler")
    for name, (in_use, why) in POSITIONAL_ARGUMENTS.items():
        if call_args and name in call_args:
            try:
                used = in_use(call_args[name])
            except (TypeError, ValueError):
                used = True
            if used:
                raise NestedSchedulerError(f"{name}: {call_args[name]!r} is not available with a NestedScheduler "
                                           f"({why}); leave it out, or use the stock scheduler")
