"""Render-ready pictures and words for a front end: uint8 RGB tiles of a batch, the progression strip, the GIF,
the status line and the expected-change wording. Pure numpy/Pillow; no web framework."""
from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..core.events import INNER_RESULT
from ..imaging import tile, to_uint8

SOURCE_WORDS = {INNER_RESULT: "finished inner run", "x0_preview": "x̂0 preview"}


def model_to_rgb(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) model-space pixels in [−1, 1] → (B, H, W, 3) uint8 (grey images repeated to RGB)."""
    arr = to_uint8(x)
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr[..., :3]


def unit_to_rgb(images: Any) -> np.ndarray:
    """Pipeline output images (B, H, W, 3) floats in [0, 1] (numpy, ``output_type="np"``) → uint8."""
    arr = np.asarray(images, dtype=np.float32)
    return (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def batch_tile(images: np.ndarray, scale: int = 1) -> np.ndarray:
    """(B, H, W, 3) uint8 → one (H', W', 3) row of the batch, each image upscaled ``scale``× (nearest)."""
    return tile(list(images), 1, len(images), scale)


def pick_frames(frames: Sequence[np.ndarray], most: int = 12) -> list[np.ndarray]:
    """At most ``most`` frames, evenly spread, always ending with the last one."""
    if len(frames) <= most:
        return list(frames)
    idx = np.unique(np.linspace(0, len(frames) - 1, most).round().astype(int))
    return [frames[i] for i in idx]


def progression_strip(frames: Sequence[np.ndarray], scale: int = 1, most: int = 12) -> np.ndarray:
    """Rows: samples; columns: successive anytime results (each frame is a (B, H, W, 3) uint8 batch)."""
    chosen = pick_frames(frames, most)
    batch = chosen[0].shape[0]
    cells = [f[i] for i in range(batch) for f in chosen]
    return tile(cells, batch, len(chosen), scale)


def gif_bytes(frames: Sequence[np.ndarray], scale: int = 1, duration_ms: int = 250,
              last_frame_ms: int = 1500) -> bytes:
    """An animated GIF of the run: one batch row per frame, the last one held longer."""
    pics = [Image.fromarray(batch_tile(f, scale)) for f in frames]
    buf = io.BytesIO()
    durations = [duration_ms] * (len(pics) - 1) + [last_frame_ms]
    pics[0].save(buf, format="GIF", save_all=True, append_images=pics[1:], duration=durations, loop=0)
    return buf.getvalue()


NO_CALIBRATION_WORDS = "Expected change: no calibration for this configuration"


def _values(ec: Any, i: int) -> str:
    """' (pixel RMSE ≈ 0.041, semantic ≈ 0.0123, flip 4%)' for sample i of an ``ExpectedChange``, '' otherwise."""
    sample = getattr(ec, "sample", None)
    if not callable(sample):
        return ""
    s = sample(i)
    flip = "" if s.get("flip") is None else f", flip {100 * s['flip']:.0f}%"
    return f" (pixel RMSE ≈ {s['rmse']:.3f}, semantic ≈ {s['semantic']:.4f}{flip})"


def expected_change_words(info: Any, batch: int, calibrated: bool = True) -> str | None:
    """The expected-change line of an update: per shown image its wording and predicted values
    (``ExpectedChange.wording`` / ``sample``; objects with ``wordings`` give the words only). ``calibrated``
    False (no calibration matches the job's configuration): ``NO_CALIBRATION_WORDS``; None (show nothing) when
    a calibration is attached but this update carries no prediction."""
    ec = getattr(info, "expected_change", None)
    if ec is None:
        return None if calibrated else NO_CALIBRATION_WORDS
    if callable(getattr(ec, "wording", None)):
        words = [str(ec.wording(i)) + _values(ec, i) for i in range(batch)]
    elif getattr(ec, "wordings", None) is not None:
        words = [str(w) for w in ec.wordings]
    else:
        return None
    if len(words) == 1:
        return f"Expected change: {words[0]}"
    return "Expected change: " + " · ".join(f"{i + 1}: {w}" for i, w in enumerate(words))
