"""The sample folder: a manifest (the configuration and its hash) and one atomic file per work item.

    OUT/manifest.json                      configuration, its hash, the item layout
    OUT/items/BBB/bbbbbb.npz               item b: samples [b·batch, (b+1)·batch) ∩ [0, N), every NFE mark
    OUT/logs/<host>-<pid>-rank<r>of<w>.jsonl   one line per item this process computed (appended after the write)
    OUT/merged/                            written by ``merge``

An item is done when its file exists (files are written to a temp name, then renamed: never half-written).
Nothing is ever deleted: a rerun skips done items. An item holds the distinct anytime results of its samples
(``images``: (D, B, C, H, W) uint8) and, per NFE mark, which of them was current (``mark_index``).
"""
from __future__ import annotations

import hashlib
import zipfile
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..evaluation.snapshots import Snapshots
from ..io import atomic_save_npz, atomic_write_bytes, atomic_write_json

FORMAT = 1


class ConfigMismatchError(ValueError):
    """The folder was made by a different configuration."""


class IncompleteRunError(RuntimeError):
    """Some work items are missing."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(doc: Any, prefix: str = "") -> dict:
    """{'a': {'b': 1}} → {'a.b': 1} (lists stay values)."""
    if not isinstance(doc, dict):
        return {prefix: doc}
    out: dict = {}
    for k, v in doc.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differing_keys(old: dict, new: dict) -> list[str]:
    a, b = flatten(json.loads(json.dumps(old, default=str))), flatten(json.loads(json.dumps(new, default=str)))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


class SampleStore:
    """One run's folder. ``config`` must hold ``num_samples`` and ``batch_size`` (the item layout)."""

    def __init__(self, root: str | os.PathLike, option: str = "--out-dir"):
        self.root = Path(root)
        self.option = option          # the command-line option that named the folder (its errors name it)
        self.manifest_path = self.root / "manifest.json"

    # ------------------------------------------------------------------------------------------- manifest
    def read_manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise FileNotFoundError(f"{self.option}: {str(self.root)!r} holds no manifest.json; it is not a sample "
                                    f"folder made by `nested-diffusion sample`")
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.option}: {str(self.manifest_path)!r} is damaged ({e}); restore it or sample into a "
                             f"new --out-dir") from None

    def open(self, config: dict, extra: dict | None = None) -> dict:
        """Create the folder and its manifest, or check that an existing one has the same configuration."""
        digest = config_hash(config)
        if self.manifest_path.is_file():
            old = self.read_manifest()
            if old.get("config_hash") != digest:
                keys = differing_keys(old.get("config", {}), config)
                flat_old, flat_new = flatten(old.get("config", {})), flatten(config)
                shown = ", ".join(f"{k} ({flat_old.get(k, '<absent>')!r} → {flat_new.get(k, '<absent>')!r})"
                                  for k in keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
                raise ConfigMismatchError(
                    f"{self.option}: {str(self.root)!r} holds samples of another configuration (hash "
                    f"{old.get('config_hash')}, this command {digest}); differing: {shown or 'format'}. Rerun "
                    f"with the original settings to resume, or use a new --out-dir")
            return old
        (self.root / "items").mkdir(parents=True, exist_ok=True)
        doc = dict(format=FORMAT, config_hash=digest, config=config, num_items=self.num_items(config),
                   layout="items/BBB/bbbbbb.npz: item b holds samples [b*batch_size, (b+1)*batch_size)",
                   **(extra or {}))
        if not self.manifest_path.is_file():  # every rank may get here at once: they write the same config
            atomic_write_json(self.manifest_path, doc)
        return self.open(config)

    # ---------------------------------------------------------------------------------------------- items
    @staticmethod
    def num_items(config: dict) -> int:
        return -(-int(config["num_samples"]) // int(config["batch_size"]))

    @staticmethod
    def indices(config: dict, item: int) -> list[int]:
        b, n = int(config["batch_size"]), int(config["num_samples"])
        return list(range(item * b, min(n, (item + 1) * b)))

    def item_path(self, item: int) -> Path:
        return self.root / "items" / f"{item // 1000:03d}" / f"{item:06d}.npz"

    def checksum_path(self, item: int) -> Path:
        return self.item_path(item).with_suffix(".sha256")

    def is_done(self, item: int) -> bool:
        """The item's file exists and its bytes still have the SHA-256 written beside it (a damaged or truncated
        item, or one without its checksum, counts as not done: a rerun recomputes it)."""
        path, check = self.item_path(item), self.checksum_path(item)
        if not path.is_file():
            return False
        if not check.is_file():  # a folder from before checksums: accept an item that reads whole, and stamp it
            try:
                with np.load(path) as z:
                    for k in z.files:
                        z[k]  # reading a member checks its CRC-32
            except (OSError, ValueError, EOFError, zipfile.BadZipFile):
                return False
            atomic_write_bytes(check, (file_sha256(path) + "\n").encode())
            return True
        return file_sha256(path) == check.read_text(encoding="utf-8").strip()

    def missing(self, config: dict) -> list[int]:
        return [b for b in range(self.num_items(config)) if not self.is_done(b)]

    def write_item(self, item: int, snaps: Snapshots, indices: Sequence[int], labels: Sequence[int] | None) -> Path:
        path = self.item_path(item)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = dict(images=torch.stack(snaps.images).numpy(), mark_index=np.asarray(snaps.mark_index, np.int64),
                      marks=np.asarray(snaps.marks, np.int64), update_nfes=np.asarray(snaps.update_nfes, np.int64),
                      sources=np.asarray(snaps.sources, dtype=str), indices=np.asarray(indices, np.int64),
                      seeds=np.asarray(snaps.seeds, np.int64))
        if labels is not None:
            arrays["labels"] = np.asarray(labels, np.int64)
        atomic_save_npz(path, **arrays)
        atomic_write_bytes(self.checksum_path(item), (file_sha256(path) + "\n").encode())  # after the item: a
        return path                                          # crash between the two leaves it "not done"

    def read_item(self, item: int) -> dict:
        path = self.item_path(item)
        if not self.is_done(item):
            raise ValueError(f"{self.option}: {str(path)!r}: the item is damaged or incomplete (its bytes do not match the checksum "
                             f"written with it); rerun the sample command to recompute it")
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{self.option}: {str(path)!r}: cannot read the item ({e}); rerun the sample command to recompute "
                             f"it") from None

    # ----------------------------------------------------------------------------------------------- logs
    def log_path(self, rank: int, world: int) -> Path:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        return self.root / "logs" / f"{socket.gethostname()}-{os.getpid()}-rank{rank}of{world}.jsonl"

    @staticmethod
    def log_item(path: Path, item: int, indices: Sequence[int], seconds: float) -> None:
        line = json.dumps(dict(item=item, first=indices[0], last=indices[-1], seconds=round(seconds, 4),
                               time=time.time())) + "\n"
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)

    def computed_log(self) -> list[dict]:
        """Every line of every process's log: which items were computed (a rerun's skipped items are absent)."""
        rows = []
        for p in sorted((self.root / "logs").glob("*.jsonl")):
            rows += [json.loads(s) for s in p.read_text(encoding="utf-8").splitlines() if s.strip()]
        return rows

    # ----------------------------------------------------------------------------------------- read back
    def require_complete(self, config: dict) -> None:
        miss = self.missing(config)
        if miss:
            n_miss = sum(len(self.indices(config, b)) for b in miss)
            first = ", ".join(str(b) for b in miss[:10]) + (", …" if len(miss) > 10 else "")
            raise IncompleteRunError(
                f"{self.option}: {str(self.root)!r} is incomplete: {len(miss)} of {self.num_items(config)} items missing "
                f"({n_miss} of {config['num_samples']} samples; items {first}). Rerun the sample command (any "
                f"number of processes) to finish them")

    @staticmethod
    def item_snapshots(part: dict) -> Snapshots:
        """One item's file as ``Snapshots`` (images: D distinct results, each (B, C, H, W) uint8)."""
        return Snapshots([torch.from_numpy(x) for x in part["images"]], part["mark_index"].tolist(),
                         part["marks"].tolist(), part["update_nfes"].tolist(), [str(v) for v in part["sources"]],
                         part["seeds"].tolist(), {})

    def iter_items(self) -> Iterator[Snapshots]:
        """Every item of a complete run, in sample order, one file in memory at a time."""
        cfg = self.read_manifest()["config"]
        self.require_complete(cfg)
        for b in range(self.num_items(cfg)):
            yield self.item_snapshots(self.read_item(b))

    def snapshots(self) -> tuple[Snapshots, np.ndarray | None]:
        """The whole run as one ``Snapshots`` (samples in index order) and the class labels (or None)."""
        cfg = self.read_manifest()["config"]
        self.require_complete(cfg)
        parts = [self.read_item(b) for b in range(self.num_items(cfg))]
        first = parts[0]
        for b, p in enumerate(parts):
            if not (np.array_equal(p["mark_index"], first["mark_index"])
                    and np.array_equal(p["update_nfes"], first["update_nfes"])):
                raise ValueError(f"item {b}: its NFE marks or updates differ from item 0's; the folder is damaged")
        merged = dict(first, images=np.concatenate([p["images"] for p in parts], axis=1),
                      seeds=np.concatenate([p["seeds"] for p in parts]))
        labels = np.concatenate([p["labels"] for p in parts]) if "labels" in first else None
        return self.item_snapshots(merged), labels
