"""Quality gate of the bundled model: FD on the project classifier's features, noise floor, class agreement.

Samples are generated in chunks cached as .pt files (written atomically), so an interrupted run resumes.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .denoiser import DEFAULT_GUIDANCE, make_denoiser
from .classifier_training import accuracy
from .data import load_fashion_mnist
from .classifier import FashionClassifier
from .unet import TinyUNet
from ..core.nested import NestedSampler
from ..evaluation.frechet import FeatureStats, frechet_distance
from ..io import ChunkCache


@torch.no_grad()
def features_and_predictions(clf: FashionClassifier, x: torch.Tensor, batch: int = 1000):
    clf.eval()
    feats, preds = [], []
    for i in range(0, len(x), batch):
        f = clf.features(x[i:i + batch])
        feats.append(f)
        preds.append(clf.head(f).argmax(1))
    return torch.cat(feats), torch.cat(preds)


def generate_cached(model: TinyUNet, n: int, steps: int, solver: str, guidance: float, seed: int,
                    cache_dir: Path, chunk: int = 250, log=print) -> tuple[torch.Tensor, torch.Tensor]:
    """n class-balanced samples (label i % 10, seed seed + i), vanilla sampling with `steps` steps."""
    cache = ChunkCache(cache_dir)
    sampler = quality_sampler(model, steps, solver, guidance)
    xs, t0 = [], time.time()
    for start in range(0, n, chunk):
        idx = list(range(start, min(n, start + chunk)))
        labels = torch.tensor([i % 10 for i in idx])
        x, computed = cache.get(f"{solver}-{steps}-g{guidance}-s{seed}-{idx[0]}-{idx[-1]}", lambda: sampler.sample(
            [seed + i for i in idx], (len(idx), 1, 28, 28), cond=labels).x0)
        xs.append(x)
        if computed:
            log(f"  {idx[-1] + 1}/{n} samples, {time.time() - t0:.0f} s")
    return torch.cat(xs), torch.tensor([i % 10 for i in range(n)])


def quality_sampler(model: TinyUNet, steps: int, solver: str, guidance: float) -> NestedSampler:
    """The gate's vanilla sampler (one outer step of ``steps`` inner steps); ValueError naming ``inner_steps`` /
    ``inner_solver`` / ``guidance`` if it cannot run on ``model`` (built before anything is loaded or sampled)."""
    return NestedSampler(make_denoiser(model, guidance), 1, steps, solver)


def quality_report(model: TinyUNet, clf: FashionClassifier, n: int = 5000, steps: int = 100, solver: str = "ddim",
                   guidance: float = DEFAULT_GUIDANCE, seed: int = 0, cache_dir: str | Path = "runs/quality-cache",
                   data_dir: str | None = None, log=print) -> dict:
    xt, yt = load_fashion_mnist("test", data_dir)
    xtr, _ = load_fashion_mnist("train", data_dir)
    f_test, _ = features_and_predictions(clf, xt)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(xt), generator=g)
    half = len(xt) // 2
    floor_halves = frechet_distance(FeatureStats.from_features(f_test[perm[:half]]),
                                    FeatureStats.from_features(f_test[perm[half:]]))
    f_train, _ = features_and_predictions(clf, xtr[torch.randperm(len(xtr), generator=g)[:n]])
    floor_same_n = frechet_distance(FeatureStats.from_features(f_train), FeatureStats.from_features(f_test))
    t0 = time.time()
    x, labels = generate_cached(model, n, steps, solver, guidance, seed, Path(cache_dir), log=log)
    gen_seconds = time.time() - t0
    f_gen, pred = features_and_predictions(clf, x)
    fd = frechet_distance(FeatureStats.from_features(f_gen), FeatureStats.from_features(f_test))
    return {
        "classifier_test_accuracy": accuracy(clf, xt, yt),
        "fd_generated_vs_test": fd,
        "fd_noise_floor_test_halves": floor_halves,
        "fd_noise_floor_train_vs_test_same_n": floor_same_n,
        "class_agreement": (pred == labels).double().mean().item(),
        "samples": n, "sampler": f"vanilla {solver}, {steps} steps", "guidance": guidance, "seed": seed,
        "feature_network": "project FashionClassifier, 128-d penultimate layer",
        "generation_seconds_this_run": round(gen_seconds, 1),
    }
