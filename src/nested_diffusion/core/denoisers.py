"""Denoisers: (noisy state x_t, integer time t, conditioning) → x̂0 (+ the learned variance when the model has one).

A network predicting ε, v or x0 becomes a denoiser through ``ModelDenoiser``; classifier-free guidance wraps the
network call (the conditional/unconditional pair is one NFE, as in the paper). Anything with this call signature
can drive the solvers — including a whole sampler run (see ``nested.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from .noise_schedule import NoiseSchedule, get_schedule

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_ALIASES = {"eps": "epsilon", "epsilon": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction",
            "x0": "sample", "sample": "sample"}


@dataclass
class DenoiserOutput:
    x0: torch.Tensor
    var_values: torch.Tensor | None = None  # IDDPM learned_range interpolation value v ∈ [−1, 1], if predicted


@runtime_checkable
class Denoiser(Protocol):
    schedule: NoiseSchedule

    def __call__(self, x: torch.Tensor, t: int, cond: Any = None) -> DenoiserOutput: ...


class NonFiniteOutputError(FloatingPointError):
    """A model returned NaN or inf."""

    def __init__(self, t: int, what: str = "model output"):
        super().__init__(f"{what} at timestep t={t} contains NaN or inf")
        self.t = t


ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class ClassifierFreeGuidance:
    """Wrap ``model(x, t, cond)`` into a guided call: pred = u + w (c − u), one batched forward of [cond, null].

    ``channels``: guide only the first k output channels (DiT's original code guides 3 of 4 latent channels); the
    rest (e.g. the learned variance) are taken from the conditional half.
    """

    def __init__(self, model: ModelFn, guidance_scale: float, null_cond: Any, channels: int | None = None,
                 cat_cond: Callable[[Any, Any], Any] | None = None):
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale: must be a finite number ≥ 0, got {guidance_scale}")
        self.model, self.scale, self.null_cond, self.channels = model, float(guidance_scale), null_cond, channels
        self.cat_cond = cat_cond or (lambda c, u: torch.cat([c, u]))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if self.scale == 1.0:
            return self.model(x, t, cond)
        b = x.shape[0]
        null = self.null_cond(b, x.device) if callable(self.null_cond) else self.null_cond
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), self.cat_cond(cond, null))
        c, u = out[:b], out[b:]
        k = out.shape[1] if self.channels is None else self.channels
        guided = u[:, :k] + self.scale * (c[:, :k] - u[:, :k])
        return torch.cat([guided, c[:, k:]], dim=1) if k < out.shape[1] else guided


class ModelDenoiser:
    """Adapter from a network predicting ε, v or x0 (optionally with a learned-variance channel group) to x̂0.

    ``model(x, t, cond)`` gets t as a (B,) long tensor. With ``learned_variance`` the network returns 2·C channels:
    the prediction, then the variance interpolation values (DiT / IDDPM layout).
    """

    def __init__(self, model: ModelFn, schedule: NoiseSchedule | str | dict, prediction_type: str = "epsilon",
                 learned_variance: bool = False, clip_x0: float | None = None, check_finite: bool = True):
        if prediction_type not in _ALIASES:
            raise ValueError(f"prediction_type: {prediction_type!r} is not valid; use one of {PREDICTION_TYPES}")
        if clip_x0 is not None and not clip_x0 > 0:
            raise ValueError(f"clip_x0: must be a positive number or None, got {clip_x0}")
        self.model, self.schedule = model, get_schedule(schedule)
        self.prediction_type = _ALIASES[prediction_type]
        self.learned_variance, self.clip_x0, self.check_finite = learned_variance, clip_x0, check_finite
        self.nfe = 0  # model evaluations so far (a guided pair counts once)

    def __call__(self, x: torch.Tensor, t: int, cond: Any = None) -> DenoiserOutput:
        T = self.schedule.num_train_timesteps
        if not 0 <= int(t) < T:
            raise ValueError(f"t: must lie in [0, {T - 1}], got {t}")
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        out = self.model(x, tt, cond)
        self.nfe += 1
        c = x.shape[1]
        expected = (x.shape[0], 2 * c if self.learned_variance else c, *x.shape[2:])
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model output: expected shape {expected} at t={t}, got {got}")
        if not out.is_floating_point():
            raise TypeError(f"model output: expected a floating-point tensor at t={t}, got {out.dtype}")
        if self.check_finite and not bool(torch.isfinite(out).all()):
            raise NonFiniteOutputError(int(t))
        pred, var = (out[:, :c], out[:, c:]) if self.learned_variance else (out, None)
        pred = pred.to(x.dtype)
        a = self.schedule.alpha_bar(int(t))
        sa, s1a = math.sqrt(a), math.sqrt(1 - a)
        if self.prediction_type == "epsilon":
            x0 = (x - s1a * pred) / sa
        elif self.prediction_type == "v_prediction":
            x0 = sa * x - s1a * pred
        else:
            x0 = pred
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return DenoiserOutput(x0, var)


class CountingDenoiser:
    """Counts calls of any denoiser (an NFE counter that works for composed denoisers too)."""

    def __init__(self, denoiser: Denoiser):
        self.inner, self.schedule, self.nfe = denoiser, denoiser.schedule, 0

    def __call__(self, x: torch.Tensor, t: int, cond: Any = None) -> DenoiserOutput:
        self.nfe += 1
        return self.inner(x, t, cond)
