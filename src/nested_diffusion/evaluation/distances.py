"""Distribution distances on features: Fréchet distance, KID (torchmetrics), k-NN precision/recall, noise floor,
bootstrap spread, and reference statistics stored as the usual mu/sigma ``.npz``.

FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{½} Σ₂ Σ₁^{½})^{½} (Heusel et al. 2017). ``FrechetToReference`` is the same
formula as ``frechet.frechet_distance`` with the reference square root computed once and batched over many
generated-feature statistics (the bootstrap); tests check both against torchmetrics.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..io import atomic_write_bytes
from .features import PrecomputedFeatures, require_inception_weights
from .frechet import FeatureStats, FrechetToReference

EVAL_EXTRA_HINT = "install the evaluation extra: pip install 'nested-diffusion[eval]' (torchmetrics, matplotlib)"


def _torchmetrics_image():
    try:
        from torchmetrics.image import fid, kid
    except ImportError as e:  # e.g. torch-fidelity installed beside a broken torchvision (see docs)
        raise ImportError(f"torchmetrics could not be imported ({e}); {EVAL_EXTRA_HINT}") from e
    return fid, kid


# ------------------------------------------------------------------------------------------- reference statistics
@dataclass
class ReferenceStats:
    """Gaussian statistics of a reference feature set; ``extractor_id`` guards against mixing feature networks."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None
    extractor_id: str = ""

    def to_feature_stats(self) -> FeatureStats:
        return FeatureStats(torch.from_numpy(self.mu), torch.from_numpy(self.sigma), self.n or 0)

    @classmethod
    def from_features(cls, f: torch.Tensor, extractor_id: str = "") -> "ReferenceStats":
        s = FeatureStats.from_features(f)
        return cls(s.mu.numpy(), s.sigma.numpy(), s.n, extractor_id)


def save_reference_stats(path: str | os.PathLike, stats: ReferenceStats) -> Path:
    """Write mu, sigma (float64), n and extractor_id to an .npz, atomically."""
    buf = io.BytesIO()
    np.savez(buf, mu=np.asarray(stats.mu, np.float64), sigma=np.asarray(stats.sigma, np.float64),
             n=np.int64(-1 if stats.n is None else stats.n), extractor_id=np.str_(stats.extractor_id))
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_reference_stats(path: str | os.PathLike, expected_extractor_id: str | None = None) -> ReferenceStats:
    """Any .npz with ``mu`` and ``sigma`` (ADM, pytorch-fid, clean-fid, ours); cast to float64.
    A file that names a different extractor than ``expected_extractor_id`` is refused."""
    with np.load(Path(path), allow_pickle=False) as z:
        missing = [k for k in ("mu", "sigma") if k not in z.files]
        if missing:
            raise ValueError(f"reference stats {str(path)!r}: missing {missing}; the file has {sorted(z.files)}")
        mu, sigma = z["mu"].astype(np.float64).reshape(-1), z["sigma"].astype(np.float64)
        n = int(z["n"]) if "n" in z.files and int(z["n"]) >= 0 else None
        ext = str(z["extractor_id"]) if "extractor_id" in z.files else ""
    if sigma.shape != (mu.size, mu.size):
        raise ValueError(f"reference stats {str(path)!r}: sigma shape {sigma.shape} does not match mu ({mu.size},)")
    if expected_extractor_id is not None and ext and ext != expected_extractor_id:
        raise ValueError(f"reference stats {str(path)!r} were computed with {ext!r}, not {expected_extractor_id!r}")
    return ReferenceStats(mu, sigma, n, ext)


# ----------------------------------------------------------------------------------------- torchmetrics metrics
def make_fd_metric(extractor: "nn.Module | str", reference: ReferenceStats | None = None):
    """torchmetrics ``FrechetInceptionDistance`` on a custom feature module (or ``"inception"`` with local
    weights), keeping the real statistics across ``reset()``. ``reference`` injects precomputed mu/sigma/n
    (Σf = nμ, Σfᵀf = (n−1)Σ + nμμᵀ), so only generated images need ``update(x, real=False)``."""
    fid, _ = _torchmetrics_image()
    if isinstance(extractor, str):
        if extractor != "inception":
            raise ValueError(f"extractor: {extractor!r} is not valid; pass an nn.Module or 'inception'")
        path = require_inception_weights()
        metric = fid.FrechetInceptionDistance(feature=2048, reset_real_features=False,
                                              feature_extractor_weights_path=str(path))
    else:
        if not hasattr(extractor, "num_features"):
            raise TypeError("extractor: needs a num_features attribute (else torchmetrics runs a 299×299 probe)")
        metric = fid.FrechetInceptionDistance(feature=extractor, reset_real_features=False)
    if reference is not None:
        if reference.n is None or reference.n < 2:
            raise ValueError(f"reference: needs its sample count n ≥ 2 to inject sums, got n={reference.n}")
        mu = torch.as_tensor(reference.mu, dtype=torch.float64)
        sig = torch.as_tensor(reference.sigma, dtype=torch.float64)
        if mu.numel() != metric.real_features_sum.numel():
            raise ValueError(f"reference: {mu.numel()}-d stats for a {metric.real_features_sum.numel()}-d extractor")
        n = reference.n
        metric.real_features_sum = n * mu
        metric.real_features_cov_sum = (n - 1) * sig + n * torch.outer(mu, mu)
        metric.real_features_num_samples = torch.tensor(n, dtype=metric.real_features_num_samples.dtype)
    return metric


def make_kid_metric(extractor: "nn.Module | str", subsets: int = 100, subset_size: int = 1000):
    """torchmetrics ``KernelInceptionDistance`` (unbiased MMD², kernel (xᵀy/d + 1)³) on a custom module or
    ``"inception"`` (hub cache only: KID has no weights-path argument)."""
    _, kid = _torchmetrics_image()
    if isinstance(extractor, str):
        if extractor != "inception":
            raise ValueError(f"extractor: {extractor!r} is not valid; pass an nn.Module or 'inception'")
        require_inception_weights()
        return kid.KernelInceptionDistance(feature=2048, subsets=subsets, subset_size=subset_size,
                                           reset_real_features=False)
    return kid.KernelInceptionDistance(feature=extractor, subsets=subsets, subset_size=subset_size,
                                       reset_real_features=False)


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """KID mean and std over ``subsets`` random subsets of min(subset_size, N_real, N_fake) samples, through
    torchmetrics on precomputed features. Seeded without touching the global RNG state."""
    size = min(int(subset_size), real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError(f"features: KID needs ≥ 2 samples per side, got {real.shape[0]} real, {fake.shape[0]} fake")
    with warnings.catch_warnings():  # "will save all extracted features": intended, they are already in memory
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = make_kid_metric(PrecomputedFeatures(real.shape[1]), subsets, size)
    metric.update(real.float(), real=True)
    metric.update(fake.float(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def weighted_stats(f: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of features f (N, d) resampled with integer counts (R, N) → (R, d), (R, d, d)."""
    f = f.to(torch.float64)
    c = counts.to(torch.float64)
    n = c.sum(-1, keepdim=True)                                   # (R, 1)
    mu = (c @ f) / n
    second = torch.cat([(c[i:i + 16, :, None] * f).transpose(1, 2) @ f  # 16 replicates at a time (memory)
                        for i in range(0, c.shape[0], 16)])
    cov = (second - n[..., None] * mu[:, :, None] * mu[:, None, :]) / (n[..., None] - 1)
    return mu, cov


def bootstrap_counts(n: int, replicates: int, seed: int) -> torch.Tensor:
    """(R, n) multiplicities of a resampling with replacement; reuse the same counts across configurations
    (paired seeds), so differences between configurations are not inflated by independent resampling."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (replicates, n), generator=g)
    return torch.zeros(replicates, n, dtype=torch.int64).scatter_add_(1, idx, torch.ones_like(idx))


def fd_noise_floor(fd: FrechetToReference, heldout: torch.Tensor, n: int, repeats: int = 5,
                   seed: int = 0) -> dict:
    """FD of ``repeats`` random n-sample subsets of real held-out features to the reference: the value a perfect
    generator would get at this sample count (the small-N bias floor)."""
    if heldout.shape[0] < n:
        raise ValueError(f"heldout: need at least n={n} held-out real samples for the noise floor, "
                         f"got {heldout.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    vals = [fd.of_features(heldout[torch.randperm(heldout.shape[0], generator=g)[:n]]) for _ in range(repeats)]
    t = torch.tensor(vals, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if repeats > 1 else 0.0, "values": vals, "n": n,
            "pool": int(heldout.shape[0])}


# ------------------------------------------------------------------------------------------ precision / recall
def _knn_radii(f: torch.Tensor, k: int, batch: int = 1024) -> torch.Tensor:
    out = []
    for i in range(0, f.shape[0], batch):
        d = torch.cdist(f[i:i + batch], f)
        out.append(d.kthvalue(k + 1, dim=1).values)  # k+1: the point itself is at distance 0
    return torch.cat(out)


def _covered(query: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    out = []
    for i in range(0, query.shape[0], batch):
        d = torch.cdist(query[i:i + batch], support)
        out.append((d <= radii[None]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict:
    """Improved precision/recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls reaching
    every point's k-th nearest neighbour. Precision: fraction of fakes inside the real manifold; recall: fraction
    of reals inside the fake manifold. Use equal set sizes (radii shrink with N)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: must be an integer ≥ 1, got {k!r}")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"features: need more than k={k} samples per set, got {real.shape[0]} real, "
                         f"{fake.shape[0]} fake")
    real, fake = real.to(torch.float64), fake.to(torch.float64)
    prec = _covered(fake, real, _knn_radii(real, k)).double().mean()
    rec = _covered(real, fake, _knn_radii(fake, k)).double().mean()
    return {"precision": float(prec), "recall": float(rec), "k": k, "n_real": real.shape[0], "n_fake": fake.shape[0]}


def subset(f: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A seeded random n-row subset (all rows when n ≥ N)."""
    if n >= f.shape[0]:
        return f
    g = torch.Generator().manual_seed(seed)
    return f[torch.randperm(f.shape[0], generator=g)[:n]]


def percentile_interval(values: Sequence[float], level: float = 0.95) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    lo = (1 - level) / 2
    return [float(np.quantile(v, lo)), float(np.quantile(v, 1 - lo))]
