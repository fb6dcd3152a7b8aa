"""Files, written so that nothing is ever left half-written: every write goes to a temp file in the target
folder, then ``os.replace`` (atomic on POSIX). Run records (JSON) and tensors (``torch.save``) use the same path.
"""
from __future__ import annotations

import io as _io
import json
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (readable 0644); returns the path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; published files should be readable
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, doc: Any) -> Path:
    """A JSON run record (indented, newline-terminated), atomically."""
    return atomic_write_bytes(path, (json.dumps(doc, indent=1) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically."""
    buf = _io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_save_npz(path: str | os.PathLike, **arrays) -> Path:
    """``numpy.savez`` atomically (uncompressed, as the ADM evaluator and most FID tools expect)."""
    import numpy as np
    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


class ChunkCache:
    """A folder of resumable chunks (the one cache of every long job: evaluation snapshots, Table 2, the quality
    gate). Each chunk is one ``torch.save`` file written atomically, so a finished chunk is never recomputed and an
    interrupted job resumes by rerunning it. ``settings`` (JSON-able) are written to ``settings.json`` on first use
    and must match on every later use: a folder made with other settings is refused, never mixed."""

    SETTINGS = "settings.json"

    def __init__(self, folder: str | os.PathLike, settings: Any = None, arg: str = "cache_dir"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if settings is not None:
            canonical = json.loads(json.dumps(settings, default=str))
            path = self.folder / self.SETTINGS
            if path.is_file():
                if json.loads(path.read_text()) != canonical:
                    raise ValueError(f"{arg}: {self.folder} holds results made with other settings; use another "
                                     f"{arg} (or delete it)")
            else:
                atomic_write_json(path, canonical)
        self.computed, self.loaded = 0, 0

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.pt"

    def load(self, name: str) -> Any | None:
        """The stored chunk, or None when it is missing or unreadable (a truncated file is recomputed)."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # cannot be half-written by us, but a full disk or a copy may truncate it
            return None

    def save(self, name: str, value: Any) -> Path:
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_torch_save(value, path)

    def get(self, name: str, compute) -> tuple[Any, bool]:
        """(chunk, computed): the stored chunk, or ``compute()`` saved under ``name``."""
        value = self.load(name)
        if value is not None:
            self.loaded += 1
            return value, False
        value = compute()
        self.save(name, value)
        self.computed += 1
        return value, True


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to stream into (for outputs too large to hold in memory); it appears at ``path`` only when
    the ``with`` block ends without an exception (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _Deferred:
    interrupted = False


@contextmanager
def interrupts_deferred() -> Iterator[_Deferred]:
    """Ctrl+C (SIGINT) inside the block is remembered, not raised, so a set of files is written whole; the
    yielded object's ``interrupted`` says whether one came. Outside the main thread it changes nothing."""
    state = _Deferred()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = signal.getsignal(signal.SIGINT)

    def remember(signum, frame):
        state.interrupted = True
    signal.signal(signal.SIGINT, remember)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
