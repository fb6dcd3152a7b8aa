"""The bundled FashionClassifier as the default feature network of the evaluations (128-d penultimate layer).
A Fréchet distance on these features is not Inception FID; results name the network (``extractor_id``)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..evaluation.features import dequantize, state_fingerprint
from .classifier import FashionClassifier
from .pretrained import bundled_classifier_path


class ClassifierFeatures(nn.Module):
    """Penultimate features of a FashionClassifier; always evaluated in eval mode (BatchNorm running stats),
    so a sample's features never depend on the rest of its batch."""

    def __init__(self, classifier: FashionClassifier):
        super().__init__()
        if not hasattr(classifier, "features"):
            raise TypeError(f"classifier: expected a FashionClassifier (with .features), got "
                            f"{type(classifier).__name__}")
        self.classifier = classifier.eval()
        self.num_features = int(classifier.config["feature_dim"])
        self.extractor_id = f"fashion-classifier-{self.num_features}d-{state_fingerprint(classifier)}"
        self.description = (f"project FashionClassifier, {self.num_features}-d penultimate layer "
                            f"(Fréchet distance on these features is not Inception FID)")

    def train(self, mode: bool = True) -> "ClassifierFeatures":
        return super().train(False)  # torchmetrics may call .train(); the feature network stays frozen

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features on the classifier's device; inputs on any device (moved there, outputs stay there)."""
        x = x.to(next(self.classifier.parameters()).device)
        x = dequantize(x) if x.dtype == torch.uint8 else x.float()
        self.classifier.eval()
        return self.classifier.features(x)


def load_feature_classifier(path: str | os.PathLike | None = None) -> ClassifierFeatures:
    """The bundled (or a given ``from_pretrained`` folder's) classifier as a feature extractor."""
    folder = Path(path) if path is not None else bundled_classifier_path()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"classifier: no FashionClassifier at {str(folder)!r}; train one with "
            f"`nested-diffusion train-classifier --out {folder}` or pass its folder (CLI: --classifier)")
    return ClassifierFeatures(FashionClassifier.from_pretrained(folder))
