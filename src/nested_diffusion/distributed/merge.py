"""``merge``: a finished sample folder → per NFE mark one ``.npz`` in the layout of the ADM evaluator
(guided-diffusion's ``evaluator.py``; torch-fidelity and clean-fid read the same arrays or the PNG folders):
``arr_0`` (N, H, W, 3) uint8 in sample-index order (grayscale replicated to 3 channels: the evaluator expects
RGB), and ``arr_1`` (N,) int64 class labels where the samples have classes. Files are streamed (one item in
memory at a time) to temp names and renamed; ``merged/merge.json`` is written last.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..imaging import save_png
from ..io import atomic_file, atomic_write_json
from .store import SampleStore


class NpzStream:
    """Writes ``.npy`` members of a ``.npz`` (a stored zip, like ``numpy.savez``) chunk by chunk."""

    def __init__(self, fileobj):
        self.zip = zipfile.ZipFile(fileobj, "w", zipfile.ZIP_STORED, allowZip64=True)

    def member(self, name: str, shape: Sequence[int], dtype: np.dtype):
        info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))   # no clock: same bytes on rerun
        f = self.zip.open(info, "w", force_zip64=True)
        header = dict(descr=np.lib.format.dtype_to_descr(np.dtype(dtype)), fortran_order=False,
                      shape=tuple(int(s) for s in shape))
        np.lib.format.write_array_header_1_0(f, header)
        return f

    def close(self) -> None:
        self.zip.close()


def to_nhwc_rgb(images: np.ndarray) -> np.ndarray:
    """(B, C, H, W) uint8 → (B, H, W, 3): channels last, one channel replicated to three."""
    x = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x


def merge_run(root: str | os.PathLike, png: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Write ``root/merged/nfe_XXXX.npz`` for every mark (and ``png/nfe_XXXX/iiiiii.png`` if ``png``)."""
    store = SampleStore(root)
    manifest = store.read_manifest()
    cfg = manifest["config"]
    store.require_complete(cfg)
    t0, n, items = time.perf_counter(), int(cfg["num_samples"]), store.num_items(cfg)
    first = store.read_item(0)
    _, _, c, h, w = first["images"].shape
    marks = [int(m) for m in first["marks"]]
    has_labels = "labels" in first
    out = store.root / "merged"
    out.mkdir(parents=True, exist_ok=True)
    files = {m: out / f"nfe_{m:04d}.npz" for m in marks}
    labels = []
    with ExitStack() as stack:
        streams = {m: NpzStream(stack.enter_context(atomic_file(files[m]))) for m in marks}
        members = {m: s.member("arr_0", (n, h, w, 3), np.uint8) for m, s in streams.items()}
        for b in range(items):
            part = first if b == 0 else store.read_item(b)
            for j, m in enumerate(marks):
                members[m].write(to_nhwc_rgb(part["images"][int(part["mark_index"][j])]).tobytes())
            if has_labels:
                labels.append(part["labels"])
        for m, s in streams.items():
            members[m].close()
            if has_labels:
                lab = np.concatenate(labels)
                f = s.member("arr_1", lab.shape, lab.dtype)
                f.write(np.ascontiguousarray(lab).tobytes())
                f.close()
            s.close()
    if log:
        log(f"merged {n} samples × {len(marks)} NFE marks into {out}")
    pngs = write_png_folders(store, cfg, marks, out / "png", log) if png else []
    doc = dict(config_hash=manifest["config_hash"], num_samples=n, marks=marks, image_shape=[h, w, 3],
               source_channels=int(c), labels=has_labels,
               files=[p.name for p in files.values()], png_folders=pngs, merge_s=time.perf_counter() - t0,
               layout="arr_0: (N, H, W, 3) uint8, sample-index order" + ("; arr_1: (N,) int64 labels"
                                                                        if has_labels else ""))
    atomic_write_json(out / "merge.json", doc)
    return doc


def write_png_folders(store: SampleStore, cfg: dict, marks: Sequence[int], root: Path,
                      log: Callable[[str], None] | None = None) -> list[str]:
    """One flat folder of ``iiiiii.png`` per mark, each built under a temp name and renamed into place."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = {m: Path(tempfile.mkdtemp(dir=root, prefix=f".nfe_{m:04d}.")) for m in marks}
    try:
        for b in range(store.num_items(cfg)):
            part = store.read_item(b)
            for j, m in enumerate(marks):
                rgb = part["images"][int(part["mark_index"][j])].transpose(0, 2, 3, 1)
                for i, arr in zip(part["indices"], rgb):
                    save_png(arr, tmp[m] / f"{int(i):06d}.png")
        for m in marks:
            final = root / f"nfe_{m:04d}"
            if final.exists():              # an earlier merge: swap in the new folder, then drop the old one
                old = Path(tempfile.mkdtemp(dir=root, prefix=f".old_nfe_{m:04d}."))
                os.replace(final, old / "x")
                os.replace(tmp[m], final)
                shutil.rmtree(old)
            else:
                os.replace(tmp[m], final)
    finally:
        for t in tmp.values():
            if t.exists():
                shutil.rmtree(t)
    if log:
        log(f"wrote {len(marks)} PNG folders under {root}")
    return [f"png/nfe_{m:04d}" for m in marks]
