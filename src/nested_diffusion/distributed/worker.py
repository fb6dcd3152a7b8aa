"""Sampling one shard of a run: each work item (a block of consecutive sample indices) is sampled once through
the anytime stream, snapshotted at every NFE mark, written atomically, and skipped on reruns.

Sample i always uses seed ``seed + i`` and conditioning ``factory.cond_for([i])`` (bundled: label i % classes;
DiT: labels[i % L], class-balanced; SD: prompt i % P), and it is always sampled in the same batch (item
⌊i / batch_size⌋), so its bytes depend neither on the number of processes nor on which one computed it.
``batch_size`` is part of the configuration: float kernels differ slightly by batch size (measured on the bundled
model: up to one uint8 level), so another batch size is another run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .. import __version__
from ..core.noise import DeviceNoiseSource
from ..evaluation.auc import UpdateSchedule, nfe_marks
from ..evaluation.snapshots import SamplerFactory, snapshot_stream
from .ranks import Shard, assign
from .store import SampleStore

NOISE_MODES = ("cpu", "device")


@dataclass
class SampleJob:
    """What to sample. ``step``: an NFE mark every ``step`` NFE, or ``"update"`` for every anytime update."""

    factory: SamplerFactory
    outer: int
    inner: int
    num_samples: int
    seed: int = 0
    batch_size: int = 100
    step: "int | str" = 10
    noise: str = "cpu"
    noise_prefetch: int = 20
    device: str = "cpu"
    schedule: Any = None          # a resolved core.schedules.Schedule (or a name spending ``nfe``) instead of outer × inner
    nfe: int | None = None

    def __post_init__(self):
        for name in ("outer", "inner", "num_samples", "batch_size", "noise_prefetch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be an integer ≥ 1, got {v!r}")
        if self.noise not in NOISE_MODES:
            raise ValueError(f"--noise: expected one of {', '.join(NOISE_MODES)}, got {self.noise!r}")
        if self.schedule is None:
            self.sampler = self.factory.build(self.outer, self.inner)
        else:
            self.sampler = self.factory.make(self.schedule, self.nfe)
            self.outer, self.inner = self.sampler.outer_steps, max(self.sampler.inner_steps)
        schedule = UpdateSchedule.from_sampler(self.sampler)
        if self.step == "update":
            self.marks = schedule.update_nfes()
        elif isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 1:
            raise ValueError(f"--step: expected a positive integer or 'update', got {self.step!r}")
        else:
            self.marks = nfe_marks(self.sampler.total_nfe, self.step)

    def config(self) -> dict:
        """Everything the bytes depend on (hashed into the manifest)."""
        noise = dict(mode=self.noise)
        if self.noise == "device":
            noise.update(prefetch=self.noise_prefetch, device_type=torch.device(self.device).type)
        named = {} if self.schedule is None else dict(
            schedule=getattr(self.schedule, "name", self.schedule), nfe=self.nfe,
            inner_steps=list(self.sampler.inner_steps), outer_times=[float(t) for t in self.sampler.times[:-1]])
        # where the bytes come from: a CPU float32 folder is not resumed on CUDA or in another dtype (absent = the
        # CPU float32 default, so folders made before this key existed still resume)
        model_dtype = str(getattr(self.sampler, "pipe_dtype", torch.float32)).replace("torch.", "")
        device_type = torch.device(self.factory.device or self.device).type
        where = {k: v for k, v in (("device_type", device_type), ("model_dtype", model_dtype))
                 if v not in ("cpu", "float32")}
        return dict(sampler=self.factory.info, outer=self.outer, inner=self.inner, **named, **where,
                    total_nfe=self.sampler.total_nfe, marks=self.marks, num_samples=self.num_samples,
                    seed=self.seed, batch_size=self.batch_size, sample_shape=list(self.factory.sample_shape),
                    noise=noise, seed_rule="sample i: seed + i; conditioning a function of i alone")

    def noise_for(self, seeds: Sequence[int]):
        if self.noise == "device":
            dtype = getattr(self.sampler, "pipe_dtype", torch.float32)   # pipelines draw in the model's dtype
            return DeviceNoiseSource(seeds, self.factory.device or self.device, dtype, self.noise_prefetch)
        return self.factory.noise(seeds)


def labels_of(cond) -> list[int] | None:
    """Class labels to record with the samples (tensor or int list conditioning); None for prompts."""
    if isinstance(cond, torch.Tensor):
        return [int(v) for v in cond.reshape(-1).tolist()]
    if isinstance(cond, (list, tuple)) and cond and all(isinstance(v, int) for v in cond):
        return [int(v) for v in cond]
    return None


def run_shard(job: SampleJob, store: SampleStore, shard: Shard, mode: str = "strided",
              log: Callable[[str], None] | None = None) -> dict:
    """Compute this shard's missing items; returns counts (computed/skipped) and timing."""
    config = job.config()
    store.open(config, dict(versions=dict(nested_diffusion=__version__, torch=torch.__version__)))
    mine = assign(store.num_items(config), shard.rank, shard.world, mode)
    todo = [b for b in mine if not store.is_done(b)]
    log_path = store.log_path(shard.rank, shard.world)
    t0, sampled = time.perf_counter(), 0
    if log:
        log(f"[{shard.describe()}] {len(mine)} items assigned, {len(mine) - len(todo)} already done")
    for k, b in enumerate(todo):
        idx = store.indices(config, b)
        tb = time.perf_counter()
        cond = job.factory.cond_for(idx) if job.factory.cond_for is not None else None
        snap = snapshot_stream(job.sampler, job.noise_for([job.seed + i for i in idx]),
                               (len(idx), *job.factory.sample_shape), job.factory.cond_on_device(idx), job.marks)
        store.write_item(b, snap, idx, labels_of(cond))
        store.log_item(log_path, b, idx, time.perf_counter() - tb)
        sampled += len(idx)
        if log:
            log(f"[{shard.describe()}] item {b} (samples {idx[0]}–{idx[-1]}) done, {k + 1}/{len(todo)} "
                f"({time.perf_counter() - tb:.2f} s)")
    wall = time.perf_counter() - t0
    nfe = sampled * job.sampler.total_nfe
    return dict(rank=shard.rank, world=shard.world, assigned=len(mine), computed=len(todo),
                skipped=len(mine) - len(todo), samples_computed=sampled, wall_s=wall,
                image_nfe_per_s=nfe / wall if wall > 0 and nfe else None)
