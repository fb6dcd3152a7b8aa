"""One run, resolved once: every option of a nested run in one frozen ``RunConfig``, made by ``resolve_run``.

Every surface — ``NestedSampler`` and ``FlowNestedSampler``, the diffusers pipelines, each CLI command, the web
page, the distributed sampler — translates its own option names into keyword arguments of ``resolve_run`` and
uses the value it returns; nothing downstream decides a default or validates a run option again. Model-dependent
facts that need the network (how many distinct timesteps fit below an outer time) are checked when the sampler is
built, still before any model call.

What the caller may give (canonical names; the authors' names are accepted as aliases, see ``ALIASES``):

* the schedule — explicit ``outer_steps`` × ``inner_steps`` (an int, or one per outer step), optionally
  ``outer_times``; or a ``schedule`` name of ``core.schedules`` ("uniform", "progressive") with its NFE budget
  ``nfe`` (and ``first`` / ``schedule_options``); or a ``Schedule``. Nothing given: the family's default;
* ``inner_solver`` (a registered name of the model's kind, or a Solver instance) and ``inner_eta`` (default:
  the registry's inner default, 0.85 for DDIM); ``outer_eta`` (default: the family's; None there means the one
  the inner solver implies, √(1−ᾱ_t) for DPM-Solver++); ``grid``; ``t_start``;
* ``guidance``, a budget ``max_nfe`` and a ``deadline`` in seconds, a ``calibration``;
* ``dtype``: the model's compute dtype ("float32", "bfloat16", "float16"; None or "auto": the family's, whose
  None means the model's own — as saved, float16 on CUDA for the pipelines). The family says which it offers.

``names`` maps canonical names to the caller's own (``{"outer_steps": "--outer"}``), so every error names the
option the user typed.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .eta import SQRT_ONE_MINUS_ALPHA_BAR, EtaSpec
from .flow_schedule import check_flow_convention
from .grids import check_convention, check_steps
from .registry import FLOW, VP, check_eta, check_kind, is_solver, solver_spec, spec_of
from .schedules import SCHEDULES, Schedule, StepCounts, make_schedule, schedule_names
from .solvers import Solver

CUSTOM = "custom"  # the schedule name of explicit outer times or uneven inner steps


@dataclass(frozen=True)
class RunDefaults:
    """A model family's defaults for every run option the caller leaves out (one per family, in its table)."""

    kind: str = VP
    schedule: str = "uniform"         # used when the caller gives neither a schedule nor step counts
    nfe: int = 100                    # the budget of a named schedule when none is given
    outer_steps: int = 5              # the uniform split's outer steps …
    inner_steps: int = 20             # … and inner steps per outer step
    inner_solver: str = "ddim"
    outer_eta: EtaSpec | None = 0.0   # None: the η the inner solver implies (registry ``outer_eta_default``)
    grid: str = "clean"
    guidance: float | None = None     # None: the model's own (a pipeline's ``guidance_scale`` default)
    dtype: str | None = None          # the compute dtype (DTYPES); None: the model's own

    def __post_init__(self):
        check_kind(self.kind)
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype: default {self.dtype!r} is not one of {DTYPES}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: default {self.schedule!r} is not one of {schedule_names()}")


DTYPES = ("float32", "bfloat16", "float16")
CORE_DEFAULTS = {VP: RunDefaults(), FLOW: RunDefaults(kind=FLOW, inner_solver="euler")}

ALIASES = {"num_inference_steps": "outer_steps", "num_inner_steps": "inner_steps", "inner_scheduler": "inner_solver",
           "eta": "outer_eta", "total_nfe": "nfe"}
OPTIONS = ("schedule", "nfe", "first", "schedule_options", "outer_steps", "inner_steps", "outer_times",
           "inner_solver", "inner_eta", "outer_eta", "grid", "t_start", "guidance", "max_nfe", "deadline",
           "calibration", "dtype")


@dataclass(frozen=True)
class RunConfig(StepCounts):
    """A resolved nested run. ``inner_solver`` is a registered name (canonical spelling) or the Solver instance
    the caller built; ``inner_eta`` is the η it runs with (None for solvers without η or for an instance)."""

    kind: str
    schedule: str
    inner_steps: tuple[int, ...]
    outer_times: tuple | None
    inner_solver: Any
    inner_eta: Any
    outer_eta: Any
    grid: str
    t_start: int | float
    guidance: float | None = None
    max_nfe: int | None = None
    deadline: float | None = None
    calibration: Any = field(default=None, compare=False)
    dtype: str | None = None

    @property
    def solver_name(self) -> str:
        return self.inner_solver if isinstance(self.inner_solver, str) else getattr(self.inner_solver, "name",
                                                                                   type(self.inner_solver).__name__)

    def build_inner(self) -> Solver:
        """A fresh inner solver (solvers may keep per-run state)."""
        if not isinstance(self.inner_solver, str):
            return self.inner_solver
        return solver_spec(self.inner_solver, "inner_solver", self.kind).build(self.inner_eta, inner=True,
                                                                               eta_name="inner_eta")

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    def vanilla(self) -> "RunConfig":
        """Plain sampling at the same NFE: one outer step of all the inner steps (the baseline)."""
        return self.replace(schedule="vanilla", inner_steps=(self.inner_total,), outer_times=None,
                            calibration=None)

    def describe(self) -> str:
        """'5 outer × 20 inner' or '3 outer (20+20+60 inner from t=999, 899, 799)'."""
        steps = list(self.inner_steps)
        if self.outer_times is None and len(set(steps)) == 1:
            return f"{len(steps)} outer × {steps[0]} inner"
        where = "" if self.outer_times is None else " from t=" + ", ".join(_fmt_time(t) for t in self.outer_times)
        return f"{len(steps)} outer ({'+'.join(str(s) for s in steps)} inner{where})"

    def record(self) -> dict:
        """The run as JSON-ready settings (files, manifests, web status)."""
        def plain(v):
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return v if v is None or isinstance(v, (str, int, float, bool)) else repr(v)
        return dict(kind=self.kind, schedule=self.schedule, outer=self.outer_steps, inner=list(self.inner_steps),
                    outer_times=plain(self.outer_times), solver=self.solver_name, inner_eta=plain(self.inner_eta),
                    outer_eta=plain(self.outer_eta), grid=self.grid, t_start=self.t_start, guidance=self.guidance,
                    budget=self.max_nfe, deadline=self.deadline, dtype=self.dtype)


def _fmt_time(t) -> str:
    return str(t) if isinstance(t, (int, np.integer)) else f"{float(t):.3g}"


class _Names:
    """Canonical option name → the caller's name, for error messages."""

    def __init__(self, names: Mapping[str, str] | None):
        self.names = dict(names or {})

    def __call__(self, key: str) -> str:
        return self.names.get(key) or key

    def has(self, key: str) -> bool:
        """False where the caller's surface has no such option (its name maps to None)."""
        return not (key in self.names and self.names[key] is None)

    def rename(self, error: Exception) -> Exception:
        """The same error with a leading canonical name ('budget:' counts as nfe) replaced by the caller's."""
        msg = str(error)
        head, sep, rest = msg.partition(":")
        key = {"budget": "nfe"}.get(head.strip(), head.strip())
        if sep and key in OPTIONS and self(key) != head.strip():
            return type(error)(f"{self(key)}:{rest}")
        return error


def resolve_run(*, defaults: RunDefaults | None = None, names: Mapping[str, str] | None = None,
                num_train_timesteps: int = 1000, **options) -> RunConfig:
    """The one resolver (see the module docstring). ``defaults``: the model family's (default: the core's for a
    VP model); ``num_train_timesteps``: the VP model's T (the default start time is T − 1)."""
    d = defaults or CORE_DEFAULTS[VP]
    n = _Names(names)
    try:
        return _resolve(d, n, int(num_train_timesteps), _merge_aliases(options, n))
    except (ValueError, TypeError) as e:
        raise n.rename(e) from None


def _merge_aliases(options: dict, n: _Names) -> dict:
    out = {k: v for k, v in options.items() if k not in ALIASES}
    unknown = [k for k in out if k not in OPTIONS]
    if unknown:
        raise TypeError(f"resolve_run: unknown option(s) {unknown}; valid: {', '.join(OPTIONS + tuple(ALIASES))}")
    for alias, key in ALIASES.items():
        if options.get(alias) is None:
            continue
        if out.get(key) is not None and out[key] != options[alias]:
            raise ValueError(f"{n(key)}={out[key]!r} and {n(alias)}={options[alias]!r} name the same setting with "
                             f"different values; pass only one")
        out[key] = options[alias]
        n.names.setdefault(key, alias)  # errors name the argument the caller used
    return out


def _resolve(d: RunDefaults, n: _Names, T: int, o: dict) -> RunConfig:
    kind = d.kind
    t_start = _t_start(o.get("t_start"), kind, T, n)
    sched = _schedule(o, d, t_start, n)
    solver, inner_eta = _inner(o.get("inner_solver"), o.get("inner_eta"), d, n)
    outer_eta = o.get("outer_eta")
    if outer_eta is None:
        outer_eta = d.outer_eta if d.outer_eta is not None else _implied_outer_eta(solver, kind)
    outer_eta = check_eta(outer_eta, n("outer_eta"), kind)
    grid = d.grid if o.get("grid") is None else o["grid"]
    try:
        check_flow_convention(grid) if kind == FLOW else check_convention(grid)
    except ValueError as e:
        raise ValueError(f"{n('grid')}:{str(e).partition(':')[2]}") from None
    return RunConfig(kind=kind, schedule=sched.name, inner_steps=tuple(sched.inner_steps),
                     outer_times=None if sched.outer_times is None else tuple(sched.outer_times),
                     inner_solver=solver, inner_eta=inner_eta, outer_eta=outer_eta, grid=grid, t_start=t_start,
                     guidance=_guidance(o.get("guidance"), d, n), max_nfe=_max_nfe(o.get("max_nfe"), n),
                     deadline=_deadline(o.get("deadline"), n), calibration=o.get("calibration"),
                     dtype=_dtype(o.get("dtype"), d, n))


def _t_start(t, kind: str, T: int, n: _Names):
    if kind == FLOW:
        if t is None:
            return 1.0
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)) or not 0.0 < t <= 1.0:
            raise ValueError(f"{n('t_start')}: a flow time must lie in (0, 1], got {t!r}")
        return float(t)
    if t is None:
        return T - 1
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 < t < T:
        raise ValueError(f"{n('t_start')}: must be an integer in [1, {T - 1}], got {t!r}")
    return int(t)


def _count(v, key: str, n: _Names) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    check_steps(v, 10 ** 9, 10 ** 9, n(key))
    return int(v)


def _schedule(o: dict, d: RunDefaults, t_start, n: _Names) -> Schedule:
    sched, nfe, first = o.get("schedule"), o.get("nfe"), o.get("first")
    outer, inner, times = o.get("outer_steps"), o.get("inner_steps"), o.get("outer_times")
    extra = dict(o.get("schedule_options") or {})
    if first is not None:
        extra["first"] = _count(first, "first", n)
    if isinstance(sched, Schedule):
        given = [n(k) for k, v in (("nfe", nfe), ("first", first), ("outer_steps", outer), ("inner_steps", inner),
                                   ("outer_times", times)) if v is not None] + ([n("schedule_options")] if extra else [])
        if given:
            raise ValueError(f"{given[0]}: only with a schedule given by name; a Schedule object already fixes every "
                             f"step")
        return sched
    counts = outer is not None or inner is not None
    if sched is not None and not isinstance(sched, str):
        raise TypeError(f"{n('schedule')}: expected a name ({', '.join(schedule_names())}) or a Schedule, got "
                        f"{type(sched).__name__}")
    name = sched if sched is not None else ("uniform" if counts or times is not None else d.schedule)
    if name not in SCHEDULES:
        raise ValueError(f"{n('schedule')}: unknown schedule {name!r}; valid: {', '.join(schedule_names())}")
    if name != "uniform":
        if counts:
            key = "outer_steps" if outer is not None else "inner_steps"
            raise ValueError(f"{n(key)}: {outer if outer is not None else inner} sets a uniform split; "
                             f"{n('schedule')} {name} takes {n('nfe')}" + (f" (and {n('first')})" if name == "progressive" and n.has("first")
                                                           else "")
                             + f" instead, or use {n('schedule')} uniform")
        if times is not None:
            raise ValueError(f"{n('outer_times')}: schedule {name!r} sets its own outer times")
        budget = d.nfe if nfe is None else _count(nfe, "nfe", n)
        return make_schedule(name, budget, t_start, **extra)
    if extra:
        raise ValueError(f"{n('first') if first is not None else n('schedule_options')}: only for a named schedule "
                         f"other than uniform (e.g. {n('schedule')} progressive)")
    return _uniform(outer, inner, nfe, times, d, t_start, n)


def _uniform(outer, inner, nfe, times, d: RunDefaults, t_start, n: _Names) -> Schedule:
    per_step = inner is not None and not isinstance(inner, (int, np.integer, float))
    if per_step:
        steps = tuple(_count(s, "inner_steps", n) for s in inner)
        if not steps:
            raise ValueError(f"{n('inner_steps')}: an empty list; give one count per outer step")
        if outer is not None and _count(outer, "outer_steps", n) != len(steps):
            raise ValueError(f"{n('inner_steps')}: a list needs one entry per outer step ({outer}), got {len(steps)}")
    else:
        k = d.outer_steps if outer is None else _count(outer, "outer_steps", n)
        if nfe is not None:
            total = _count(nfe, "nfe", n)
            if inner is not None and _count(inner, "inner_steps", n) * k != total:
                raise ValueError(f"{n('nfe')}: {total} is not {n('outer_steps')} {k} × {n('inner_steps')} {inner}; "
                                 f"give two of the three")
            if total % k:
                raise ValueError(f"{n('nfe')}: {total} NFE do not split evenly over {k} outer steps; give a "
                                 f"multiple of {k} or another {n('outer_steps')}")
            inner = total // k
        steps = (d.inner_steps if inner is None else _count(inner, "inner_steps", n),) * k
    if per_step and nfe is not None and sum(steps) != _count(nfe, "nfe", n):
        raise ValueError(f"{n('nfe')}: {nfe} differs from the {sum(steps)} inner steps of {n('inner_steps')}")
    if times is not None:
        times = _outer_times(times, len(steps), t_start, n)
    uneven = len(set(steps)) > 1 or times is not None
    return Schedule(CUSTOM if uneven else "uniform", steps, times)


def _outer_times(times: Sequence, k: int, t_start, n: _Names) -> tuple:
    flow = isinstance(t_start, float)
    ts = tuple(float(t) for t in times) if flow else tuple(t for t in times)
    if not flow and any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) for t in ts):
        raise ValueError(f"{n('outer_times')}: VP outer times are integer timesteps, got {list(times)}")
    if len(ts) != k:
        raise ValueError(f"{n('outer_times')}: {len(ts)} times for {k} outer steps; give one per outer step")
    if ts[0] != t_start or any(b >= a for a, b in zip(ts, ts[1:])) or not ts[-1] > 0:
        raise ValueError(f"{n('outer_times')}: must be strictly descending from t_start={t_start} and stay above "
                         f"the clean end, got {list(times)}")
    return ts if flow else tuple(int(t) for t in ts)


def _inner(solver, eta, d: RunDefaults, n: _Names):
    if solver is None:
        solver = d.inner_solver
    if is_solver(solver):
        if eta is not None:
            raise ValueError(f"{n('inner_eta')}: pass η to the solver instance itself, not as {n('inner_eta')}")
        return solver, None
    spec = solver_spec(solver, n("inner_solver"), d.kind)
    return spec.name, spec.eta_for(eta, inner=True, eta_name=n("inner_eta"))


def _implied_outer_eta(solver, kind: str):
    """The outer η an inner solver implies: its registry entry's, or √(1−ᾱ_t) for a diffusers DPM-Solver."""
    if isinstance(solver, str):
        return solver_spec(solver, "inner_solver", kind).outer_eta_default
    entry = spec_of(solver)
    if entry is not None:
        return entry.outer_eta_default
    return SQRT_ONE_MINUS_ALPHA_BAR if getattr(solver, "is_dpm_solver", False) else 0.0


def _dtype(v, d: RunDefaults, n: _Names) -> str | None:
    """A dtype name (a torch.dtype is accepted); None or "auto": the family's default."""
    if v is None or v == "auto":
        return d.dtype
    name = str(v).replace("torch.", "") if not isinstance(v, str) else v
    if name not in DTYPES:
        raise ValueError(f"{n('dtype')}: {v!r} is not a compute dtype; valid: auto, {', '.join(DTYPES)}")
    return name


def _guidance(g, d: RunDefaults, n: _Names):
    if g is None:
        return d.guidance
    if isinstance(g, bool) or not isinstance(g, (int, float, np.floating)) or not math.isfinite(g) or g < 0:
        raise ValueError(f"{n('guidance')}: must be a finite number ≥ 0, got {g!r}")
    return float(g)


def _max_nfe(v, n: _Names):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{n('max_nfe')}: must be an integer ≥ 1 (one NFE is the smallest budget), got {v!r}")
    return int(v)


def _deadline(v, n: _Names):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not v > 0 or not math.isfinite(v):
        raise ValueError(f"{n('deadline')}: must be a positive number of seconds, got {v!r}")
    return float(v)


def check_budget(max_nfe=None, deadline=None, names: Mapping[str, str] | None = None) -> tuple:
    """A run's stopping rules, checked (the stream's per-call overrides use this too)."""
    n = _Names(names)
    return _max_nfe(max_nfe, n), _deadline(deadline, n)


def option_error(error: Exception, names: Mapping[str, str] | None) -> Exception:
    """``error`` (a ValueError/TypeError naming a canonical run option first) renamed to the caller's option."""
    return _Names(names).rename(error)
