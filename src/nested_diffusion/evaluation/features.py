"""Feature networks for distribution metrics (Fréchet distance, KID, precision/recall).

Any ``nn.Module`` works (the bundled model's classifier features live in ``bundled.features``). A Fréchet distance
on non-Inception features is *not* the Inception FID of the paper; results name the network (``extractor_id``)
and are only comparable at equal feature network and sample count. The Inception path is for users who have the weights file locally; it is
never downloaded here.

Every extractor is an ``nn.Module`` with ``num_features`` (read by torchmetrics, which then skips its dummy 299×299
pass) and ``extractor_id``; ``forward`` takes images in [−1, 1] (float) or [0, 255] (uint8) and owns all
preprocessing, as torchmetrics passes custom-module inputs through unchanged.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's port of the TF graph


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] float images → uint8 in [0, 255], rounded (what a PNG of the sample holds)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def dequantize(u: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [−1, 1], the same map as the data loader (x / 127.5 − 1)."""
    return u.float() / 127.5 - 1.0


def state_fingerprint(module: nn.Module) -> str:
    """Short SHA-256 of a module's state dict (names, shapes, values): identifies weights in cache keys."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


class PrecomputedFeatures(nn.Module):
    """Identity 'extractor' for torchmetrics when the features are already computed: (N, d) → (N, d)."""

    def __init__(self, num_features: int, extractor_id: str = "precomputed"):
        super().__init__()
        self.num_features, self.extractor_id = int(num_features), extractor_id

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if f.dim() != 2 or f.shape[1] != self.num_features:
            raise ValueError(f"features: expected shape (N, {self.num_features}), got {tuple(f.shape)}")
        return f


@torch.no_grad()
def extract_features(extractor: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Features of (N, C, H, W) images (float in [−1, 1] or uint8), in batches; float32 (N, d)."""
    if images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"images: expected a non-empty (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    if batch < 1:
        raise ValueError(f"batch: must be ≥ 1, got {batch}")
    out = [extractor(images[i:i + batch]).float().cpu() for i in range(0, images.shape[0], batch)]
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------- Inception (opt-in)
def inception_weights_path() -> Path:
    """Where torchmetrics/torch-fidelity look for the FID Inception weights: $TORCH_HOME/hub/checkpoints/."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def require_inception_weights() -> Path:
    """The local Inception weights file, or FileNotFoundError naming where to put it (nothing is downloaded)."""
    path = inception_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {path}. Place {INCEPTION_WEIGHTS_FILE} (torch-fidelity release "
            f"v0.2.0) there, or set TORCH_HOME; this library never downloads it. On a CPU-only torch, "
            f"torch-fidelity's torchvision dependency can break `import torchmetrics`: run Inception metrics on a "
            f"host with a matching torch/torchvision pair.")
    return path


def to_inception_input(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] (N, 1|3, H, W) float images → uint8 (N, 3, H, W), rounded (torchmetrics resizes to 299)."""
    u = quantize(x) if x.dtype != torch.uint8 else x
    if u.shape[1] == 1:
        u = u.repeat(1, 3, 1, 1)
    if u.shape[1] != 3:
        raise ValueError(f"images: Inception needs 1 or 3 channels, got {u.shape[1]}")
    return u
