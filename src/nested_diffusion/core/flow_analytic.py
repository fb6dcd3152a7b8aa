"""The exact velocity field of a Gaussian mixture under the flow-matching path (for tests; mirror of ``analytic``).

x0 ~ Σ_k w_k N(μ_k, s_k² I), x_σ = (1 − σ) x0 + σ ε: x_σ | k ~ N((1 − σ) μ_k, ((1 − σ)² s_k² + σ²) I),
E[x0 | x_σ, k] = μ_k + (1 − σ) s_k² (x_σ − (1 − σ) μ_k) / ((1 − σ)² s_k² + σ²), and the optimal velocity
E[ε − x0 | x_σ] = (x_σ − E[x0 | x_σ]) / σ. Called as a model ``(x, sigma, cond) → v``, it drives ``FlowDenoiser``.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .analytic import GaussianMixtureDenoiser


class GaussianMixtureVelocity(GaussianMixtureDenoiser):
    """Same mixture parameters and moments as ``GaussianMixtureDenoiser``; ``__call__`` returns the velocity."""

    def __init__(self, means: torch.Tensor, stds: Sequence[float] | torch.Tensor,
                 weights: Sequence[float] | torch.Tensor | None = None):
        super().__init__(means, stds, weights, "linear")
        del self.schedule  # a model, not a VP denoiser: the FlowDenoiser wrapping it holds the schedule

    def posterior_mean(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        c = 1.0 - sigma
        var = c ** 2 * self.stds ** 2 + sigma ** 2                          # (K,)
        diff = xf[:, None, :] - c * self.means[None]                        # (B, K, D)
        logp = torch.log(self.weights) - 0.5 * self.dim * torch.log(var) - 0.5 * diff.pow(2).sum(-1) / var
        resp = torch.softmax(logp, dim=1)
        cond_mean = self.means[None] + (c * self.stds ** 2 / var)[None, :, None] * diff
        return (resp[:, :, None] * cond_mean).sum(1).reshape(x.shape)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        self.nfe += 1
        s = float(sigma.reshape(-1)[0])  # one noise level per call (the samplers' convention)
        x0 = self.posterior_mean(x, s)
        return ((x.to(torch.float64) - x0) / s).to(x.dtype)
