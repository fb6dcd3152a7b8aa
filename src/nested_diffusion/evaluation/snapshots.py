"""One sampling run per configuration, snapshotted at every NFE mark through the anytime stream; cached per
(configuration, chunk of seeds) so an interrupted experiment resumes without recomputing finished chunks.

Snapshots are stored as uint8 (what a PNG holds) and de-duplicated: a nested O×I run has only a few distinct
results over a 10-NFE grid, and every experiment (FD curves, budget table, consistency, figures) reads the same
cache. Sample i always uses seed ``seed + i`` and conditioning ``cond_for([i])`` under every configuration.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..io import ChunkCache
from ..core.nested import NestedSampler
from ..core.noise import NoiseSource
from .auc import UpdateSchedule
from .features import quantize

CACHE_FORMAT = 1


class TimedDenoiser:
    """Wraps a denoiser: counts calls and the seconds spent in them (model forwards incl. CFG, x̂0 conversion);
    waits for CUDA so that the seconds are the model's."""

    def __init__(self, denoiser):
        self.inner, self.schedule = denoiser, denoiser.schedule
        self.calls, self.seconds = 0, 0.0

    def __call__(self, x, t, cond=None):
        t0 = time.perf_counter()
        try:
            out = self.inner(x, t, cond)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            return out
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


@dataclass
class SamplerFactory:
    """How an experiment builds samplers. ``build(outer, inner)`` → NestedSampler; ``sample_shape`` (C, H, W) of
    the sampler's state (a latent for the pipelines, whose samplers have ``decode(x0) -> images in [−1, 1]``);
    ``cond_for(indices)`` → conditioning for those sample indices (or None); ``info``: a JSON-able description
    (model identity, solver, guidance, η …) that is part of the cache key. ``device``: where the sampler's
    state lives (None: the sampler decides, as the pipelines do); ``noise_prefetch``/``noise_workers``: see
    ``NoiseSource`` (speed only: the noise values do not change for states of a multiple of 16 elements).
    ``build_schedule(name, total_nfe)`` → the sampler of a named schedule (``core.schedules``, e.g.
    "progressive") for that budget; None: the factory offers OUTERxINNER configurations only."""

    build: Callable[[int, int], NestedSampler]
    sample_shape: tuple
    cond_for: Callable[[Sequence[int]], Any] | None = None
    info: dict = field(default_factory=dict)
    device: str | None = None
    noise_prefetch: int = 1
    noise_workers: int = 1
    build_schedule: Callable[[str, int], NestedSampler] | None = None

    def make(self, config: "tuple[int, int] | str | Any", total_nfe: int | None) -> NestedSampler:
        """The sampler of one configuration: (outer, inner), a schedule name spending ``total_nfe``, or a resolved
        ``core.schedules.Schedule`` (its own budget)."""
        if isinstance(config, tuple):
            return self.build(*config)
        if self.build_schedule is None:
            raise ValueError(f"configs: this sampler factory has no named schedules; give OUTERxINNER instead of "
                             f"{config!r}")
        return self.build_schedule(config, total_nfe if isinstance(config, str) else None)

    def noise(self, seeds: Sequence[int]):
        """The noise source of one chunk (per-sample generators), or the plain seeds when ``device`` is None."""
        if self.device is None:
            return list(seeds)
        return NoiseSource(list(seeds), self.device, prefetch=self.noise_prefetch, workers=self.noise_workers)

    def cond_on_device(self, idx: Sequence[int]) -> Any:
        cond = self.cond_for(idx) if self.cond_for is not None else None
        return cond.to(self.device) if self.device is not None and isinstance(cond, torch.Tensor) else cond


@dataclass
class Snapshots:
    """Results of one configuration at each mark: ``images[mark_index[m]]`` is (N, C, H, W) uint8 at marks[m]."""

    images: list                 # distinct snapshots, each (N, C, H, W) uint8
    mark_index: list             # per mark → index into images
    marks: list
    update_nfes: list            # NFE at which each distinct snapshot was produced
    sources: list
    seeds: list
    timing: dict

    def at(self, mark: int) -> torch.Tensor:
        return self.images[self.mark_index[self.marks.index(mark)]]

    @property
    def final(self) -> torch.Tensor:
        return self.images[self.mark_index[-1]]


def snapshot_stream(sampler: NestedSampler, seeds: Sequence[int] | NoiseSource, shape: Sequence[int], cond: Any,
                    marks: Sequence[int]) -> Snapshots:
    """Run the stream once and keep the anytime result current at each mark (the last update with nfe ≤ mark)."""
    marks = sorted(int(m) for m in marks)
    if not marks or marks[0] < 1 or marks[-1] > sampler.total_nfe:
        raise ValueError(f"marks: must lie in [1, {sampler.total_nfe}] (the sampler's NFE), got {marks}")
    timers: list[TimedDenoiser] = []

    def timed(denoiser):  # wraps the denoiser of this run only
        timers.append(TimedDenoiser(denoiser))
        return timers[-1]
    decode = getattr(sampler, "decode", None)  # latent samplers (pipelines): x̂0 latent → image, kept updates only
    images, nfes, sources, index = [], [], [], []
    last, p, t0 = None, 0, time.perf_counter()
    bookkeeping, decode_s = 0.0, [0.0]

    def keep(u):  # store the update current at marks[p]
        if not nfes or nfes[-1] != u.nfe:
            x = u.x0
            if decode is not None:
                td = time.perf_counter()
                x = decode(x)
                decode_s[0] += time.perf_counter() - td
            images.append(quantize(x).cpu())
            nfes.append(u.nfe)
            sources.append(u.source)
        index.append(len(images) - 1)

    for u in sampler.stream(seeds, tuple(shape), cond, max_nfe=marks[-1], previews="first", wrap_denoiser=timed):
        tb = time.perf_counter()
        while p < len(marks) and marks[p] < u.nfe:
            if last is None:
                raise ValueError(f"marks: no result exists yet at NFE {marks[p]}")
            keep(last)
            p += 1
        last = u
        bookkeeping += time.perf_counter() - tb
    tb = time.perf_counter()
    while p < len(marks):
        keep(last)
        p += 1
    bookkeeping += time.perf_counter() - tb
    total = time.perf_counter() - t0
    model_s, calls = sum(d.seconds for d in timers), sum(d.calls for d in timers)
    timing = dict(sampling_s=total, denoiser_s=model_s, denoiser_calls=calls, decode_s=decode_s[0],
                  snapshot_s=bookkeeping - decode_s[0], sampler_overhead_s=max(total - model_s - bookkeeping, 0.0))
    seeds = seeds.seeds if isinstance(seeds, NoiseSource) else list(seeds)
    return Snapshots(images, index, marks, nfes, sources, seeds, timing)


def config_label(config: "tuple[int, int] | str") -> str:
    """How results name a configuration: "OUTERxINNER", or the schedule's name."""
    return config if isinstance(config, str) else f"{config[0]}x{config[1]}"


def _digest(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cache_key(factory: SamplerFactory, outer: int, inner: int, marks: Sequence[int]) -> str:
    doc = dict(format=CACHE_FORMAT, factory=factory.info, outer=outer, inner=inner, marks=list(marks),
               shape=list(factory.sample_shape))
    return f"{outer}x{inner}-" + _digest(doc)


def schedule_cache_key(factory: SamplerFactory, name: str, sampler: NestedSampler, marks: Sequence[int]) -> str:
    """``<name><NFE>-<hash>``; the hash covers the schedule's inner steps and outer times."""
    doc = dict(format=CACHE_FORMAT, factory=factory.info, schedule=name, inner_steps=list(sampler.inner_steps),
               outer_times=[int(t) for t in sampler.times[:-1]], marks=list(marks), shape=list(factory.sample_shape))
    return f"{name}{sampler.total_nfe}-" + _digest(doc)


def collect_snapshots(factory: SamplerFactory, outer: int, inner: int, n_samples: int, seed: int,
                      marks: Sequence[int], cache_dir: str | os.PathLike, chunk: int = 100,
                      log: Callable[[str], None] | None = None) -> Snapshots:
    """Snapshots of ``n_samples`` samples (seeds seed..seed+n−1) in chunks; each finished chunk is written
    atomically to ``cache_dir/<key>/`` and loaded instead of recomputed on the next call."""
    return collect_config_snapshots(factory, (outer, inner), outer * inner, n_samples, seed, marks, cache_dir,
                                    chunk, log)


def collect_config_snapshots(factory: SamplerFactory, config: "tuple[int, int] | str", total_nfe: int,
                             n_samples: int, seed: int, marks: Sequence[int], cache_dir: str | os.PathLike,
                             chunk: int = 100, log: Callable[[str], None] | None = None) -> Snapshots:
    """``collect_snapshots`` for a configuration of the runners: (outer, inner) (``total_nfe`` unused) or a
    schedule name (``factory.make``) spending ``total_nfe``."""
    if n_samples < 1 or chunk < 1:
        raise ValueError(f"n_samples and chunk: must be ≥ 1, got {n_samples} and {chunk}")
    sampler = factory.make(config, total_nfe)
    marks = sorted(int(m) for m in marks)
    label = config_label(config)
    key = schedule_cache_key(factory, config, sampler, marks) if isinstance(config, str) else \
        cache_key(factory, *config, marks)
    cache = ChunkCache(Path(cache_dir) / key)
    expected_index = UpdateSchedule.from_sampler(sampler).distinct_at(marks)
    timing = dict(sampling_s=0.0, denoiser_s=0.0, denoiser_calls=0, decode_s=0.0, snapshot_s=0.0,
                  sampler_overhead_s=0.0, chunks_computed=0, chunks_cached=0, samples_computed=0)
    parts = []
    for start in range(0, n_samples, chunk):
        idx = list(range(start, min(n_samples, start + chunk)))
        name = f"seed{seed}-samples{idx[0]:06d}-{idx[-1]:06d}"
        part, computed = cache.get(name, lambda: _snapshot_chunk(factory, sampler, seed, idx, marks))
        _account(timing, part, computed, len(idx))
        if computed and log:
            log(f"  {label}: samples {idx[-1] + 1}/{n_samples} ({part['timing']['sampling_s']:.1f} s)")
        if part["seeds"] != [seed + i for i in idx] or part["marks"] != marks:
            raise ValueError(f"cache: {cache.path(name)} holds other seeds or marks; delete it or use another "
                             f"cache_dir")
        if [part["update_nfes"][j] for j in part["mark_index"]] != expected_index:
            raise RuntimeError(f"{label}: snapshots at {marks} came from updates "
                               f"{[part['update_nfes'][j] for j in part['mark_index']]}, expected {expected_index}")
        parts.append(part)
    first = parts[0]
    images = [torch.cat([p["images"][j] for p in parts]) for j in range(len(first["update_nfes"]))]
    seeds = [s for p in parts for s in p["seeds"]]
    return Snapshots(images, first["mark_index"], marks, first["update_nfes"], first["sources"], seeds, timing)


def _snapshot_chunk(factory: SamplerFactory, sampler: NestedSampler, seed: int, idx: list[int], marks) -> dict:
    snap = snapshot_stream(sampler, factory.noise([seed + i for i in idx]), (len(idx), *factory.sample_shape),
                           factory.cond_on_device(idx), marks)
    return dict(images=torch.stack(snap.images), mark_index=snap.mark_index, marks=snap.marks,
                update_nfes=snap.update_nfes, sources=snap.sources, seeds=snap.seeds, timing=snap.timing)


def _account(timing: dict, part: dict, computed: bool, n: int) -> None:
    if not computed:
        timing["chunks_cached"] += 1
        return
    timing["chunks_computed"] += 1
    timing["samples_computed"] += n
    for k, v in part["timing"].items():
        timing[k] += v
