"""argparse value types that reject bad input with one clear message naming the option."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

ETA_RULES = ("sqrt_one_minus_alpha_bar",)


def int_at_least(name: str, low: int = 1):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected an integer, got {s!r}")
        if v < low:
            raise argparse.ArgumentTypeError(f"{name}: must be ≥ {low}, got {v}")
        return v
    return parse


def nonneg_float(name: str):
    """A number ≥ 0; options whose name ends in 'eta' also take the rule 'sqrt_one_minus_alpha_bar'."""
    def parse(s: str):
        if name.endswith("eta") and s in ETA_RULES:
            return s
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a number, got {s!r}")
        if not v >= 0:
            raise argparse.ArgumentTypeError(f"{name}: must be ≥ 0, got {v}")
        return v
    return parse


def solver_choices(kind: str | None = "vp") -> tuple[str, ...]:
    """Registered inner solvers of ``kind`` (None: every kind), read when a parser is built."""
    from ..core.registry import solver_names
    return solver_names(kind)


def positive_int(name: str):
    return int_at_least(name, 1)


def writable_dir(name: str = "--out"):
    """A folder that can be written into: an existing writable folder, or a new one whose nearest existing parent
    is a writable folder. Nothing is created here (a rejected command leaves no folder behind); the command
    creates it when it first writes."""
    def parse(s: str) -> Path:
        try:
            return check_writable_dir(Path(s), name)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e))
    return parse


def check_writable_dir(path: Path, name: str) -> Path:
    """``path`` is (or may become) a folder this process can write into; ValueError naming ``name`` otherwise."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}: {str(path)!r} is a file, not a folder; give a folder path")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{name}: {str(path)!r} lies under {str(probe)!r}, which is a file, not a folder")
    try:  # a real write test (permissions, read-only mounts, /proc): a temp folder, removed at once
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".nd-write-test-"))
    except OSError as e:
        raise ValueError(f"{name}: cannot write into {str(probe)!r} ({e.strerror or e}); give a writable folder") \
            from None
    return path


def check_device(device: str, option: str = "--device") -> str:
    """A torch device string that exists here; a clear error otherwise."""
    import torch
    try:
        torch.device(device)
    except RuntimeError:
        raise ValueError(f"{option}: {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{option}: {device!r} requested but torch sees no CUDA device")
    return device


def positive_float(name: str):
    """A number > 0 (seconds)."""
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a number of seconds, got {s!r}")
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{name}: must be > 0, got {v}")
        return v
    return parse
