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


def sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric PSD matrix (negative eigenvalues from round-off clamped to 0)."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


class FrechetToReference:
    """FD of many generated-feature statistics to one reference (√Σ_ref computed once; float64; batched over
    leading dimensions, e.g. bootstrap resamples). ``reference``: FeatureStats or anything with
    ``to_feature_stats()`` (``distances.ReferenceStats``)."""

    def __init__(self, reference):
        stats = reference.to_feature_stats() if hasattr(reference, "to_feature_stats") else reference
        self.mu = stats.mu.to(torch.float64)
        self.sigma = stats.sigma.to(torch.float64)
        self.sqrt = sqrt_psd(self.sigma)
        self.trace = float(torch.trace(self.sigma))

    def __call__(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """mu (..., d), sigma (..., d, d) → FD (...)."""
        mu, sigma = mu.to(torch.float64), sigma.to(torch.float64)
        if mu.shape[-1] != self.mu.shape[0]:
            raise ValueError(f"feature dimensions differ: {mu.shape[-1]} vs reference {self.mu.shape[0]}")
        m = self.sqrt @ sigma @ self.sqrt
        inner = torch.linalg.eigvalsh((m + m.transpose(-1, -2)) / 2).clamp(min=0).sqrt().sum(-1)
        d = mu - self.mu
        return (d * d).sum(-1) + self.trace + torch.diagonal(sigma, dim1=-2, dim2=-1).sum(-1) - 2 * inner

    def of_features(self, f: torch.Tensor) -> float:
        s = FeatureStats.from_features(f)
        return float(self(s.mu, s.sigma))


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """FD between two Gaussians (the one formula, ``FrechetToReference``, with ``a`` as the reference)."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature dimensions differ: {tuple(a.mu.shape)} vs {tuple(b.mu.shape)}")
    return float(FrechetToReference(a)(b.mu, b.sigma))
