"""Named nested schedules: how an NFE budget is split over outer steps, and where those outer steps start.

A ``Schedule`` is the part of a nested sampler's configuration that the paper fixes to "K outer steps of N/K inner
steps on an evenly spaced outer grid": the inner step count of every outer step and, optionally, explicit outer
times. ``make_schedule(name, budget, t_start)`` builds one by name; ``NestedSampler.from_schedule`` takes it.

* ``"uniform"`` — the paper's split: ``outer`` outer steps (default 5) of budget / outer inner steps each, on the
  convention's evenly spaced outer grid.
* ``"progressive"`` — ``quick`` (default 2) short inner runs of ``first`` steps (default 20) at the top of the
  noise range (outer times t_start, (1 − gap)·t_start, …, gap = 0.1), then one long inner run with the rest of
  the budget from (1 − quick·gap)·t_start. The first finished image comes after ``first`` NFE, as with the
  uniform split, while the last run is long enough to end like vanilla sampling. Measured on the bundled model
  (docs/RESULTS.md, issue 15): at 100 NFE and guidance 1.25 (20 + 20 + 60 inner steps from t = 999, 899, 799)
  its final FD is +2% of vanilla DDPM-100's best (2,000 samples), where uniform 5 × 20 is +11%.
* ``"ramp"`` — progressive with quick runs that double: ``first`` (default 10), 2·``first``, … steps, then the
  rest of the budget (at 100 NFE: 10 + 20 + 70 inner steps from t = 999, 899, 799). The first finished image
  comes after 10 NFE; measured against the others on held-out seeds in docs/RESULTS.md ("The anytime frontier").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .grids import check_steps


class StepCounts:
    """Derived counts of anything with ``inner_steps`` (one count per outer step): a Schedule, a RunConfig."""

    inner_steps: tuple[int, ...]

    @property
    def outer_steps(self) -> int:
        return len(self.inner_steps)

    @property
    def inner_total(self) -> int:
        """Inner steps summed over outer steps (the NFE for one-call-per-step inner solvers)."""
        return sum(self.inner_steps)


@dataclass(frozen=True)
class Schedule(StepCounts):
    """Inner steps per outer step and the outer times (None: the grid convention's evenly spaced points)."""

    name: str
    inner_steps: tuple[int, ...]
    outer_times: tuple[int, ...] | None = None

    def sampler_args(self) -> dict:
        """Keyword arguments of ``NestedSampler``: outer_steps, inner_steps (a list) and outer_times."""
        return dict(outer_steps=self.outer_steps, inner_steps=list(self.inner_steps),
                    outer_times=None if self.outer_times is None else list(self.outer_times))


def _positive(value, name: str) -> int:
    check_steps(value, 0, 10 ** 9, name)
    return int(value)


def uniform(budget: int, t_start: int, outer: int = 5) -> Schedule:
    """``outer`` outer steps of ``budget // outer`` inner steps (the budget must divide evenly)."""
    budget, outer = _positive(budget, "budget"), _positive(outer, "outer")
    if budget % outer:
        raise ValueError(f"budget: {budget} NFE do not split evenly over {outer} outer steps; give a multiple of "
                         f"{outer}")
    return Schedule("uniform", (budget // outer,) * outer)


def progressive(budget: int, t_start: int, first: int = 20, quick: int = 2, gap: float = 0.1,
                growth: int = 1, name: str = "progressive") -> Schedule:
    """``quick`` runs of first·growth^k inner steps from t_start·(1 − k·gap), k = 0 … quick−1, then one run of
    the remaining budget from t_start·(1 − quick·gap) (VP times, integer ``t_start``, rounded to integers; flow
    times, a float ``t_start`` in (0, 1], kept as they are)."""
    budget, first, quick = _positive(budget, "budget"), _positive(first, "first"), _positive(quick, "quick")
    growth = _positive(growth, "growth")
    if not (0 < gap and quick * gap < 1):
        raise ValueError(f"gap: the outer times t_start·(1 − k·gap) must stay above 0 for k ≤ quick={quick}; "
                         f"got gap={gap}")
    runs = tuple(first * growth ** k for k in range(quick))
    rest = budget - sum(runs)
    if rest < 1:
        raise ValueError(f"budget: {budget} NFE leave nothing for the final run after {quick} quick runs of "
                         f"{'+'.join(map(str, runs))} steps; give a budget > {sum(runs)} or fewer steps per quick "
                         f"run (first)")
    if isinstance(t_start, float):  # a flow time u ∈ (0, 1]: no rounding
        times = [t_start * (1 - k * gap) for k in range(quick + 1)]
    else:
        times = [round(t_start * (1 - k * gap)) for k in range(quick + 1)]
    if len(set(times)) != len(times) or not times[-1] > 0:
        raise ValueError(f"t_start: {t_start} is too small for {quick + 1} distinct outer times at gap {gap}")
    return Schedule(name, runs + (rest,), tuple(times))


def ramp(budget: int, t_start: int, first: int = 10, quick: int = 2, gap: float = 0.1) -> Schedule:
    """Progressive with doubling quick runs: ``first``, 2·``first``, … inner steps, then the rest."""
    return progressive(budget, t_start, first, quick, gap, growth=2, name="ramp")


SCHEDULES: dict[str, Callable[..., Schedule]] = {"uniform": uniform, "progressive": progressive, "ramp": ramp}


def schedule_names() -> list[str]:
    return sorted(SCHEDULES)


def make_schedule(name: str, budget: int, t_start: int, **options) -> Schedule:
    """The schedule ``name`` for an NFE ``budget`` (inner steps in total) from ``t_start``; ``options`` are the
    builder's own (``outer`` for "uniform"; ``first``, ``quick``, ``gap`` for "progressive")."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule: unknown schedule {name!r}; use one of {schedule_names()}")
    try:
        return SCHEDULES[name](budget, t_start, **options)
    except TypeError as e:  # an option the builder does not take
        raise ValueError(f"schedule {name!r}: {e}") from None
