"""Pictures of anytime runs with Pillow: image grids (rows = samples, columns = updates) and GIFs.
Every file is written to a temp name in the target folder, then renamed (never half-written)."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .io import atomic_write_bytes


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [−1, 1] → (B, H, W, C) uint8, rounded."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def tile(images: Sequence[np.ndarray], rows: int, cols: int, scale: int = 1, pad: int = 2,
         background: int = 255) -> np.ndarray:
    """Tile a row-major list of (H, W, C) uint8 images into one (H', W', C) array."""
    h, w, c = images[0].shape
    H, W = h * scale, w * scale
    canvas = np.full((rows * H + (rows + 1) * pad, cols * W + (cols + 1) * pad, c), background, np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        big = im.repeat(scale, 0).repeat(scale, 1) if scale > 1 else im
        canvas[pad + r * (H + pad): pad + r * (H + pad) + H, pad + k * (W + pad): pad + k * (W + pad) + W] = big
    return canvas


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_png(arr: np.ndarray, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    _pil(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, duration_ms: int = 300,
             last_frame_ms: int = 1500) -> Path:
    pics = [_pil(f) for f in frames]
    buf = io.BytesIO()
    durations = [duration_ms] * (len(pics) - 1) + [last_frame_ms]
    pics[0].save(buf, format="GIF", save_all=True, append_images=pics[1:], duration=durations, loop=0)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def progression_grid(snapshots: Sequence[torch.Tensor], scale: int = 3) -> np.ndarray:
    """Rows: samples; columns: successive anytime updates (the seed's Fig. 10 layout, transposed)."""
    per_update = [to_uint8(s) for s in snapshots]          # each (B, H, W, C)
    B = per_update[0].shape[0]
    cells = [per_update[j][i] for i in range(B) for j in range(len(per_update))]
    return tile(cells, B, len(per_update), scale)


def row(x: torch.Tensor, scale: int = 3) -> np.ndarray:
    imgs = to_uint8(x)
    return tile(list(imgs), 1, len(imgs), scale)
