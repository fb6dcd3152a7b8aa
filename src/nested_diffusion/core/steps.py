"""Single update steps of the solvers, as pure functions of Python-float coefficients (no device syncs).

Notation: a = ᾱ_t (current), a_next = ᾱ_{t'} (target, 1.0 for the clean end).
"""
from __future__ import annotations

import math

import torch


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, a: float) -> torch.Tensor:
    return (x - math.sqrt(a) * x0) / math.sqrt(1.0 - a)


def ddim_sigma(a: float, a_next: float, eta: float) -> float:
    """DDIM eq. 16 (Song et al. 2021): σ = η √((1−ᾱ')/(1−ᾱ)) √(1 − ᾱ/ᾱ')."""
    if eta == 0.0 or a_next >= 1.0:
        return 0.0
    return eta * math.sqrt((1 - a_next) / (1 - a)) * math.sqrt(max(0.0, 1 - a / a_next))


def ddim_step(x: torch.Tensor, x0: torch.Tensor, a: float, a_next: float, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM eq. 12: x' = √ᾱ' x̂0 + √(1−ᾱ'−σ²) ε̂ + σ z, with ε̂ re-derived from (x, x̂0)."""
    if a_next >= 1.0:
        return x0
    sigma = ddim_sigma(a, a_next, eta)
    out = math.sqrt(a_next) * x0 + math.sqrt(max(0.0, 1 - a_next - sigma ** 2)) * eps_from_x0(x, x0, a)
    if sigma > 0.0:
        if noise is None:
            raise ValueError("noise: a stochastic DDIM step (η > 0) needs a noise tensor")
        out = out + sigma * noise
    return out


def learned_range_log_variance(a: float, a_next: float, var_values: torch.Tensor) -> torch.Tensor:
    """IDDPM eq. 15 on a respaced grid: log σ² = f log β + (1−f) log β̃, f = (v+1)/2, β = 1 − ᾱ/ᾱ'."""
    beta = 1.0 - a / a_next
    beta_tilde = max(beta * (1 - a_next) / (1 - a), 1e-20)
    frac = (var_values + 1) / 2
    return frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)


def ddpm_learned_step(x: torch.Tensor, x0: torch.Tensor, var_values: torch.Tensor | None, a: float, a_next: float,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
    """Ancestral step with the posterior mean q(x_{t'}|x_t, x̂0) and the learned variance (DDPM eq. 7)."""
    if a_next >= 1.0:
        return x0  # last step (t = 0): no noise
    beta = 1.0 - a / a_next
    mean = (math.sqrt(a_next) * beta / (1 - a)) * x0 + (math.sqrt(1 - beta) * (1 - a_next) / (1 - a)) * x
    if var_values is None:  # fixed small variance β̃
        std = math.sqrt(beta * (1 - a_next) / (1 - a))
        return mean + std * noise
    return mean + torch.exp(0.5 * learned_range_log_variance(a, a_next, var_values)) * noise


def dpm_lambda(a: float) -> float:
    """Half log-SNR λ = log(α/σ); +inf at the clean end."""
    return math.inf if a >= 1.0 else 0.5 * (math.log(a) - math.log(1 - a))


def dpmpp_first_order(x: torch.Tensor, d: torch.Tensor, a: float, a_next: float) -> torch.Tensor:
    """DPM-Solver++ order 1 (≡ DDIM η = 0): x' = (σ'/σ) x − α'(e^{−h} − 1) D."""
    if a_next >= 1.0:
        return d
    h = dpm_lambda(a_next) - dpm_lambda(a)
    return math.sqrt((1 - a_next) / (1 - a)) * x - math.sqrt(a_next) * math.expm1(-h) * d


def dpmpp_second_order(x: torch.Tensor, d0: torch.Tensor, d1: torch.Tensor, a: float, a_mid: float,
                       a_next: float) -> torch.Tensor:
    """DPM-Solver++(2) with the midpoint correction (Lu et al. 2022, Alg. 1/2): D = d0 + (d1 − d0)/(2r).

    ``d0`` is the data prediction at a (the state x's time), ``d1`` at the other grid point a_mid
    (2M: the previous point; 2S: the intermediate point); r = (λ_mid − λ)/(λ' − λ) signed accordingly.
    """
    if a_next >= 1.0:
        raise ValueError("second-order DPM-Solver++ step cannot end at the clean sample (use first order)")
    lam, lam_mid, lam_next = dpm_lambda(a), dpm_lambda(a_mid), dpm_lambda(a_next)
    h = lam_next - lam
    r = (lam_mid - lam) / h
    d = d0 + (d1 - d0) / (2 * r)
    return math.sqrt((1 - a_next) / (1 - a)) * x - math.sqrt(a_next) * math.expm1(-h) * d
