"""Paths and loaders for the weights shipped inside the package."""
from __future__ import annotations

from pathlib import Path

import torch

from .classifier import FashionClassifier
from .unet import TinyUNet

_WEIGHTS = Path(__file__).resolve().parent / "weights"


def bundled_model_path() -> Path:
    return _WEIGHTS / "fashion-unet"


def bundled_classifier_path() -> Path:
    return _WEIGHTS / "fashion-classifier"


def load_bundled_model(device: str | torch.device = "cpu") -> TinyUNet:
    return TinyUNet.from_pretrained(bundled_model_path(), device=device)


def load_bundled_classifier(device: str | torch.device = "cpu") -> FashionClassifier:
    return FashionClassifier.from_pretrained(bundled_classifier_path(), device=device)
