"""Restoration metrics: PSNR per image (DDRM's convention) and measurement consistency ‖H x̂ − y‖."""
from __future__ import annotations

import math

import torch

from .operators import SVDOperator


def psnr(x_hat: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [−1, 1] images mapped to [0, 1] by (x+1)/2 and clamped; MSE over C·H·W in
    float64 (no uint8 quantisation). Returns a (B,) tensor; +inf for identical images."""
    if x_hat.shape != x_ref.shape:
        raise ValueError(f"x_hat: shape {tuple(x_hat.shape)} differs from the reference {tuple(x_ref.shape)}")
    a = ((x_hat.detach().to(torch.float64) + 1) / 2).clamp(0, 1)
    b = ((x_ref.detach().to(torch.float64) + 1) / 2).clamp(0, 1)
    mse = (a - b).pow(2).reshape(a.shape[0], -1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def consistency(operator: SVDOperator, x_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image ‖H x̂ − y‖₂ in the model's [−1, 1] units, on x̂ as returned (unclamped). For comparison with σ_y
    divide by √m (``operator.m``): an x̂ consistent with noisy y gives an RMS residual of at most about σ_y."""
    r = operator.H(x_hat.detach().to(torch.float64)) - operator.measurement_rows(y).to(torch.float64)
    return r.norm(dim=1)


def consistency_rms(operator: SVDOperator, x_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖H x̂ − y‖₂ / √m per image."""
    return consistency(operator, x_hat, y) / math.sqrt(max(operator.m, 1))
