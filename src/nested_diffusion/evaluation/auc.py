"""The anytime metric of the paper (supplementary §A, Table 1): area under the log-FD-per-NFE curve.

F(n) is the distance of the images the sampler would return if stopped after n NFEs (a step function of n):
  * vanilla: the x̂0 predicted by the n-th denoiser call (the last call: the finished sample);
  * nested O×I: while the first inner run is going (n < I), its latest x̂0; from then on the output of the last
    *finished* inner run (it changes only at n = I, 2I, …).
AUC = Δ · Σ_{n = Δ, 2Δ, …, N} ln F(n), natural log, Δ = 10, no n = 0 term: the exact integral over (0, N] of the
step function equal to ln F(n) on each bin (n − Δ, n]. This reading brackets Table 1's published AUCs
(see shared notes/metrics.md §6); vanilla 1×200 needs 20 distances, nested 4×50 only 8 distinct ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from ..core.schedules import schedule_names

DEFAULT_STEP = 10


def _pos_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name}: must be an integer ≥ 1, got {v!r}")
    return int(v)


def nfe_marks(total_nfe: int, step: int = DEFAULT_STEP) -> list[int]:
    """The evaluation grid Δ, 2Δ, …, N. N must be a multiple of Δ (else the last bin would be partial)."""
    total_nfe, step = _pos_int(total_nfe, "total_nfe"), _pos_int(step, "step")
    if total_nfe % step:
        raise ValueError(f"total_nfe: {total_nfe} is not a multiple of step={step}; the AUC grid needs N = kΔ")
    return list(range(step, total_nfe + 1, step))


def anytime_auc(fd: "Mapping[int, float] | Callable[[int], float]", total_nfe: int,
                step: int = DEFAULT_STEP) -> float:
    """AUC = Δ Σ_{n=Δ..N} ln F(n) (natural log). ``fd``: {nfe: distance} holding every mark, or a callable."""
    total = 0.0
    for n in nfe_marks(total_nfe, step):
        if callable(fd):
            v = fd(n)
        elif n in fd:
            v = fd[n]
        else:
            raise ValueError(f"fd: no value at NFE {n}; the grid {step}, {2 * step}, …, {total_nfe} needs every mark")
        v = float(v)
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"fd: the distance at NFE {n} is {v}; ln needs a finite positive value")
        total += math.log(v)
    return step * total


def values_at_marks(update_nfes: Sequence[int], values: Sequence[float], marks: Sequence[int]) -> list[float]:
    """Step-function semantics: at each mark, the value of the last update with nfe ≤ mark."""
    if len(update_nfes) != len(values):
        raise ValueError(f"values: {len(values)} values for {len(update_nfes)} updates")
    if list(update_nfes) != sorted(update_nfes):
        raise ValueError(f"update_nfes: must be non-decreasing, got {list(update_nfes)}")
    out = []
    for m in marks:
        j = int(np.searchsorted(np.asarray(update_nfes), m, side="right")) - 1
        if j < 0:
            raise ValueError(f"marks: no update exists at NFE {m} (the first is at {update_nfes[0]})")
        out.append(values[j])
    return out


@dataclass(frozen=True)
class CurrentUpdate:
    """Which anytime update is the result after n NFEs (fields as in nested.AnytimeUpdate)."""

    nfe: int            # NFE at which that update was produced (≤ n)
    outer_step: int     # 1-based
    inner_step: int     # position inside that outer step's inner run (in NFEs)
    source: str         # "x0_preview" or "inner_result"
    final: bool


class UpdateSchedule:
    """The anytime update schedule of a sampler configuration, without running it.

    ``inner_nfe``: the NFE cost of each outer step's inner run (O entries; for the built-in solvers = inner
    steps). Assumes every denoiser call of the first inner run yields a preview (true for the built-in solvers).
    """

    def __init__(self, inner_nfe: Sequence[int]):
        runs = [_pos_int(v, "inner_nfe") for v in inner_nfe]
        if not runs:
            raise ValueError("inner_nfe: need at least one outer step")
        self.inner_nfe = runs
        self.run_end = np.cumsum(runs).tolist()
        self.total_nfe = self.run_end[-1]

    @classmethod
    def grid(cls, outer_steps: int, inner_steps: int) -> "UpdateSchedule":
        return cls([_pos_int(inner_steps, "inner_steps")] * _pos_int(outer_steps, "outer_steps"))

    @classmethod
    def from_sampler(cls, sampler) -> "UpdateSchedule":
        """From a NestedSampler (its inner solver's NFE per run)."""
        return cls([sampler.solver.inner.nfe(s) for s in sampler.inner_steps])

    def current(self, n: int) -> CurrentUpdate:
        """The update current after n NFEs (n past the end: the final sample)."""
        n = _pos_int(n, "n")
        first = self.run_end[0]
        if n < first:
            return CurrentUpdate(n, 1, n, "x0_preview", False)
        k = int(np.searchsorted(np.asarray(self.run_end), n, side="right"))  # finished inner runs
        k = min(k, len(self.run_end))
        return CurrentUpdate(self.run_end[k - 1], k, self.inner_nfe[k - 1], "inner_result", k == len(self.run_end))

    def update_nfes(self) -> list[int]:
        """NFEs at which the result changes: 1, …, I−1 (previews), then every inner-run end."""
        return list(range(1, self.run_end[0])) + self.run_end

    def distinct_at(self, marks: Sequence[int]) -> list[int]:
        """The update NFE current at each mark (distance evaluations needed = len(set(...)))."""
        return [self.current(m).nfe for m in marks]


def current_update(config, n: int) -> CurrentUpdate:
    """``config``: a NestedSampler, an UpdateSchedule, or an (outer_steps, inner_steps) pair."""
    if isinstance(config, UpdateSchedule):
        sched = config
    elif isinstance(config, tuple) and len(config) == 2:
        sched = UpdateSchedule.grid(*config)
    elif hasattr(config, "inner_steps") and hasattr(config, "solver"):
        sched = UpdateSchedule.from_sampler(config)
    else:
        raise TypeError(f"config: expected a NestedSampler, an UpdateSchedule or (outer, inner), "
                        f"got {type(config).__name__}")
    return sched.current(n)


def parse_configs(spec: "str | Sequence") -> "list[tuple[int, int] | str]":
    """'1x200,2x100,progressive' or [(1, 200), "progressive", …] → [(outer, inner) or a schedule name, …]. A
    name (``core.schedules.schedule_names()``) is a named schedule spending the run's total NFE."""
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    out = []
    for it in items:
        if isinstance(it, str) and it.strip().lower() in schedule_names():
            out.append(it.strip().lower())
            continue
        try:
            o, i = (it.lower().split("x") if isinstance(it, str) else it)
            out.append((_pos_int(int(o), "outer"), _pos_int(int(i), "inner")))
        except (ValueError, TypeError):
            raise ValueError(f"configs: {it!r} is not an OUTERxINNER pair of positive integers (e.g. 4x50) or a "
                             f"schedule name ({', '.join(schedule_names())})")
    if not out:
        raise ValueError("configs: give at least one OUTERxINNER configuration")
    return out
