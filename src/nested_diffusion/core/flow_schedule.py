"""Rectified-flow (flow matching) schedules: x_σ = (1 − σ) x0 + σ ε, σ ∈ [0, 1], as in SD3 and FLUX.

Time: the core's flow samplers walk an *unshifted* time u ∈ (0, 1] (u = 1 is pure noise, 0 the clean sample) and
the schedule maps it to the noise level σ(u) the network sees, with SD3's static shift σ = s u / (1 + (s − 1) u)
or FLUX's dynamic ("exponential") shift σ = e^μ / (e^μ + 1/u − 1) (μ from the image size), as diffusers'
``FlowMatchEulerDiscreteScheduler``. Keeping u (not σ) as the grid variable means an inner run from an outer point
needs no inverse shift.

Grids (``flow_grid``): a run of n steps from u0 visits u0·b_i, then the clean end 0, with
  "clean"     — b = linspace(1, 1/n, n) (the FLUX pipeline's sigmas; the core VP "clean" rule);
  "sigma_min" — b = linspace(T, T·u_min, n)/T with u_min the scheduler's smallest training σ (diffusers'
                ``set_timesteps(n)`` default, used by the SD3 pipeline).
From u0 = 1 both reproduce the stock grids bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

FLOW_CONVENTIONS = ("clean", "sigma_min")
TIME_SHIFTS = ("exponential", "linear")
FLOW_CLEAN = 0.0  # the clean end of every flow grid


def check_flow_convention(convention: str) -> str:
    if convention not in FLOW_CONVENTIONS:
        raise ValueError(f"grid: unknown flow convention {convention!r}; use one of {FLOW_CONVENTIONS}")
    return convention


@dataclass(frozen=True)
class FlowSchedule:
    """σ(u) for a flow-matching model. ``shift``: SD3's static shift (1.0 = none); ``mu``: FLUX's dynamic shift
    (when given, ``shift`` is ignored, as diffusers does with ``use_dynamic_shifting``)."""

    shift: float = 1.0
    mu: float | None = None
    time_shift_type: str = "exponential"
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if not (isinstance(self.shift, (int, float)) and math.isfinite(self.shift) and self.shift > 0):
            raise ValueError(f"shift: must be a positive finite number, got {self.shift!r}")
        if self.mu is not None and not (isinstance(self.mu, (int, float)) and math.isfinite(self.mu)):
            raise ValueError(f"mu: must be a finite number or None, got {self.mu!r}")
        if self.time_shift_type not in TIME_SHIFTS:
            raise ValueError(f"time_shift_type: {self.time_shift_type!r} is not valid; use one of {TIME_SHIFTS}")
        if self.mu is not None and self.time_shift_type == "linear" and self.mu <= 0:
            raise ValueError(f"mu: the linear time shift needs mu > 0, got {self.mu}")
        if isinstance(self.num_train_timesteps, bool) or int(self.num_train_timesteps) < 2:
            raise ValueError(f"num_train_timesteps: must be an integer ≥ 2, got {self.num_train_timesteps!r}")

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any], mu: float | None = None) -> "FlowSchedule":
        """From a ``FlowMatchEulerDiscreteScheduler`` config; ``mu`` is required with dynamic shifting."""
        bad = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                           "shift_terminal") if config.get(k)]
        if bad:
            raise ValueError(f"scheduler: {bad[0]}={config[bad[0]]!r} is not supported by the nested flow sampler; "
                             f"use a FlowMatchEulerDiscreteScheduler config without it")
        dynamic = bool(config.get("use_dynamic_shifting", False))
        if dynamic and mu is None:
            raise ValueError("mu: the scheduler uses dynamic shifting; pass mu (e.g. from the image size)")
        return cls(shift=float(config.get("shift", 1.0)), mu=float(mu) if dynamic else None,
                   time_shift_type=config.get("time_shift_type", "exponential"),
                   num_train_timesteps=int(config.get("num_train_timesteps", 1000)))

    def sigma(self, u: float) -> float:
        """σ(u) as a Python float; σ(0) = 0, σ(1) = 1."""
        u = float(u)
        if u <= 0.0:
            return 0.0
        if u >= 1.0:
            return 1.0
        if self.mu is not None:
            scale = math.exp(self.mu) if self.time_shift_type == "exponential" else self.mu
            return scale / (scale + (1.0 / u - 1.0))
        return self.shift * u / (1.0 + (self.shift - 1.0) * u)

    @property
    def u_min(self) -> float:
        """The smallest training time of diffusers' scheduler (its ``sigma_min`` before inference shifting),
        rounded to float32 as diffusers stores it."""
        t = np.float32(1.0) / np.float32(self.num_train_timesteps)
        if self.mu is None:
            s = np.float32(self.shift)
            t = s * t / (np.float32(1.0) + (s - np.float32(1.0)) * t)
        return float(np.float32(t))

    def alpha_bar(self, u: float) -> float:
        """ᾱ of the variance-preserving process with the same signal-to-noise ratio as σ(u):
        ᾱ = (1 − σ)² / ((1 − σ)² + σ²). Used by η rules; the clean end gives 1."""
        s = self.sigma(u)
        return (1.0 - s) ** 2 / ((1.0 - s) ** 2 + s ** 2)

    def to_config(self) -> dict:
        return {"shift": self.shift, "mu": self.mu, "time_shift_type": self.time_shift_type,
                "num_train_timesteps": self.num_train_timesteps}


def check_flow_steps(n: Any, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name}: must be ≥ 1, got {n}")
    return int(n)


def flow_grid(schedule: FlowSchedule, u_start: float, n: int, convention: str = "clean",
              name: str = "steps") -> list[float]:
    """The n times u a run from ``u_start`` visits, then the clean end 0.0 (see the module docstring)."""
    n = check_flow_steps(n, name)
    if check_flow_convention(convention) == "clean":
        base = np.linspace(1.0, 1.0 / n, n)
    else:
        T = schedule.num_train_timesteps
        base = np.linspace(T * 1.0, T * schedule.u_min, n) / T
    pts = [float(b) for b in base] if u_start == 1.0 else [float(u_start * b) for b in base]
    if any(later >= earlier for earlier, later in zip(pts[:-1], pts[1:])) or pts[-1] <= 0:
        raise ValueError(f"{name}: {n} steps from u={u_start} give repeated or non-positive times")
    return pts + [FLOW_CLEAN]
