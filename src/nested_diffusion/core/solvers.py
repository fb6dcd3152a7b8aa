"""Solvers that run from any integer time t_start to the clean sample in n steps, on an arbitrary partial grid.

Every solver is a generator ``run(denoiser, x, t_start, n, noise, cond, convention)`` yielding one
``SolverEvent`` per denoiser call, carrying its current anytime estimate of x0; the last event is ``final``
and holds the clean sample. Because a sampler run maps (x_t, t) to a clean estimate, it is itself a denoiser:
``nested.NestedSolver`` composes them.

Grid conventions (see README, "Grids"):
  "clean"   — points round(linspace(t, 0, n+1))[:-1], the last step lands exactly on x̂0 (ᾱ = 1).
  "authors" — points round(linspace(t, 1, n)), the last step lands on ᾱ at index 0 (as the authors' SD code).
Learned-variance DDPM always uses round(linspace(t, 0, n)) ending at t = 0 then x0 (as IDDPM/DiT respacing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np
import torch

from .denoisers import Denoiser
from .noise import NoiseSource
from .steps import ddim_sigma, ddim_step, ddpm_learned_step, dpmpp_first_order, dpmpp_second_order

CLEAN = -1  # time index of the clean end (ᾱ = 1)
CONVENTIONS = ("clean", "authors")
EtaSpec = Union[float, Sequence[float], str, Callable[[int, int, float], float]]
SQRT_ONE_MINUS_ALPHA_BAR = "sqrt_one_minus_alpha_bar"


@dataclass
class SolverEvent:
    nfe: int                 # denoiser calls spent in this run so far
    x0: torch.Tensor         # this run's current anytime estimate of the clean sample
    kind: str                # "preview" (a raw x̂0 prediction) or "result" (a finished run's output)
    final: bool = False      # the run is over; x0 is its output
    changed: bool = True     # whether x0 differs from the previous event's estimate
    step: int = 0            # index of the grid step this event belongs to
    t: int = 0               # time of the state the denoiser was called at
    sub: "SolverEvent | None" = None  # the inner solver's event (nested solvers only)


def _dedup_desc(values: np.ndarray) -> list[int]:
    out: list[int] = []
    for v in np.round(values).astype(np.int64).tolist():
        if not out or v < out[-1]:
            out.append(int(v))
    return out


def _check_steps(n: int, t_start: int, most: int, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name}: must be ≥ 1, got {n}")
    if n > most:
        raise ValueError(f"{name}: {n} steps do not fit between t={t_start} and the clean end; "
                         f"at most {most} distinct integer timesteps are available")


def step_grid(t_start: int, n: int, convention: str = "clean", name: str = "steps") -> list[int]:
    """Times visited by an n-step first-order solver started at t_start, plus the end time (CLEAN or 0)."""
    if convention == "clean":
        _check_steps(n, t_start, t_start, name)
        pts = _dedup_desc(np.linspace(t_start, 0, n + 1)[:-1])
        end = CLEAN
    elif convention == "authors":
        _check_steps(n, t_start, t_start, name)
        pts = _dedup_desc(np.linspace(t_start, 1, n))
        end = 0
    else:
        raise ValueError(f"grid: unknown convention {convention!r}; use one of {CONVENTIONS}")
    if len(pts) != n:  # cannot happen for n ≤ t_start, guarded because duplicates give NaNs in DPM-Solver
        raise ValueError(f"{name}: {n} steps from t={t_start} give duplicate timesteps after rounding")
    return pts + [end]


def zero_ending_grid(t_start: int, n: int, convention: str = "clean", name: str = "steps") -> list[int]:
    """round(linspace(t_start, 0, n)) then CLEAN: n calls, the last at t = 0 (IDDPM/DiT respacing)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"grid: unknown convention {convention!r}; use one of {CONVENTIONS}")
    _check_steps(n, t_start, t_start + 1, name)
    pts = _dedup_desc(np.linspace(t_start, 0, n))
    if len(pts) != n:
        raise ValueError(f"{name}: {n} steps from t={t_start} give duplicate timesteps after rounding")
    return pts + [CLEAN]


def resolve_eta(spec: EtaSpec, i: int, t: int, a: float, n: int, name: str = "eta") -> float:
    if isinstance(spec, str):
        if spec != SQRT_ONE_MINUS_ALPHA_BAR:
            raise ValueError(f"{name}: unknown rule {spec!r}; use a number ≥ 0, a list, a callable or "
                             f"{SQRT_ONE_MINUS_ALPHA_BAR!r}")
        return math.sqrt(1.0 - a)
    if callable(spec):
        eta = float(spec(i, t, a))
    elif isinstance(spec, (int, float)):
        eta = float(spec)
    else:
        if len(spec) != n:
            raise ValueError(f"{name}: a per-step list needs {n} values, got {len(spec)}")
        eta = float(spec[i])
    if not eta >= 0 or not math.isfinite(eta):
        raise ValueError(f"{name}: must be a finite number ≥ 0, got {eta}")
    return eta


def validate_eta(spec: EtaSpec, name: str = "eta") -> EtaSpec:
    if isinstance(spec, str):
        resolve_eta(spec, 0, 0, 0.5, 1, name)
    elif isinstance(spec, (int, float)):
        resolve_eta(spec, 0, 0, 0.5, 1, name)
    elif not callable(spec):
        for v in spec:
            resolve_eta(float(v), 0, 0, 0.5, 1, name)
    return spec


class Solver:
    """Base class: a solver has a name, a grid rule and an NFE cost for n steps."""

    name = "solver"
    first_order_grid = True

    def nfe(self, n: int) -> int:
        return n

    def max_steps(self, t_start: int, convention: str) -> int:
        return t_start

    def grid(self, t_start: int, n: int, convention: str, name: str = "steps") -> list[int]:
        return step_grid(t_start, n, convention, name)

    def run(self, denoiser: Denoiser, x: torch.Tensor, t_start: int, n: int, noise: NoiseSource,
            cond: Any = None, convention: str = "clean") -> Iterator[SolverEvent]:
        raise NotImplementedError


class DDIMSolver(Solver):
    """DDIM (Song et al. 2021) with η: a number, a per-step list, a callable (i, t, ᾱ_t) → η, or
    "sqrt_one_minus_alpha_bar" for the seed's η_t = √(1 − ᾱ_t)."""

    name = "ddim"

    def __init__(self, eta: EtaSpec = 0.0):
        self.eta = validate_eta(eta)

    def run(self, denoiser, x, t_start, n, noise, cond=None, convention="clean"):
        times, S = self.grid(t_start, n, convention), denoiser.schedule
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            out = denoiser(x, t, cond)
            a, a_next = S.alpha_bar(t), S.alpha_bar(t_next)
            eta = resolve_eta(self.eta, i, t, a, n)
            z = noise.randn_like(x) if ddim_sigma(a, a_next, eta) > 0 else None
            x = ddim_step(x, out.x0, a, a_next, eta, z)
            final = i == n - 1
            yield SolverEvent(i + 1, x if final else out.x0, "result" if final else "preview", final, True, i, t)


class DDPMLearnedSolver(Solver):
    """Ancestral DDPM with the model's learned variance (IDDPM learned_range), on round(linspace(t, 0, n)).

    Models without a variance output fall back to the posterior variance β̃ (DDPM's "fixed small")."""

    name = "ddpm"

    def max_steps(self, t_start, convention):
        return t_start + 1

    def grid(self, t_start, n, convention, name="steps"):
        return zero_ending_grid(t_start, n, convention, name)

    def run(self, denoiser, x, t_start, n, noise, cond=None, convention="clean"):
        times, S = self.grid(t_start, n, convention), denoiser.schedule
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            out = denoiser(x, t, cond)
            a, a_next = S.alpha_bar(t), S.alpha_bar(t_next)
            z = noise.randn_like(x) if a_next < 1.0 else None
            x = ddpm_learned_step(x, out.x0, out.var_values, a, a_next, z)
            final = i == n - 1
            yield SolverEvent(i + 1, x if final else out.x0, "result" if final else "preview", final, True, i, t)


class DPMSolverPP2M(Solver):
    """Multistep DPM-Solver++(2M) (Lu et al. 2022), data prediction, first order at the first and last step."""

    name = "dpmpp_2m"

    def run(self, denoiser, x, t_start, n, noise, cond=None, convention="clean"):
        times, S = self.grid(t_start, n, convention), denoiser.schedule
        prev_d, prev_a = None, None
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            d = denoiser(x, t, cond).x0
            a, a_next = S.alpha_bar(t), S.alpha_bar(t_next)
            final = i == n - 1
            if prev_d is None or final:
                x = dpmpp_first_order(x, d, a, a_next)
            else:
                x = dpmpp_second_order(x, d, prev_d, a, prev_a, a_next)
            prev_d, prev_a = d, a
            yield SolverEvent(i + 1, x if final else d, "result" if final else "preview", final, True, i, t)


class DPMSolverPP2S(Solver):
    """Singlestep DPM-Solver++(2S): grid points taken in pairs (s, u); a first-order step to u, then a
    second-order step from s over the pair. One NFE per grid point; order 1 for an unpaired or final step."""

    name = "dpmpp_2s"

    def run(self, denoiser, x, t_start, n, noise, cond=None, convention="clean"):
        times, S = self.grid(t_start, n, convention), denoiser.schedule
        i = 0
        while i < n:
            s, u = times[i], times[i + 1]
            a_s, a_u = S.alpha_bar(s), S.alpha_bar(u)
            d_s = denoiser(x, s, cond).x0
            if i + 1 == n:  # unpaired last point: first order to the end
                x = dpmpp_first_order(x, d_s, a_s, a_u)
                yield SolverEvent(i + 1, x, "result", True, True, i, s)
                return
            yield SolverEvent(i + 1, d_s, "preview", False, True, i, s)
            x_u = dpmpp_first_order(x, d_s, a_s, a_u)
            d_u = denoiser(x_u, u, cond).x0
            end = times[i + 2]
            a_end = S.alpha_bar(end)
            final = i + 2 == n
            if a_end >= 1.0:  # the pair ends at the clean sample: only a first-order step is defined
                x = dpmpp_first_order(x_u, d_u, a_u, a_end)
            else:
                x = dpmpp_second_order(x, d_s, d_u, a_s, a_u, a_end)
            yield SolverEvent(i + 2, x if final else d_u, "result" if final else "preview", final, True, i + 1, u)
            i += 2


SOLVERS: dict[str, Callable[..., Solver]] = {
    "ddim": DDIMSolver,
    "ddpm": DDPMLearnedSolver,
    "dpmpp_2m": DPMSolverPP2M,
    "dpmpp_2s": DPMSolverPP2S,
}
_SOLVER_ALIASES = {"dpmsolver": "dpmpp_2s", "dpm-solver++": "dpmpp_2s", "dpmpp": "dpmpp_2s",
                   "dpm++2m": "dpmpp_2m", "dpm++2s": "dpmpp_2s", "ddpm_learned": "ddpm"}


def get_solver(solver: "Solver | str", eta: EtaSpec | None = None) -> Solver:
    """A Solver instance from an instance or a name (ddim, ddpm, dpmpp_2m, dpmpp_2s); eta applies to DDIM."""
    if isinstance(solver, Solver) or hasattr(solver, "run") and hasattr(solver, "nfe"):
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver: expected a Solver or a name, got {type(solver).__name__}")
    key = _SOLVER_ALIASES.get(solver.lower(), solver.lower())
    if key not in SOLVERS:
        raise ValueError(f"solver: unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    if key == "ddim":
        return DDIMSolver(0.0 if eta is None else eta)
    if eta not in (None, 0, 0.0):
        raise ValueError(f"eta: only the DDIM solver takes η, got eta={eta} for solver {key!r}")
    return SOLVERS[key]()
