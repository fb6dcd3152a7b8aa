"""Fréchet distance between Gaussians fitted to features (float64 throughout).

FD = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}; the last trace is computed from the eigenvalues
of a symmetric PSD matrix, which is stable where scipy's sqrtm of Σ1Σ2 can go complex.
On classifier features this is *not* the Inception FID: report it as FD on the named feature network.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FeatureStats:
    mu: torch.Tensor
    sigma: torch.Tensor
    n: int

    @classmethod
    def from_features(cls, f: torch.Tensor) -> "FeatureStats":
        f = f.detach().to(torch.float64).reshape(f.shape[0], -1)
        if f.shape[0] < 2:
            raise ValueError(f"features: need at least 2 samples, got {f.shape[0]}")
        return cls(f.mean(0), torch.cov(f.T), f.shape[0])


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature dimensions differ: {tuple(a.mu.shape)} vs {tuple(b.mu.shape)}")
    s1 = _sqrt_psd(a.sigma)
    inner = torch.linalg.eigvalsh(s1 @ b.sigma @ s1).clamp(min=0).sqrt().sum()
    d = a.mu - b.mu
    return float(d @ d + torch.trace(a.sigma) + torch.trace(b.sigma) - 2 * inner)
