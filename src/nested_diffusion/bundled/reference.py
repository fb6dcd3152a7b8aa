"""The Fashion-MNIST reference set of the evaluations: test split (reference) and train split (held-out pool for the
FD noise floor), cached as an .npz keyed by the feature network."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..evaluation.distances import ReferenceStats, subset
from ..evaluation.reference import EvalReference, reference_from_images
from ..io import atomic_write_bytes
from .data import load_fashion_mnist


def fashion_reference(extractor: nn.Module, data_dir: str | os.PathLike | None = None, limit: int | None = None,
                      heldout: int = 10000, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                      log=None) -> EvalReference:
    """Reference: the Fashion-MNIST test split (first ``limit`` images, default all 10K), quantized as stored;
    held-out pool: ``heldout`` random train images. Features are cached in ``cache_dir`` when given."""
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
