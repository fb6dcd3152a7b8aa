"""Reference sets for distribution metrics: features + Gaussian stats of real images, and a held-out real pool
for the noise floor (the bundled model's Fashion-MNIST reference is ``bundled.reference``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .distances import ReferenceStats
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
