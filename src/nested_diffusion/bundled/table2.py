"""The seed's Table 2 at our scale: nested DDRM at K·n NFE checkpoints vs vanilla DDRM, on Fashion-MNIST test images.

For each task (denoising σ_y = 1.0, 4× block SR, 50% random-pixel inpainting, Gaussian deblurring) and each test
image i: y = H x_i + σ_y n (noise seed ``seed + MEASUREMENT_SEED_OFFSET + i``), one nested DDRM run (K outer × n
inner, sampling seed ``seed + i``) read out at n, 2n, …, K·n NFE (its anytime "inner_result" updates), and one
vanilla DDRM run with ``vanilla_steps`` steps. Metrics: PSNR per image on [0, 1] (mean and standard error),
Fréchet distance between classifier features of restorations and of the clean images (the project's FashionClassifier,
*not* Inception FID; skipped without a classifier), and the RMS consistency ‖H x̂ − y‖/√m.

Resumable: every chunk of images is cached (written atomically) under ``cache_dir``, together with the settings;
a rerun skips finished chunks and refuses a cache made with other settings (or other model weights).
Example (not run in CI): ``run_table2("runs/table2.json", n_images=1000)``.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..evaluation.frechet import FeatureStats, frechet_distance
from ..io import ChunkCache, atomic_write_json
from ..inverse.ddrm import DEFAULT_ETA, DEFAULT_ETA_B, ddrm_restore, ddrm_sampler
from ..inverse.metrics import consistency_rms, psnr
from ..inverse.operators import MEASUREMENT_SEED_OFFSET, measure
from ..inverse.registry import make_operator
from .classifier import FashionClassifier
from .data import load_fashion_mnist
from .denoiser import load_unet, make_denoiser
from .pretrained import bundled_classifier_path

TASKS: dict[str, dict] = {
    "denoise": dict(degradation="denoise", sigma_y=1.0),
    "sr4": dict(degradation="sr", factor=4, sigma_y=0.0),
    "inpaint50": dict(degradation="inpaint", ratio=0.5, mask_seed=0, sigma_y=0.0),
    "deblur": dict(degradation="deblur_gauss", kernel_size=5, kernel_sigma=1.0, sigma_y=0.0),
}


def _columns(outer: int, inner: int, vanilla_steps: int) -> list[str]:
    return [f"nested_{outer}x{inner}@{inner * k}" for k in range(1, outer + 1)] + [f"ddrm_{vanilla_steps}"]


def _restore_chunk(den, task: dict, x: torch.Tensor, first: int, seed: int, outer: int, inner: int,
                   vanilla_steps: int, eta: float, eta_b: float, t_start, null_class: int) -> dict:
    spec = {k: v for k, v in task.items() if k not in ("degradation", "sigma_y")}
    op = make_operator(task["degradation"], tuple(x.shape[1:]), **spec)
    sy = task["sigma_y"]
    B = x.shape[0]
    y = torch.cat([measure(op, x[i:i + 1], sy, seed=seed + MEASUREMENT_SEED_OFFSET + first + i) for i in range(B)])
    seeds = [seed + first + i for i in range(B)]
    cond = torch.full((B,), null_class, dtype=torch.long)
    outputs = {}
    sampler = ddrm_sampler(den, op, y, sy, outer, inner, eta, eta_b, t_start=t_start)
    for u in sampler.stream(seeds, tuple(x.shape), cond):
        if u.source == "inner_result":
            outputs[f"nested_{outer}x{inner}@{u.nfe}"] = u.x0
    outputs[f"ddrm_{vanilla_steps}"] = ddrm_restore(den, op, y, sy, vanilla_steps, seeds, eta, eta_b, t_start,
                                                    cond)
    return {col: (xh.detach().cpu(), psnr(xh, x), consistency_rms(op, xh, y)) for col, xh in outputs.items()}


def run_table2(out_json: str | os.PathLike, n_images: int = 1000, tasks: dict[str, dict] | None = None,
               outer: int = 3, inner: int = 10, vanilla_steps: int = 20, batch_size: int = 50, seed: int = 0,
               eta: float = DEFAULT_ETA, eta_b: float = DEFAULT_ETA_B, t_start: int | None = None,
               model=None, classifier=None, images: torch.Tensor | None = None, data_dir=None,
               distances: Sequence = (),
               cache_dir: str | os.PathLike | None = None,
               progress: Callable[[str], None] | None = print) -> dict:
    """Run (or resume) the evaluation and write a JSON summary to ``out_json``; returns the summary.

    ``model``: a TinyUNet (default: the bundled one); ``classifier``: a FashionClassifier, a folder, or None for
    the bundled one if present (FD is skipped otherwise); ``images``: (N, 1, H, W) clean images in [−1, 1]
    instead of the Fashion-MNIST test split; ``distances``: per-image metrics ``d(restored, clean) -> (B,)`` with a
    ``name`` (e.g. ``evaluation.consistency.LPIPSDistance``), reported as mean ± standard error per column."""
    tasks = _check_tasks(TASKS if tasks is None else tasks, n_images, outer, inner, vanilla_steps, batch_size)
    images = _clean_images(images, n_images, data_dir)
    model = load_unet() if model is None else model
    den = make_denoiser(model, 1.0, clip_x0=None)         # unconditional model (null class), no x0 clipping
    classifier = _classifier(classifier)
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    settings = dict(n_images=n_images, tasks=tasks, outer=outer, inner=inner, vanilla_steps=vanilla_steps,
                    seed=seed, eta=eta, eta_b=eta_b, t_start=t_start, model=model.config,
                    weights_checksum=float(sum(p.detach().double().sum() for p in model.parameters())),
                    images_checksum=float(images.double().sum()))
    if distances:
        settings["distances"] = [d.name for d in distances]
    cache = ChunkCache(Path(cache_dir) if cache_dir is not None else out_json.with_suffix(".cache"), settings)
    cols = _columns(outer, inner, vanilla_steps)
    t0 = time.perf_counter()
    summary = {"settings": settings, "columns": cols, "tasks": {}, "chunks_computed": 0, "chunks_loaded": 0,
               "notes": ("PSNR per image on [0,1], mean ± standard error; psnr_minus_vanilla: paired per-image "
                         "difference to the last column (vanilla DDRM), mean ± standard error; FD on "
                         "FashionClassifier features (restored vs clean, same images), not Inception FID; sigma_y "
                         "in [-1,1] units")}
    with torch.no_grad():
        clean_feats = None if classifier is None else torch.cat(
            [classifier.features(images[i:i + batch_size]) for i in range(0, n_images, batch_size)]).double()
        for name, task in tasks.items():
            def compute(first, last, task=task):
                res = _restore_chunk(den, task, images[first:last], first, seed, outer, inner, vanilla_steps,
                                     eta, eta_b, t_start, model.null_class)
                return _chunk_record(res, images[first:last], classifier, distances)
            chunks = []
            for first in range(0, n_images, batch_size):
                last = min(first + batch_size, n_images)
                chunk, computed = cache.get(f"{name}/chunk_{first:06d}_{last:06d}", lambda: compute(first, last))
                chunks.append(chunk)
                if computed and progress:
                    progress(f"[table2] {name}: images {first}–{last - 1} done")
            summary["tasks"][name] = _task_row(task, cols, chunks, clean_feats, [d.name for d in distances])
            summary.update(chunks_computed=cache.computed, chunks_loaded=cache.loaded,
                           wall_time_s=time.perf_counter() - t0,    # this invocation only (cached chunks are free)
                           torch_threads=torch.get_num_threads())
            atomic_write_json(out_json, summary)
    return summary


def _check_tasks(tasks: dict, *counts_and_sizes) -> dict:
    tasks = dict(tasks)
    for name, spec in tasks.items():
        if "degradation" not in spec or "sigma_y" not in spec:
            raise ValueError(f"tasks: task {name!r} needs 'degradation' and 'sigma_y', got {spec}")
    for what, v in zip(("n_images", "outer", "inner", "vanilla_steps", "batch_size"), counts_and_sizes):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what}: must be an integer ≥ 1, got {v!r}")
    return tasks


def _clean_images(images: torch.Tensor | None, n_images: int, data_dir) -> torch.Tensor:
    if images is None:
        images = load_fashion_mnist("test", data_dir)[0]
    if images.shape[0] < n_images:
        raise ValueError(f"n_images: {n_images} requested but only {images.shape[0]} images are available")
    return images[:n_images].float()


def _classifier(classifier):
    """A FashionClassifier (eval mode) from an instance or a folder; the bundled one when None and present."""
    if classifier is None and (bundled_classifier_path() / "config.json").is_file():
        classifier = bundled_classifier_path()
    if isinstance(classifier, (str, os.PathLike)):
        classifier = FashionClassifier.from_pretrained(classifier)
    return None if classifier is None else classifier.eval()


def _chunk_record(res: dict, clean: torch.Tensor, classifier, distances) -> dict:
    return {c: {"psnr": p, "consistency_rms": r,
                "features": None if classifier is None else classifier.features(xh.float().clamp(-1, 1)),
                **{d.name: d(xh.float().clamp(-1, 1), clean).detach().cpu() for d in distances}}
            for c, (xh, p, r) in res.items()}


def _mean_sem(v: torch.Tensor) -> dict:
    return dict(mean=float(v.mean()), sem=float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else None)


def _task_row(task: dict, cols: list[str], chunks: list[dict], clean_feats, distance_names: list[str]) -> dict:
    """One task's table row from its chunks: PSNR ± sem, paired PSNR difference to vanilla, consistency, FD."""
    row = {"sigma_y": task["sigma_y"], "psnr": {}, "psnr_sem": {}, "consistency_rms": {}, "fd": {},
           "psnr_minus_vanilla": {}}
    col = {c: {k: [ch[c][k] for ch in chunks] for k in ("psnr", "consistency_rms", "features", *distance_names)}
           for c in cols}
    base = torch.cat(col[cols[-1]]["psnr"]).double()     # paired per image: same image, measurement, seed
    for c in cols:
        p = torch.cat(col[c]["psnr"]).double()
        stats = _mean_sem(p)
        row["psnr"][c], row["psnr_sem"][c] = stats["mean"], stats["sem"]
        row["consistency_rms"][c] = float(torch.cat(col[c]["consistency_rms"]).mean())
        for name_d in distance_names:
            row.setdefault(name_d, {})[c] = _mean_sem(torch.cat(col[c][name_d]).double())
        if c != cols[-1] and p.numel() > 1:
            row["psnr_minus_vanilla"][c] = _mean_sem(p - base)
        feats = [f for f in col[c]["features"] if f is not None]
        row["fd"][c] = None
        if clean_feats is not None and feats and p.numel() >= 2:
            row["fd"][c] = frechet_distance(FeatureStats.from_features(torch.cat(feats).double()),
                                            FeatureStats.from_features(clean_feats))
    return row
