"""Fashion-MNIST from the standard IDX files (Debian package ``dataset-fashion-mnist`` or any folder)."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
HOW_TO_GET = ("install it with `sudo apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), or download the four "
              "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist (data/fashion) into a folder "
              "and pass it as root= (CLI: --data-dir) or set NESTED_DIFFUSION_DATA")


class IDXFormatError(ValueError):
    """An IDX file that is truncated, has a wrong magic number or inconsistent dimensions."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes into a numpy array."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise IDXFormatError(f"{path}: not a readable (gzipped) IDX file: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise IDXFormatError(f"{path}: bad IDX magic number {raw[:4].hex()!r} (expected 000008 + ndim, uint8 data)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise IDXFormatError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise IDXFormatError(f"{path}: IDX dimensions {dims} need {expected} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_data_dir(root: str | os.PathLike | None = None) -> Path:
    candidates = [root] if root is not None else [os.environ.get("NESTED_DIFFUSION_DATA"), DEFAULT_DIR]
    for c in candidates:
        if c and all(_locate(Path(c), n) for pair in _FILES.values() for n in pair):
            return Path(c)
    where = str(root) if root is not None else f"$NESTED_DIFFUSION_DATA or {DEFAULT_DIR}"
    raise FileNotFoundError(f"Fashion-MNIST not found in {where}: {HOW_TO_GET}")


def _locate(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None,
                       as_uint8: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images, labels): images (N, 1, 28, 28) float32 in [−1, 1] (or uint8), labels (N,) int64."""
    if split not in _FILES:
        raise ValueError(f"split: {split!r} is not valid; use 'train' or 'test'")
    folder = find_data_dir(root)
    img_stem, lab_stem = _FILES[split]
    images = read_idx(_locate(folder, img_stem))
    labels = read_idx(_locate(folder, lab_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise IDXFormatError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    if as_uint8:
        return x, y
    return x.float() / 127.5 - 1.0, y
