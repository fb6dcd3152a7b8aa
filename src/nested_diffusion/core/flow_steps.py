"""Single flow-matching steps as pure functions of Python-float noise levels (no device syncs).

Path x_σ = (1 − σ) x0 + σ ε. Given a clean estimate x̂0 at level σ, ε̂ = (x − (1 − σ) x̂0)/σ. The deterministic step
to σ' (the DDIM analogue, and the nested outer step) is x' = (1 − σ') x̂0 + σ' ε̂ = x + (σ' − σ)(x − x̂0)/σ: an Euler
step with the velocity (x − x̂0)/σ. The flow state is a rescaled VP state (x_VP = x / r, r = √((1−σ)² + σ²),
ᾱ = (1 − σ)²/r²), so DDIM's η carries over exactly: the stochastic step keeps a fraction of ε̂ and adds fresh noise
c z with c = r' · σ_DDIM(ᾱ, ᾱ', η). η = 1 is the ancestral (posterior) step; ``FRESH_NOISE`` (c = σ') draws all of
the noise afresh, x' = (1 − σ') x̂0 + σ' z (diffusers' ``stochastic_sampling``).
"""
from __future__ import annotations

import math

import torch

FRESH_NOISE = "fresh"


def vp_alpha_bar(sigma: float) -> float:
    return (1.0 - sigma) ** 2 / ((1.0 - sigma) ** 2 + sigma ** 2)


def flow_eps(x: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """ε̂ = (x − (1 − σ) x̂0)/σ."""
    return (x - (1.0 - sigma) * x0) / sigma


def flow_noise_scale(sigma: float, sigma_next: float, eta: "float | str") -> float:
    """The std c of the fresh noise of a flow DDIM(η) step from σ to σ' (0 for η = 0 or σ' = 0)."""
    if sigma_next <= 0.0:
        return 0.0
    if eta == FRESH_NOISE:
        return sigma_next
    if eta == 0.0:
        return 0.0
    a, a_next = vp_alpha_bar(sigma), vp_alpha_bar(sigma_next)
    r_next = math.sqrt((1.0 - sigma_next) ** 2 + sigma_next ** 2)
    vp = eta * math.sqrt((1 - a_next) / (1 - a)) * math.sqrt(max(0.0, 1 - a / a_next))
    return min(r_next * vp, sigma_next)


def flow_ddim_step(x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float,
                   eta: "float | str" = 0.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """x' = (1 − σ') x̂0 + √(σ'² − c²) ε̂ + c z; σ' = 0 returns x̂0."""
    if sigma_next <= 0.0:
        return x0
    c = flow_noise_scale(sigma, sigma_next, eta)
    keep = math.sqrt(max(0.0, sigma_next ** 2 - c ** 2))
    out = (1.0 - sigma_next) * x0
    if keep > 0.0:
        out = out + keep * flow_eps(x, x0, sigma)
    if c > 0.0:
        if noise is None:
            raise ValueError("noise: a stochastic flow step (η > 0) needs a noise tensor")
        out = out + c * noise
    return out


def flow_velocity(x: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """The velocity dx/dσ = (x − x̂0)/σ = ε̂ − x̂0 implied by a clean estimate."""
    return (x - x0) / sigma
