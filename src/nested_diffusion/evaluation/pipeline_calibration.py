"""Expected-change calibration through a latent sampler: anything with NestedSampler's ``stream`` and a
``decode(latents) -> images in [−1, 1]``, e.g. ``pipelines.factories.PipelineSampler`` (Nested SD / DiT).

* The runs are ``calibration_runs.run_chunks`` unchanged (resumable chunks of the x̂0 *latents* each update
  shows, the inner runs' first predictions and the learned variance), so the run-time signals are replayed on
  latents exactly as a pipeline call with ``calibration=`` computes them (``replay_signals``).
* The targets are on the *decoded* images (``decoded_targets``): pixel RMSE on [0, 1] to the final, the semantic
  distance 1 − cos of a feature network's features (any ``images -> (N, d)`` module: CLIP, DreamSim, Inception,
  …) and, only where a classifier is given (``classify``: images → logits), the flip of its predicted class. For
  Stable Diffusion there is no classifier: the calibration has no flip target and predicts a NaN flip
  probability. Targets are cached per chunk and feature network (``targets-<id>-chunk-….npz``) next to the
  chunks, so a rerun decodes nothing it has already scored.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..core.change_fit import fit_calibration
from ..core.expected_change import Calibration, pixel_rmse
from ..io import atomic_save_npz
from .calibration_runs import run_chunks
from .expected_change import PIXEL_SIGNALS, cosine_distance, load_chunks, replay_signals

SIGNAL_SETS = {"pixel": PIXEL_SIGNALS, "none": ()}  # pixel: latent-space signals (no feature network at run time)


@torch.no_grad()
def decoded_targets(chunk: dict, decode: Callable[[torch.Tensor], torch.Tensor],
                    features: Callable[[torch.Tensor], torch.Tensor],
                    classify: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """(N, U) remaining change of every shown update of a latent chunk: "rmse" (pixel RMSE on [0, 1] of the
    decoded images), "semantic" (1 − cos of ``features``) and, with ``classify``, "flip" and "label_final".
    Decodes one update column (N images) at a time."""
    u = torch.as_tensor(chunk["updates"])
    N, U = u.shape[:2]
    final = decode(u[:, -1]).float()
    f_final = features(final).float()
    c_final = None if classify is None else classify(final).argmax(-1)
    rmse, sem = torch.zeros(N, U), torch.zeros(N, U)
    flip = torch.zeros(N, U, dtype=torch.bool)
    for j in range(U - 1):
        img = decode(u[:, j]).float()
        rmse[:, j] = pixel_rmse(img, final)
        sem[:, j] = cosine_distance(features(img).float(), f_final).clamp_min(0)
        if classify is not None:
            flip[:, j] = classify(img).argmax(-1) != c_final
    out = {"rmse": rmse, "semantic": sem}
    if classify is not None:
        out.update(flip=flip, label_final=c_final)
    return out


def targets_id(feature_id: str, classifier_id: str | None) -> str:
    """12 hex digits naming a (feature network, classifier) pair in target file names."""
    return hashlib.sha256(f"{feature_id}|{classifier_id}".encode()).hexdigest()[:12]


def cached_targets(path: Path, decode: Callable, features: Callable, feature_id: str,
                   classify: Callable | None = None, classifier_id: str | None = None,
                   log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """``decoded_targets`` of the chunk file ``path``, read from / written to its target file."""
    path = Path(path)
    tpath = path.with_name(f"targets-{targets_id(feature_id, classifier_id)}-{path.name}")
    if tpath.is_file():
        return {k: torch.from_numpy(v) for k, v in np.load(tpath).items()}
    t = decoded_targets(dict(np.load(path)), decode, features, classify)
    atomic_save_npz(tpath, **{k: v.numpy() for k, v in t.items()})
    log(f"{tpath.name}: targets of {t['rmse'].shape[0]} samples")
    return t


def pipeline_calibration_set(paths: Sequence[Path], inner_steps: Sequence[int], decode: Callable,
                             features: Callable, feature_id: str, classify: Callable | None = None,
                             classifier_id: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Signals (N, U, S) on the latents and decoded-image targets of the chunk files ``paths``."""
    chunk = load_chunks(paths)
    parts = [cached_targets(p, decode, features, feature_id, classify, classifier_id, log) for p in paths]
    targets = {k: torch.cat([t[k] for t in parts]) for k in parts[0]}
    return {"signals": replay_signals(chunk, inner_steps), "targets": targets,
            "nfe": [int(n) for n in chunk["nfe"]], "seeds": chunk["seeds"].tolist()}


def calibrate_sampler(sampler: Any, config: dict, seeds: Sequence[int], cond_for: Callable[[Sequence[int]], Any],
                      cache: Path, features: Callable, feature_id: str, classify: Callable | None = None,
                      classifier_id: str | None = None, signals: str = "pixel", chunk: int = 100,
                      meta: dict | None = None, log: Callable[[str], None] = print) -> Calibration:
    """Run (or resume) the calibration set ``seeds`` (conditioning ``cond_for(seeds)``) through ``sampler`` into
    ``cache``, score it and fit a Calibration for ``config``. ``signals``: "pixel" (latent signals) or "none"
    (the population curve)."""
    if signals not in SIGNAL_SETS:
        raise ValueError(f"signals: {signals!r} is not valid for a latent sampler; use one of {tuple(SIGNAL_SETS)}")
    shape = tuple(sampler.latent_shape)
    paths = run_chunks(sampler, list(seeds), cond_for, shape, cache, chunk, log)
    data = pipeline_calibration_set(paths, sampler.inner_steps, sampler.decode, features, feature_id, classify,
                                    classifier_id, log)
    targets = {k: data["targets"][k] for k in ("rmse", "semantic", "flip") if k in data["targets"]}
    meta = dict(meta or {}, signals=signals, signal_space="x0 latents (scaled, as the denoiser sees them)",
                feature_network=feature_id, classifier=classifier_id,
                distances=["pixel RMSE on [0, 1] of the decoded images", f"1 - cos({feature_id})"]
                + ([f"class flip (argmax of {classifier_id})"] if classify is not None else []),
                first_result_nfe=sampler.solver.inner.nfe(sampler.inner_steps[0]))
    return fit_calibration(data["signals"], targets, data["nfe"], config, meta, SIGNAL_SETS[signals])
