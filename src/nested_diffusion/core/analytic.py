"""Exact denoisers for known data distributions (for tests and sanity checks).

For a mixture of isotropic Gaussians x0 ~ Σ_k w_k N(μ_k, s_k² I), E[x0 | x_t] is closed form:
x_t | k ~ N(√ᾱ μ_k, (ᾱ s_k² + 1 − ᾱ) I), and E[x0 | x_t, k] = μ_k + √ᾱ s_k² (x_t − √ᾱ μ_k) / (ᾱ s_k² + 1 − ᾱ).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .denoisers import DenoiserOutput
from .noise_schedule import NoiseSchedule, get_schedule


class GaussianMixtureDenoiser:
    def __init__(self, means: torch.Tensor, stds: Sequence[float] | torch.Tensor,
                 weights: Sequence[float] | torch.Tensor | None = None,
                 schedule: NoiseSchedule | str = "linear"):
        self.means = torch.as_tensor(means, dtype=torch.float64)       # (K, D)
        K = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(K)
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()
        self.schedule = get_schedule(schedule)
        self.nfe = 0

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        mu = self.mean()
        second = sum(w * (s ** 2 * torch.eye(self.dim, dtype=torch.float64) + torch.outer(m, m))
                     for w, m, s in zip(self.weights, self.means, self.stds))
        return second - torch.outer(mu, mu)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * z

    def __call__(self, x: torch.Tensor, t: int, cond: Any = None) -> DenoiserOutput:
        self.nfe += 1
        a = self.schedule.alpha_bar(int(t))
        xf = x.reshape(x.shape[0], -1).to(torch.float64)                 # (B, D)
        var = a * self.stds ** 2 + (1 - a)                                 # (K,)
        diff = xf[:, None, :] - math.sqrt(a) * self.means[None]            # (B, K, D)
        logp = (torch.log(self.weights) - 0.5 * self.dim * torch.log(var)
                - 0.5 * diff.pow(2).sum(-1) / var)                         # (B, K)
        resp = torch.softmax(logp, dim=1)
        cond_mean = self.means[None] + (math.sqrt(a) * self.stds ** 2 / var)[None, :, None] * diff
        x0 = (resp[:, :, None] * cond_mean).sum(1)
        return DenoiserOutput(x0.reshape(x.shape).to(x.dtype))
