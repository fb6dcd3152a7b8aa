"""Which process am I, and which work items are mine: ranks from torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``) or from ``--shard i/N`` (SLURM arrays, machines without a rendezvous), or both
(shard i of N, each run by a torchrun group of W processes: global rank i·W + r of N·W). Assignment is a pure
function of (item count, rank, world), so every process agrees without talking to the others; a process group
is opened only for the final barrier."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

ASSIGNMENTS = ("strided", "contiguous")


@dataclass(frozen=True)
class Shard:
    rank: int            # global rank in [0, world)
    world: int
    local_rank: int = 0  # torchrun's LOCAL_RANK (selects cuda:LOCAL_RANK)
    group_size: int = 1  # processes of this torchrun job (the barrier's group); 1 without torchrun

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank}/{self.world}"


def parse_shard(spec: str) -> tuple[int, int]:
    """'i/N' with 0 ≤ i < N (e.g. ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``)."""
    try:
        i, n = (int(s) for s in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"--shard: expected i/N with integers 0 ≤ i < N (e.g. 3/8), got {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard: expected i/N with 0 ≤ i < N and N ≥ 1, got {spec!r}")
    return i, n


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    v = env.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"{name}: the environment variable must be an integer, got {v!r}") from None


def shard_from_env(spec: str | None = None, env: Mapping[str, str] | None = None) -> Shard:
    """The shard of this process: torchrun's RANK/WORLD_SIZE/LOCAL_RANK, then ``--shard i/N`` on top."""
    env = os.environ if env is None else env
    r, w = _env_int(env, "RANK", 0), _env_int(env, "WORLD_SIZE", 1)
    local = _env_int(env, "LOCAL_RANK", 0)
    if not (w >= 1 and 0 <= r < w):
        raise ValueError(f"RANK/WORLD_SIZE: expected 0 ≤ RANK < WORLD_SIZE, got RANK={r} WORLD_SIZE={w}")
    i, n = parse_shard(spec) if spec is not None else (0, 1)
    return Shard(i * w + r, n * w, local, w)


def assign(num_items: int, rank: int, world: int, mode: str = "strided") -> list[int]:
    """Item ids of ``rank``: strided ``range(rank, n, world)`` or one contiguous run; no padding, no repeats;
    ranks beyond the item count get nothing."""
    if mode not in ASSIGNMENTS:
        raise ValueError(f"--assign: expected one of {', '.join(ASSIGNMENTS)}, got {mode!r}")
    if mode == "strided":
        return list(range(rank, num_items, world))
    base, extra = divmod(num_items, world)
    lo = rank * base + min(rank, extra)
    return list(range(lo, lo + base + (rank < extra)))


def open_group(shard: Shard, device: str, timeout_min: float = 120.0) -> bool:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA) when this job has more than one process;
    returns whether one was opened. The group is only used by ``close_group``'s barrier."""
    import torch.distributed as dist
    if shard.group_size <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_min))
    return True


def close_group(device: str) -> None:
    """Wait for every process of the group (ranks with more items finish later), then leave it."""
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.device(device).index or 0])
    else:
        dist.barrier()
    dist.destroy_process_group()
