"""Expected change for the bundled model: its identity in a calibration, the shipped calibration files
(``bundled/calibrations/*.json``, made by ``nested-diffusion calibrate``) and how ``generate`` picks one."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..core.expected_change import Calibration, config_hash
from ..core.expected_change import resolve_calibration as resolve
from ..core.nested import NestedSampler

CALIBRATIONS_DIR = Path(__file__).parent / "calibrations"


def model_identity(unet: torch.nn.Module, guidance: float) -> dict:
    """What identifies the denoiser in a calibration's configuration: the UNet's weights and the CFG scale."""
    from ..evaluation.features import state_fingerprint
    return {"weights": state_fingerprint(unet), "guidance": float(guidance)}


def classifier_feature_function(path: str | os.PathLike | None = None):
    """The bundled (or a given) classifier as the feature function of the feature signals, and its id."""
    from ..evaluation.expected_change import classifier_signals
    from .features import load_feature_classifier
    fx = load_feature_classifier(path)
    return classifier_signals(fx.classifier), fx.extractor_id


def shipped_calibrations() -> list[Path]:
    return sorted(CALIBRATIONS_DIR.glob("*.json"))


def find_shipped(sampler_settings: dict, model: dict, signals: str = "pixel") -> Path | None:
    """The shipped calibration file made for exactly this configuration with these signals, if any."""
    want = f"-{signals}-{config_hash({'sampler': sampler_settings, 'model': model})}"
    for path in shipped_calibrations():
        if path.stem.endswith(want):
            return path
    return None


def resolve_calibration(choice: str, sampler: "NestedSampler | dict", unet: torch.nn.Module,
                        guidance: float) -> Calibration | None:
    """``choice``: "auto" (the shipped pixel-signal calibration of this configuration, or None when there is
    none: ≈ 1% more time), "feature" (the shipped calibration with classifier signals: better semantic and flip
    predictions, ≈ 7% more time on the demo), "none", or a calibration file (ValueError if it was made for another
    configuration) — through the one resolver, ``core.expected_change.resolve_calibration``. ``sampler``: the
    sampler, or its settings (``core.nested.calibration_settings`` of a run)."""
    settings = sampler if isinstance(sampler, dict) else sampler.calibration_settings()
    cal = resolve(choice, settings, lambda: model_identity(unet, guidance), find_shipped, option="--calibration")
    if cal is not None and cal.uses_feature_signals() and cal.features is None:
        cal.features = classifier_feature_function()[0]
    return cal

