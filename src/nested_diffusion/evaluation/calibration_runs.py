"""Calibration runs for the expected-change predictor: what a sampler run shows, kept per sample.

One chunk = one batch of seeds run to the end with ``previews="all"`` (the trajectory is the same as with
``"first"``; only what is yielded differs). Kept, in model space:

* ``updates`` (N, U, C, H, W): the images a stream in the run's default preview mode shows (``previews="first"``,
  or "fill" for a schedule with a long last run: ``core.nested.default_previews``), in order (the last is the final);
* ``firsts``  (N, K, C, H, W): the first x̂0 prediction of each of the K inner runs;
* ``var``     (N, NFE): the mean learned-variance value of each denoiser call (NaN where the model has none);
* the updates' positions (nfe, outer_step, inner_step, t), the seeds and labels.

The sampler is anything with NestedSampler's ``stream`` (``previews=``, ``wrap_denoiser=``) and ``total_nfe``
(one with ``learned_variance = False`` runs without a wrapper and records NaN variances):
the bundled model's NestedSampler, or a ``pipelines.factories.PipelineSampler`` (whose updates are x̂0 latents;
see ``evaluation.pipeline_calibration`` for their targets). From these, the runtime signals (core.expected_change.SignalTracker) and the targets (distances to the final)
are computed offline by replaying the same calls in the same order (``replay_signals``). Chunks are written
atomically and skipped when present, so an interrupted calibration resumes.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..core.denoisers import DenoiserOutput
from ..core.events import INNER_RESULT
from ..core.nested import NestedSampler, preview_shown
from ..io import atomic_save_npz


class VarianceRecorder:
    """A denoiser wrapper that records each call's per-sample mean learned variance (NaN if none)."""

    def __init__(self, denoiser):
        self.inner, self.schedule, self.means = denoiser, denoiser.schedule, []

    def __call__(self, x: torch.Tensor, t: int, cond: Any = None) -> DenoiserOutput:
        out = self.inner(x, t, cond)
        v = out.var_values
        self.means.append(torch.full((x.shape[0],), float("nan")) if v is None
                          else v.detach().float().flatten(1).mean(1).cpu())
        return out


def run_chunk(sampler: NestedSampler, seeds: Sequence[int], shape: Sequence[int], cond: Any = None) -> dict:
    """Run one batch to its end; the arrays described in the module docstring (numpy). The model calls are
    recorded through ``stream(wrap_denoiser=)``, so the sampler is not changed."""
    recorders: list[VarianceRecorder] = []

    def record(denoiser):
        recorders.append(VarianceRecorder(denoiser))
        return recorders[-1]

    updates, firsts, pos = [], [], []
    mode, run_nfe = sampler.default_previews, sampler.run_nfe
    steps_only = getattr(sampler, "learned_variance", True) is False   # e.g. a stock pipeline (factories_generic):
    wrap = None if steps_only else record     # its wrap sees transformer forwards, and its model has no variance
    for u in sampler.stream(list(seeds), shape, cond, previews="all", wrap_denoiser=wrap):
        if u.inner_step == 1:
            firsts.append(u.x0.detach().float().cpu())
        if u.source == INNER_RESULT or preview_shown(mode, u.outer_step - 1, u.inner_step, run_nfe[u.outer_step - 1]):
            updates.append(u.x0.detach().float().cpu())
            pos.append((u.nfe, u.outer_step, u.inner_step, u.t))
    if steps_only:
        calls = pos[-1][0] if pos else 0       # the last shown update is the final result: every call made
        means = [torch.full((len(seeds),), float("nan"))] * calls
    else:
        if len(recorders) != 1:
            raise RuntimeError(f"calibration run: the sampler wrapped its denoiser {len(recorders)} times, expected "
                               f"once")
        means = recorders[0].means
    if len(means) != sampler.total_nfe:
        raise RuntimeError(f"calibration run: {len(means)} denoiser calls, expected {sampler.total_nfe}")
    p = np.asarray(pos, dtype=np.int64)
    return dict(updates=torch.stack(updates, 1).numpy(), firsts=torch.stack(firsts, 1).numpy(),
                var=torch.stack(means, 1).numpy(), nfe=p[:, 0], outer_step=p[:, 1], inner_step=p[:, 2],
                t=p[:, 3], seeds=np.asarray(list(seeds), dtype=np.int64))


def run_chunks(sampler: NestedSampler, seeds: Sequence[int], labels: Callable[[Sequence[int]], torch.Tensor],
               shape: Sequence[int], cache: Path, chunk: int = 100, log: Callable[[str], None] = print) -> list[Path]:
    """Run ``seeds`` in chunks into ``cache`` (skipping chunks already there); the chunk files in order.
    ``labels(seeds)`` gives each chunk's conditioning (a tensor of labels, or a list: class ids or prompts),
    kept in the chunk as ``labels``."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for lo in range(0, len(seeds), chunk):
        s = list(seeds[lo:lo + chunk])
        path = cache / f"chunk-{s[0]}-{s[-1]}.npz"
        paths.append(path)
        if path.is_file():
            continue
        t0 = time.perf_counter()
        cond = labels(s)
        arrays = run_chunk(sampler, s, (len(s), *shape), cond)
        arrays["labels"] = np.asarray(cond.cpu() if isinstance(cond, torch.Tensor) else list(cond))
        atomic_save_npz(path, **arrays)
        log(f"{path.name}: {len(s)} samples in {time.perf_counter() - t0:.1f} s")
    return paths


def claim_cache(cache: Path, config: dict) -> None:
    """Stamp ``cache`` with the configuration its chunks belong to (``config.json``); ValueError if it already
    holds another configuration's chunks. A folder with chunks but no stamp is claimed as it is."""
    import json
    from ..core.expected_change import canonical, config_hash
    from ..io import atomic_write_json
    cache = Path(cache)
    stamp = cache / "config.json"
    if stamp.is_file():
        have = json.loads(stamp.read_text())
        if have.get("config_hash") != config_hash(config):
            raise ValueError(f"--cache-dir: {str(cache)!r} holds chunks of configuration {have.get('config_hash')}"
                             f", not {config_hash(config)}; use another folder")
        return
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp, {"config_hash": config_hash(config), "config": canonical(config)})


def claimed_cache(config: dict, cache_dir: Path | None = None) -> tuple[str, Path]:
    """The configuration's hash and its chunk cache (``cache_dir``, default ``runs/calibrate/<hash>``), claimed for
    it by ``claim_cache`` (ValueError if the folder holds another configuration's chunks)."""
    from ..core.expected_change import config_hash
    h = config_hash(config)
    cache = Path(cache_dir) if cache_dir else Path("runs/calibrate") / h
    claim_cache(cache, config)
    return h, cache
