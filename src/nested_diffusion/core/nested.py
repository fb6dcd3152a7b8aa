"""Nested Diffusion (Elata et al., WACV 2024): an outer DDIM process whose denoiser is a complete inner run.

``NestedSolver`` is the paper's Algorithm 3 without y: for each outer time t_k, run the inner solver from x_{t_k}
to a clean x̂0 (the "inner diffusion"), then take the outer DDIM step q(x_{t_{k+1}} | x̂0, x_{t_k}). It is itself a
Solver, so nesting three or more levels is just composition. ``NestedSampler`` adds the anytime stream.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .denoisers import Denoiser, NonFiniteOutputError
from .eta import EtaSpec, resolve_eta, validate_eta
from .events import INNER_RESULT, X0_PREVIEW, AnytimeUpdate, SolverEvent
from .expected_change import Calibration, SignalTracker, VarianceObserver, canonical, mean_var
from .grids import CLEAN, check_convention, check_step_counts, outer_grid
from .noise import NoiseSource, as_noise_source
from .registry import VP, get_solver
from .run import CORE_DEFAULTS, RunConfig, check_budget, resolve_run
from .schedules import Schedule
from .solvers import Solver
from .steps import ddim_sigma, ddim_step


class NestedSolver(Solver):
    """Outer DDIM(η_outer) over ``n`` outer steps; each outer denoising is a full run of ``inner``.

    ``inner_steps``: one int for every outer step, or a list with one entry per outer step.
    ``outer_times``: explicit outer times (strictly descending integers, the first = the run's start time),
    instead of the convention's evenly spaced points.
    Grids: outer points are round(linspace(t, 0, n+1))[:-1] ("clean") or round(linspace(t, 1, n+1))[:-1]
    ("authors": the authors' round(linspace(1, T−1, K+1)) descending, last entry dropped); in both the last
    inner run's output is the final sample.
    """

    name = "nested"

    def __init__(self, inner: Solver | str = "ddim", inner_steps: int | Sequence[int] = 10,
                 outer_eta: EtaSpec = 0.0, inner_eta: EtaSpec | None = None, convention: str | None = None,
                 outer_times: Sequence[int] | None = None):
        self.inner = self.resolve_inner(inner, inner_eta)
        self.outer_times = None if outer_times is None else [int(v) for v in outer_times]
        self.inner_steps = inner_steps
        check_step_counts(inner_steps, "inner_steps")
        self.outer_eta = validate_eta(outer_eta, "outer_eta")
        self.convention = None if convention is None else check_convention(convention)

    @staticmethod
    def resolve_inner(inner: Solver | str, inner_eta: EtaSpec | None) -> Solver:
        """The inner solver from a name (η default: the registry's inner one) or an instance."""
        return get_solver(inner, inner_eta, inner=True, arg="inner_solver", eta_name="inner_eta")

    def steps_per_outer(self, n: int) -> list[int]:
        if isinstance(self.inner_steps, (int, np.integer)):
            return [int(self.inner_steps)] * n
        steps = [int(s) for s in self.inner_steps]
        if len(steps) != n:
            raise ValueError(f"inner_steps: a list needs one entry per outer step ({n}), got {len(steps)}")
        return steps

    def nfe(self, n: int) -> int:
        return sum(self.inner.nfe(s) for s in self.steps_per_outer(n))

    def grid(self, t_start, n, convention, name="outer_steps"):
        times = outer_grid(t_start, n, self.convention or convention, name) if self.outer_times is None else \
            self._explicit_times(t_start, n)
        for k, (t, s) in enumerate(zip(times[:-1], self.steps_per_outer(n))):
            most = self.inner.max_steps(t, convention)
            if s > most:
                raise ValueError(f"inner_steps: {s} inner steps in outer step {k + 1} of {n} (its inner run starts "
                                 f"at t={t}) exceed the {most} distinct timesteps below t={t}: at most {most} inner "
                                 f"steps fit there")
        return times

    def _explicit_times(self, t_start: int, n: int) -> list[int]:
        ts = self.outer_times
        if len(ts) != n:
            raise ValueError(f"outer_times: {len(ts)} times for {n} outer steps; give one per outer step")
        if ts[0] != t_start or any(b >= a for a, b in zip(ts, ts[1:])) or not ts[-1] > 0:
            raise ValueError(f"outer_times: must be strictly descending from t_start={t_start} down to "
                             f"≥ 1, got {ts}")
        return ts + [CLEAN]

    def max_steps(self, t_start, convention):
        return t_start

    def run(self, denoiser: Denoiser, x: torch.Tensor, t_start: int, n: int, noise: NoiseSource,
            cond: Any = None, convention: str = "clean") -> Iterator[SolverEvent]:
        convention = self.convention or convention
        times, S = self.grid(t_start, n, convention), denoiser.schedule
        spent, best = 0, None
        for k, (steps, t, t_next) in enumerate(zip(self.steps_per_outer(n), times[:-1], times[1:])):
            x0_hat = None
            for ev in self.inner.run(denoiser, x, t, steps, noise, cond, convention):  # inner diffusion
                at = dict(nfe=spent + ev.nfe, step=k, t=t, sub=ev)
                if ev.final:
                    x0_hat = ev.x0
                    yield SolverEvent(x0=x0_hat, source=INNER_RESULT, final=k == n - 1, **at)
                elif k == 0:  # before the first inner run ends, its latest x̂0 is the anytime result
                    yield SolverEvent(x0=ev.x0, source=ev.source, changed=ev.changed, **at)
                else:  # afterwards the result only changes when an inner run ends
                    yield SolverEvent(x0=best, source=INNER_RESULT, changed=False, **at)
                spent_in_run = ev.nfe
            spent += spent_in_run
            best = x0_hat
            x = self.outer_step(S, x, x0_hat, k, t, t_next, n, noise)

    def outer_step(self, S: Any, x: torch.Tensor, x0_hat: torch.Tensor, k: int, t: Any, t_next: Any, n: int,
                   noise: NoiseSource) -> torch.Tensor:
        """The outer DDIM(η_outer) step q(x_{t'} | x̂0, x_t) of outer step k (of n)."""
        a, a_next = S.alpha_bar(t), S.alpha_bar(t_next)
        eta = resolve_eta(self.outer_eta, k, t, a, n, "outer_eta")
        z = noise.randn_like(x) if ddim_sigma(a, a_next, eta) > 0 else None
        return ddim_step(x, x0_hat, a, a_next, eta, z)


PREVIEW_MODES = ("first", "all", "none", "fill")
# "fill" (fill the silent middle of a long inner run): the updates of "first", and of every later inner run its x̂0
# once the run has made FILL_FROM of its calls. Measured (docs/RESULTS.md, "The anytime frontier"): from half a run
# on its x̂0 predicts the final better than the last finished result does (pixel RMSE to the final and same class),
# but it is blurrier, so its FD is worse until ≈ 85% of the run — a trade, hence opt-in (``default_previews``).
FILL_FROM = 0.5


def preview_shown(previews: str, run: int, call: int, run_nfe: int) -> bool:
    """Whether an x̂0 preview of inner run ``run`` (0-based) after ``call`` of its ``run_nfe`` model calls is an
    update in preview mode ``previews`` (a run's end always is). The one rule of every stream: the samplers',
    the stock-pipeline wrapper's and the calibration runs'."""
    if previews == "none":
        return False
    if run == 0 or previews == "all":
        return True
    return previews == "fill" and call >= math.ceil(FILL_FROM * run_nfe)


def default_previews(run_nfe: Sequence[int]) -> str:
    """The preview mode of a run whose caller names none — the one place this is decided. "first" for every
    schedule: "fill" trades the anytime FD (AUC) for consistency with the final and did not win both on held-out
    seeds (docs/RESULTS.md, "The anytime frontier"); callers who want the closer preview pass "fill"."""
    return "first"


def _check_stream_args(shape, previews) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape: expected (batch, channels, ...) with positive sizes, got {shape}")
    if previews not in PREVIEW_MODES:
        raise ValueError(f"previews: {previews!r} is not valid; use one of {PREVIEW_MODES}")
    return shape


def stop_check(stop) -> Callable[[], bool]:
    """``stop``: None, a callable returning a truth value, or an object with ``is_set()`` (threading.Event)."""
    if stop is None:
        return lambda: False
    if hasattr(stop, "is_set"):
        return stop.is_set
    if callable(stop):
        return lambda: bool(stop())
    raise TypeError(f"stop: expected None, a callable or a threading.Event, got {type(stop).__name__}")


def named_schedule_error(error: ValueError, run: RunConfig) -> ValueError:
    """A step count that does not fit, for a run whose steps a named schedule chose from its budget: the caller
    gave ``nfe`` (not ``inner_steps``), so the error names ``nfe``."""
    if run.schedule in ("uniform", "custom") or not str(error).startswith("inner_steps:"):
        return error
    return ValueError(f"nfe: schedule {run.schedule} at {run.inner_total} NFE splits into "
                      f"{'+'.join(map(str, run.inner_steps))} inner steps, and{str(error).partition(':')[2]}; give "
                      f"a smaller NFE budget")


class NestedSampler:
    """Anytime sampling: ``stream`` yields an AnytimeUpdate whenever the result changes.

    ``outer_steps=1`` is vanilla sampling with the inner solver (its x̂0 previews stream through the same
    interface), which is the baseline every comparison uses.
    """

    kind = VP

    def __init__(self, denoiser: Denoiser, outer_steps: int | None = None,
                 inner_steps: int | Sequence[int] | None = None, inner_solver: Solver | str | None = None,
                 inner_eta: EtaSpec | None = None, outer_eta: EtaSpec | None = None, grid: str | None = None,
                 t_start: int | None = None, outer_times: Sequence[int] | None = None,
                 calibration: Calibration | None = None, *, run: RunConfig | None = None, **options):
        """Either the run's options (resolved by ``core.run.resolve_run`` with the core defaults: DDIM inner
        with η 0.85, deterministic DDIM outer, the "clean" grid; ``options``: ``schedule``, ``nfe``, ``first``,
        ``max_nfe``, ``deadline``, the authors' names …) or a resolved ``run``."""
        self._check_denoiser(denoiser)
        given = dict(outer_steps=outer_steps, inner_steps=inner_steps, inner_solver=inner_solver,
                     inner_eta=inner_eta, outer_eta=outer_eta, grid=grid, t_start=t_start, outer_times=outer_times,
                     calibration=calibration, **options)
        given = {k: v for k, v in given.items() if v is not None}
        if run is None:
            run = resolve_run(defaults=CORE_DEFAULTS[self.kind], num_train_timesteps=self._num_train_timesteps(
                denoiser), **given)
        elif given:
            raise ValueError(f"run: pass a resolved RunConfig or the run's options ({', '.join(given)}), not both")
        elif not isinstance(run, RunConfig) or run.kind != self.kind:
            raise TypeError(f"run: expected a {self.kind} RunConfig (core.run.resolve_run), got {run!r}")
        self.config, self.denoiser, self.grid_convention = run, denoiser, run.grid
        self.t_start, self.outer_steps = run.t_start, run.outer_steps
        self.solver = self._solver(run)
        try:
            self.times = self.solver.grid(self.t_start, self.outer_steps, run.grid)  # validates every step count
        except ValueError as e:
            raise named_schedule_error(e, run) from None
        self.inner_steps = self.solver.steps_per_outer(self.outer_steps)
        self.total_nfe = self.solver.nfe(self.outer_steps)
        self.calibration = run.calibration if hasattr(run.calibration, "check") else None
        if self.calibration is not None:  # the default of stream(calibration=): expected change on every update
            self.calibration.check(self.calibration_settings())

    @staticmethod
    def _check_denoiser(denoiser) -> None:
        if not hasattr(denoiser, "schedule"):
            raise TypeError("denoiser: must have a .schedule (a NoiseSchedule), e.g. a ModelDenoiser")

    @staticmethod
    def _num_train_timesteps(denoiser) -> int:
        return getattr(denoiser.schedule, "num_train_timesteps", 1000)

    def _solver(self, run: RunConfig) -> "NestedSolver":
        return NestedSolver(run.build_inner(), list(run.inner_steps), run.outer_eta, None, run.grid,
                            None if run.outer_times is None else list(run.outer_times))

    @classmethod
    def from_run(cls, denoiser: Denoiser, run: RunConfig) -> "NestedSampler":
        return cls(denoiser, run=run)

    @classmethod
    def from_schedule(cls, denoiser: Denoiser, schedule: Schedule | str, budget: int | None = None,
                      inner_solver: Solver | str | None = None, inner_eta: EtaSpec | None = None,
                      outer_eta: EtaSpec | None = None, grid: str | None = None, t_start: int | None = None,
                      calibration: Calibration | None = None, **options) -> "NestedSampler":
        """A sampler with a named schedule (``core.schedules``: "progressive", "uniform") for ``budget`` inner
        steps, or with a ``Schedule``; ``options`` go to the schedule's builder (e.g. ``first=10``)."""
        if isinstance(schedule, str) and budget is None:
            raise ValueError(f"budget: schedule {schedule!r} needs a budget (inner steps in total)")
        cls._check_denoiser(denoiser)
        run = resolve_run(defaults=CORE_DEFAULTS[cls.kind], names={"nfe": "budget", "schedule_options": "options"},
                          num_train_timesteps=cls._num_train_timesteps(denoiser), inner_solver=inner_solver,
                          inner_eta=inner_eta, outer_eta=outer_eta, grid=grid, t_start=t_start,
                          calibration=calibration, schedule=schedule, nfe=budget, schedule_options=options or None)
        return cls(denoiser, run=run)

    @property
    def run_nfe(self) -> list[int]:
        """Model calls of each inner run."""
        return [self.solver.inner.nfe(s) for s in self.inner_steps]

    @property
    def default_previews(self) -> str:
        return default_previews(self.run_nfe)

    def stream(self, seeds: NoiseSource | Sequence[int] | int, shape: Sequence[int], cond: Any = None,
               max_nfe: int | None = None, deadline: float | None = None, previews: str | None = None,
               x_T: torch.Tensor | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, stop: "Callable[[], bool] | Any | None" = None,
               grad: bool = False, wrap_denoiser: Callable[[Denoiser], Denoiser] | None = None,
               calibration: Calibration | None = None) -> Iterator[AnytimeUpdate]:
        """Yield anytime updates for a batch. ``seeds``: one per sample (or a base seed, then
        shape[0] samples); ``shape``: (B, C, H, W). ``max_nfe``: stop at the best result within this many NFEs;
        ``deadline``: seconds of wall time from the start. Break out of the loop to stop at any time; ``stop``
        (a callable returning True, or a ``threading.Event``) is checked after every denoiser call, so another
        thread can end the stream within one NFE (the last update yielded is the result). The model runs
        without autograd unless ``grad=True``. ``wrap_denoiser(denoiser) -> denoiser`` wraps the denoiser for
        this run only (timers, call counters); the sampler itself is not changed. ``calibration`` (for this
        configuration, else ValueError) attaches an ``ExpectedChange`` to every update, from signals the run
        already has (no extra NFE). ``previews``: which x̂0 predictions are updates besides the finished inner
        runs — "first" (the first run's), "fill" ("first" plus each later run's from FILL_FROM of its calls),
        "all", "none"; None: ``default_previews`` ("first")."""
        previews = self.default_previews if previews is None else previews
        shape = _check_stream_args(shape, previews)
        max_nfe, deadline = check_budget(self.config.max_nfe if max_nfe is None else max_nfe,
                                         self.config.deadline if deadline is None else deadline)
        own = calibration is None   # the run's own calibration was checked once, when the sampler was built
        calibration = self.calibration if own else calibration
        if calibration is not None and (not own or previews != self.default_previews):
            calibration.check(self.calibration_settings(previews))
        tracker = None if calibration is None else calibration.tracker()
        should_stop = stop_check(stop)
        noise = as_noise_source(seeds, shape[0], device, dtype)
        if noise.batch_size != shape[0]:
            raise ValueError(f"seeds: {noise.batch_size} seeds for a batch of {shape[0]}")
        x = noise.randn(shape[1:]) if x_T is None else x_T.to(device=device, dtype=dtype)
        if tuple(x.shape) != shape:
            raise ValueError(f"x_T: expected shape {shape}, got {tuple(x.shape)}")
        budget = self.total_nfe if max_nfe is None else min(int(max_nfe), self.total_nfe)
        run_nfe = self.run_nfe
        run_end = np.cumsum(run_nfe).tolist()
        start = time.perf_counter()
        ev = None
        denoiser = self.denoiser if wrap_denoiser is None else wrap_denoiser(self.denoiser)
        den = denoiser if tracker is None else VarianceObserver(denoiser)
        events = self.solver.run(den, x, self.t_start, self.outer_steps, noise, cond,
                                 self.grid_convention, grad=grad)
        try:
            for ev in events:
                elapsed = time.perf_counter() - start
                if deadline is not None and elapsed > deadline:
                    return
                if tracker is not None:
                    track(tracker, ev, den.last_var, shape[0])
                if self._shown(ev, previews, run_nfe):
                    u = self._update(ev, elapsed)
                    if tracker is not None:
                        u.expected_change = calibration.predict(u.nfe, tracker.update(u.x0))
                    yield u
                if ev.nfe >= budget or should_stop():
                    return
                # after the first inner run, never start a run that cannot finish within the budget
                k = ev.step
                if ev.sub.final and ev.nfe >= run_end[0] and k + 1 < len(run_end) and run_end[k + 1] > budget:
                    return
        except NonFiniteOutputError as e:
            k, nfe = (0, 0) if ev is None else (ev.step, ev.nfe)
            raise NonFiniteOutputError(e.t, f"model output (outer step {k + 1}/{self.outer_steps}, "
                                            f"after {nfe} NFE)") from e
        finally:
            events.close()

    def calibration_settings(self, previews: str | None = None) -> dict:
        """The sampler settings a calibration is made for (the denoiser's identity is the caller's part);
        ``previews`` None: the run's default mode."""
        return calibration_settings(self.config, getattr(self.denoiser.schedule, "num_train_timesteps", None),
                                    previews)

    @staticmethod
    def _shown(ev: SolverEvent, previews: str, run_nfe: Sequence[int]) -> bool:
        if ev.source == X0_PREVIEW and ev.step == 0:
            return previews != "none" and ev.changed
        if ev.changed:               # a finished inner run
            return True
        return ev.sub is not None and preview_shown(previews, ev.step, ev.sub.nfe, run_nfe[ev.step])

    def _update(self, ev: SolverEvent, elapsed: float) -> AnytimeUpdate:
        k = ev.step
        x0 = ev.sub.x0 if (k > 0 and not ev.sub.final) else ev.x0
        return AnytimeUpdate(x0=x0, nfe=ev.nfe, outer_step=k + 1, outer_steps=self.outer_steps,
                             inner_step=ev.sub.nfe, inner_steps=self.inner_steps[k], final=ev.final,
                             source=INNER_RESULT if ev.sub.final else X0_PREVIEW, t=ev.t, elapsed=elapsed)

    def sample(self, seeds, shape, **kwargs) -> AnytimeUpdate:
        """Run the stream to its end (or budget/deadline) and return the last update."""
        last = None
        for last in self.stream(seeds, shape, **kwargs):
            pass
        if last is None:
            raise TimeoutError("deadline: passed before the first denoiser call finished; no result to return")
        return last


def calibration_settings(run: RunConfig, num_train_timesteps: int | None, previews: str | None = None) -> dict:
    """The settings of ``run`` a calibration is made for (its hash input; the model's identity is the caller's
    part), known before any sampler is built; ``previews`` None: the run's default mode (``default_previews``)."""
    inner = run.build_inner()
    if previews is None:
        previews = default_previews([inner.nfe(s) for s in run.inner_steps])
    settings = dict(outer_steps=run.outer_steps, inner_steps=list(run.inner_steps), inner_solver=inner.name,
                    inner_eta=getattr(inner, "eta", None), outer_eta=run.outer_eta, grid=run.grid,
                    t_start=run.t_start, previews=previews, num_train_timesteps=num_train_timesteps)
    if run.outer_times is not None:  # a custom outer grid (the default grid follows from the above)
        settings["outer_times"] = list(run.outer_times)
    return canonical(settings)


def track(tracker: SignalTracker, ev: SolverEvent, var_values: torch.Tensor | None, batch: int) -> None:
    """Feed one event of a nested run to a SignalTracker (in the order its docstring asks)."""
    tracker.call(mean_var(var_values, batch))
    if ev.sub.nfe == 1:
        tracker.run_started(ev.sub.x0)
    if ev.sub.final:
        tracker.run_finished(ev.x0)


def vanilla_sampler(denoiser: Denoiser, steps: int, solver: Solver | str | None = None, eta: EtaSpec | None = None,
                    grid: str | None = None) -> NestedSampler:
    """Plain sampling as the one-outer-step special case (the baseline of every comparison)."""
    return NestedSampler(denoiser, 1, steps, solver, eta, None, grid)
