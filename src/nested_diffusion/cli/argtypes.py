"""argparse value types that reject bad input with one clear message naming the option."""
from __future__ import annotations

import argparse
import errno
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
        where = "" if probe == path else f" (its nearest existing folder {str(probe)!r})"
        raise ValueError(f"{name}: cannot write into {str(path)!r}{where}: {why_unwritable(e)}; give a folder "
                         f"this user can write") from None
    return path


def why_unwritable(e: OSError) -> str:
    """An OSError from a write test as words (not the raw errno text)."""
    return {errno.EACCES: "permission denied for this user", errno.EPERM: "permission denied for this user",
            errno.EROFS: "it is on a read-only file system", errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is exhausted",
            errno.ENOENT: "the file system there does not accept new files (a virtual file system such as /proc)",
            }.get(e.errno, f"the system refused ({e.strerror or e})")


def tcp_port(name: str = "--port"):
    """A TCP port number, 1–65535."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a port number (1–65535), got {s!r}")
        if not 1 <= v <= 65535:
            raise argparse.ArgumentTypeError(f"{name}: a TCP port lies in 1–65535, got {v}")
        return v
    return parse


def check_listen(host: str, port: int, host_option: str = "--host", port_option: str = "--port") -> None:
    """``host`` names an address of this machine and ``port`` is free on it; ValueError naming the option at
    fault otherwise (checked before a model is loaded)."""
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(f"{host_option}: cannot resolve {host!r} ({getattr(e, 'strerror', None) or e}); give an "
                         f"address of this machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every network)") \
            from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ValueError(f"{port_option}: port {port} on {host} is already in use; give a free port") \
                    from None
            if e.errno in (errno.EACCES, errno.EPERM):
                raise ValueError(f"{port_option}: port {port} needs privileges this user lacks; give a port ≥ 1024")\
                    from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise ValueError(f"{host_option}: {host!r} is not an address of this machine; give one of its own "
                                 f"addresses, e.g. 127.0.0.1 or 0.0.0.0") from None
            raise ValueError(f"{host_option}/{port_option}: cannot listen on {host}:{port} ({e.strerror or e})") \
                from None


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
