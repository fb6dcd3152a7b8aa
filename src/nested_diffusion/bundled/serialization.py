"""``save_pretrained`` / ``from_pretrained`` in the diffusers layout: config.json + safetensors.

A folder written here loads with ``from_pretrained(path)``; weights are safetensors, the config is plain JSON,
and writes are atomic (temp file, then rename), so an interrupted save never leaves a half-written model.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_write_bytes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class PretrainedMixin:
    """Mixin for ``nn.Module`` subclasses whose ``__init__`` keyword arguments are their whole config."""

    config: dict[str, Any]
    weights_name = WEIGHTS_NAME

    def save_pretrained(self, save_directory: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        d = Path(save_directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
                 for k, v in self.state_dict().items()}
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{self.weights_name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(state, tmp, metadata={"format": "pt"})
            os.chmod(tmp, 0o644)
            os.replace(tmp, d / self.weights_name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        cfg = {"_class_name": type(self).__name__, **self.config}
        atomic_write_bytes(d / CONFIG_NAME, (json.dumps(cfg, indent=2) + "\n").encode())

    @classmethod
    def from_pretrained(cls, pretrained_model_path: str | os.PathLike, torch_dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu"):
        d = Path(pretrained_model_path)
        if not (d / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"pretrained_model_path: {str(d)!r} must be a folder holding {CONFIG_NAME} and {cls.weights_name}")
        cfg = _read_config(d / CONFIG_NAME)
        name = cfg.pop("_class_name", cls.__name__)
        if name != cls.__name__:
            raise ValueError(f"pretrained_model_path: {str(d)!r} holds a {name}, not a {cls.__name__}")
        if not (d / cls.weights_name).is_file():
            raise FileNotFoundError(f"pretrained_model_path: {str(d)!r} has no {cls.weights_name}")
        try:
            model = cls(**cfg)
        except TypeError as e:
            raise ValueError(f"{d / CONFIG_NAME}: not a {cls.__name__} config ({e})") from None
        state = _read_weights(d / cls.weights_name)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[1:2] or [str(e)]
            raise ValueError(f"{d / cls.weights_name}: the weights do not fit the {cls.__name__} of {CONFIG_NAME} "
                             f"({first[0].strip()})") from None
        return model.to(device=device, dtype=torch_dtype).eval()


def _read_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the file is damaged — restore or re-save the model") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object of model settings, got {type(cfg).__name__}")
    return cfg


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated or corrupt file is one clear error naming it."""
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises SafetensorError (and OSError for unreadable files)
        size = path.stat().st_size
        raise ValueError(f"{path}: not a readable safetensors file ({size} bytes; {e}); it is truncated or "
                         f"damaged — restore it (e.g. reinstall the package) or re-save the model") from None
