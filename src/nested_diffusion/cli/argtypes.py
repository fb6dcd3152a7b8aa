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
    """A folder that exists (created if needed) and can be written into."""
    def parse(s: str) -> Path:
        p = Path(s)
        try:
            p.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise argparse.ArgumentTypeError(f"{name}: cannot write into {s!r} ({e.strerror or e})")
        return p
    return parse


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
