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
        cfg = json.loads((d / CONFIG_NAME).read_text())
        name = cfg.pop("_class_name", cls.__name__)
        if name != cls.__name__:
            raise ValueError(f"pretrained_model_path: {str(d)!r} holds a {name}, not a {cls.__name__}")
        if not (d / cls.weights_name).is_file():
            raise FileNotFoundError(f"pretrained_model_path: {str(d)!r} has no {cls.weights_name}")
        model = cls(**cfg)
        model.load_state_dict(load_file(d / cls.weights_name), strict=True)
        return model.to(device=device, dtype=torch_dtype).eval()
