"""Integer time grids. Every grid a sampler walks is one call of ``descending_grid``.

Conventions (README, "Grids"): "clean" — a run's points are round(linspace(t, 0, n+1))[:-1] and its last step
lands on x̂0 (ᾱ = 1, time ``CLEAN``); "authors" — points round(linspace(t, 1, n)), the last step lands on ᾱ at
index 0 (the authors' Stable Diffusion code). Learned-variance DDPM and DDRM use round(linspace(t, 0, n)): the
last call is at t = 0 (IDDPM/DiT respacing), then x̂0.
"""
from __future__ import annotations

import numpy as np

CLEAN = -1  # time index of the clean end (ᾱ = 1)
CONVENTIONS = ("clean", "authors")


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"grid: unknown convention {convention!r}; use one of {CONVENTIONS}")
    return convention


def check_steps(n: int, t_start: int, most: int, name: str) -> None:
    """``n`` must be an integer in [1, most]; ``most`` is the number of distinct times available."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name}: must be ≥ 1, got {n}")
    if n > most:
        raise ValueError(f"{name}: {n} steps do not fit between t={t_start} and the clean end; "
                         f"at most {most} distinct integer timesteps are available")


def check_step_counts(steps, name: str = "inner_steps") -> None:
    """One integer ≥ 1, or a list of them."""
    if isinstance(steps, (int, np.integer)) or isinstance(steps, bool):
        check_steps(steps, 10 ** 9, 10 ** 9, name)
    else:
        for s in steps:
            check_steps(s, 10 ** 9, 10 ** 9, name)


def dedup_desc(values: np.ndarray) -> list[int]:
    """Round to integers and keep a strictly descending sequence (drops repeats)."""
    out: list[int] = []
    for v in np.round(values).astype(np.int64).tolist():
        if not out or v < out[-1]:
            out.append(int(v))
    return out


def descending_grid(t_start: int, n: int, to: int, include_to: bool, end: int, name: str = "steps") -> list[int]:
    """n integer times round(linspace(t_start, to, n)) (``include_to``) or round(linspace(t_start, to, n+1))[:-1],
    then ``end``. Asking for more points than distinct integer times exist is an error, never a duplicate."""
    most = t_start - to + 1 if include_to else t_start
    check_steps(n, t_start, most, name)
    pts = dedup_desc(np.linspace(t_start, to, n) if include_to else np.linspace(t_start, to, n + 1)[:-1])
    if len(pts) != n:  # guarded: duplicates give NaNs in DPM-Solver
        raise ValueError(f"{name}: {n} steps from t={t_start} give duplicate timesteps after rounding")
    return pts + [end]


def step_grid(t_start: int, n: int, convention: str = "clean", name: str = "steps") -> list[int]:
    """Times visited by an n-step first-order solver started at t_start, plus the end time (CLEAN or 0)."""
    if check_convention(convention) == "clean":
        return descending_grid(t_start, n, 0, False, CLEAN, name)
    return descending_grid(t_start, n, 1, True, 0, name)


def zero_ending_grid(t_start: int, n: int, convention: str = "clean", name: str = "steps") -> list[int]:
    """round(linspace(t_start, 0, n)) then CLEAN: n calls, the last at t = 0 (IDDPM/DiT respacing, DDRM)."""
    check_convention(convention)
    return descending_grid(t_start, n, 0, True, CLEAN, name)


def outer_grid(t_start: int, n: int, convention: str = "clean", name: str = "outer_steps") -> list[int]:
    """Outer points round(linspace(t, 0, n+1))[:-1] ("clean") or round(linspace(t, 1, n+1))[:-1] ("authors": their
    round(linspace(1, T−1, K+1)) descending, last entry dropped), then CLEAN: the last inner run's output is the
    sample."""
    to = 0 if check_convention(convention) == "clean" else 1
    return descending_grid(t_start, n, to, False, CLEAN, name)
