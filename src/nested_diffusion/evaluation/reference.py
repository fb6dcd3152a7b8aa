"""Reference sets for distribution metrics: features + Gaussian stats of real images, and a held-out real pool
for the noise floor. ``fashion_reference`` uses the Fashion-MNIST test split (reference) and train split
(held-out), cached as an .npz keyed by the feature network."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io import atomic_write_bytes
from .distances import ReferenceStats, subset
from .features import extract_features


@dataclass
class EvalReference:
    extractor: nn.Module            # has num_features, extractor_id
    stats: ReferenceStats
    features: torch.Tensor          # (N_ref, d) reference features (KID, precision/recall)
    heldout: torch.Tensor | None    # (N_h, d) other real features, for the FD noise floor
    description: str = ""

    def info(self) -> dict:
        return dict(description=self.description, n=int(self.features.shape[0]),
                    heldout_n=None if self.heldout is None else int(self.heldout.shape[0]),
                    extractor_id=self.stats.extractor_id)


def reference_from_images(extractor: nn.Module, images: torch.Tensor, heldout_images: torch.Tensor | None = None,
                          description: str = "") -> EvalReference:
    """Features of real images (float in [−1, 1] or uint8) through ``extractor``."""
    ext_id = getattr(extractor, "extractor_id", type(extractor).__name__)
    f = extract_features(extractor, images)
    h = extract_features(extractor, heldout_images) if heldout_images is not None else None
    return EvalReference(extractor, ReferenceStats.from_features(f, ext_id), f, h, description)


def fashion_reference(extractor: nn.Module, data_dir: str | os.PathLike | None = None, limit: int | None = None,
                      heldout: int = 10000, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                      log=None) -> EvalReference:
    """Reference: the Fashion-MNIST test split (first ``limit`` images, default all 10K), quantized as stored;
    held-out pool: ``heldout`` random train images. Features are cached in ``cache_dir`` when given."""
    from ..bundled.data import load_fashion_mnist
    ext_id = getattr(extractor, "extractor_id", type(extractor).__name__)
    name = f"reference-{ext_id}-test{limit or 'all'}-train{heldout}-s{seed}.npz"
    path = Path(cache_dir) / name if cache_dir is not None else None
    desc = (f"Fashion-MNIST test split ({'all' if limit is None else limit} images); noise-floor pool: {heldout} "
            f"random train images (seed {seed})")
    if path is not None and path.is_file():
        with np.load(path) as z:
            f, h = torch.from_numpy(z["features"]), torch.from_numpy(z["heldout"])
        return EvalReference(extractor, ReferenceStats.from_features(f, ext_id), f, h, desc)
    xt, _ = load_fashion_mnist("test", data_dir, as_uint8=True)
    xt = xt[:limit] if limit else xt
    xtr, _ = load_fashion_mnist("train", data_dir, as_uint8=True)
    xtr = subset(xtr, heldout, seed)
    if log:
        log(f"reference features: {len(xt)} test + {len(xtr)} train images")
    ref = reference_from_images(extractor, xt, xtr, desc)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, features=ref.features.numpy(), heldout=ref.heldout.numpy(), mu=ref.stats.mu,
                 sigma=ref.stats.sigma, n=np.int64(ref.stats.n), extractor_id=np.str_(ext_id))
        atomic_write_bytes(path, buf.getvalue())
    return ref
