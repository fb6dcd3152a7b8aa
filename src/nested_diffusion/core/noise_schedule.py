"""Discrete variance-preserving noise schedules (DDPM notation, T steps).

x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε.  All coefficients are float64 numpy arrays built once;
solvers read Python floats from them, so no step ever syncs a device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

SCHEDULE_NAMES = ("linear", "scaled_linear", "cosine")


@dataclass(frozen=True)
class NoiseSchedule:
    """A VP schedule given by its betas. Index t = 0 … T−1 (t = 0 is the least noisy level)."""

    betas: np.ndarray
    alphas_cumprod: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2:
            raise ValueError(f"betas: expected a 1-D array of at least 2 values, got shape {betas.shape}")
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError("betas: every value must lie in (0, 1)")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", np.cumprod(1.0 - betas))

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_name(cls, name: str, num_train_timesteps: int = 1000, beta_start: float | None = None,
                  beta_end: float | None = None) -> "NoiseSchedule":
        """'linear' (DDPM/DiT 1e-4…0.02), 'scaled_linear' (Stable Diffusion 0.00085…0.012), 'cosine' (IDDPM)."""
        T = int(num_train_timesteps)
        if T < 2:
            raise ValueError(f"num_train_timesteps: must be ≥ 2, got {num_train_timesteps}")
        if name == "linear":
            b0, b1 = beta_start or 1e-4, beta_end or 0.02
            betas = np.linspace(b0, b1, T, dtype=np.float64)
        elif name == "scaled_linear":
            b0, b1 = beta_start or 0.00085, beta_end or 0.012
            betas = np.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=np.float64) ** 2
        elif name in ("cosine", "squaredcos_cap_v2"):
            betas = cosine_betas(T)
        else:
            raise ValueError(f"schedule: unknown name {name!r}; valid names are {', '.join(SCHEDULE_NAMES)}")
        return cls(betas)

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any]) -> "NoiseSchedule":
        """Build from a diffusers scheduler config dict (``scheduler.config`` or scheduler_config.json)."""
        if config.get("trained_betas") is not None:
            return cls(np.asarray(config["trained_betas"], dtype=np.float64))
        name = config.get("beta_schedule", "linear")
        return cls.from_name(name, config.get("num_train_timesteps", 1000),
                             config.get("beta_start"), config.get("beta_end"))

    # ----------------------------------------------------------------- properties
    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.size)

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t as a Python float; t = −1 means the clean end (ᾱ = 1)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def to_config(self) -> dict:
        return {"num_train_timesteps": self.num_train_timesteps, "trained_betas": self.betas.tolist()}


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """IDDPM cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas clipped at max_beta."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)], dtype=np.float64)


def get_schedule(schedule: "NoiseSchedule | str | Mapping[str, Any]") -> NoiseSchedule:
    """Accept a schedule, a name, or a diffusers config dict."""
    if isinstance(schedule, NoiseSchedule):
        return schedule
    if isinstance(schedule, str):
        return NoiseSchedule.from_name(schedule)
    if isinstance(schedule, Mapping):
        return NoiseSchedule.from_diffusers_config(schedule)
    raise TypeError(f"schedule: expected NoiseSchedule, a name or a config dict, got {type(schedule).__name__}")
