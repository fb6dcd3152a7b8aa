"""Expected change, offline: signals and targets of calibration-run chunks, and how good a predictor is.

* ``replay_signals`` feeds a chunk's recorded calls to ``core.expected_change.SignalTracker`` in the order
  ``NestedSampler.stream`` does, so the signals are the ones a live run computes (tested).
* ``chunk_targets``: remaining change of every shown update to the final — pixel RMSE on [0, 1], semantic
  distance 1 − cos of feature-network features, and the flip of the predicted class.
* ``evaluate``: per update, Spearman correlation of predicted vs realised D, MAE of the per-sample mean
  prediction vs the population curve (the calibration set's mean D at that NFE) and of the per-sample median
  vs the population median, 80% interval coverage, and the flip probability's Brier score vs the population
  rate, plus reliability bins.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.expected_change import FEATURE_SIGNALS, SIGNALS, TARGETS, Calibration, SignalTracker, pixel_rmse


def replay_signals(chunk: dict, inner_steps: Sequence[int], features: Callable | None = None) -> torch.Tensor:
    """(N, U, len(SIGNALS)) signals of a chunk's U shown updates (``calibration_runs.run_chunk`` arrays);
    ``features``: the feature function of the feature signals (None: they are NaN)."""
    updates, firsts = torch.as_tensor(chunk["updates"]), torch.as_tensor(chunk["firsts"])
    var, nfe = torch.as_tensor(chunk["var"]), [int(n) for n in chunk["nfe"]]
    ends = np.cumsum(inner_steps).tolist()
    tracker, out, j, k, start = SignalTracker(features), [], 0, 0, 0
    for n in range(1, ends[-1] + 1):
        if n > ends[k]:
            start, k = ends[k], k + 1
        tracker.call(var[:, n - 1])
        if n - start == 1:
            tracker.run_started(firsts[:, k])
        if n == ends[k]:
            tracker.run_finished(updates[:, nfe.index(n)])
        if j < len(nfe) and nfe[j] == n:
            out.append(tracker.update(updates[:, j]))
            j += 1
    return torch.stack(out, 1)


def classifier_signals(classifier: torch.nn.Module) -> Callable:
    """The feature function of a FashionClassifier-like module (``body`` → features, ``head`` → logits), in eval
    mode without autograd: what a calibration with feature signals carries for the bundled model."""
    classifier.eval()

    @torch.no_grad()
    def fn(x: torch.Tensor):
        f = classifier.body(x.float())
        return f, classifier.head(f)
    return fn


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).float()


@torch.no_grad()
def chunk_targets(chunk: dict, features: Callable[[torch.Tensor], torch.Tensor],
                  classify: Callable[[torch.Tensor], torch.Tensor], batch: int = 1000) -> dict[str, torch.Tensor]:
    """(N, U) distances of every shown update to the final (the last update): "rmse", "semantic", "flip"; and
    "label_final" (N,), the predicted class of the final. ``features``/``classify``: image batch → (B, d) features
    / (B, classes) logits."""
    u = torch.as_tensor(chunk["updates"])
    N, U = u.shape[:2]
    flat = u.reshape(N * U, *u.shape[2:])
    f = torch.cat([features(flat[i:i + batch]).float() for i in range(0, len(flat), batch)]).reshape(N, U, -1)
    c = torch.cat([classify(flat[i:i + batch]).argmax(-1) for i in range(0, len(flat), batch)]).reshape(N, U)
    final = u[:, -1:].expand_as(u)
    rmse = pixel_rmse(u.reshape(N * U, -1), final.reshape(N * U, -1)).reshape(N, U)
    sem = cosine_distance(f, f[:, -1:].expand_as(f))
    sem[:, -1] = 0
    return {"rmse": rmse, "semantic": sem.clamp_min(0), "flip": c != c[:, -1:], "label_final": c[:, -1]}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either is constant."""
    def ranks(x):
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        vals, inv = np.unique(x, return_inverse=True)
        sums = np.bincount(inv, weights=r)
        return (sums / np.bincount(inv))[inv]
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def reliability(p: torch.Tensor, y: torch.Tensor, bins: int = 10) -> list[dict]:
    """Equal-width probability bins: count, mean predicted probability, observed frequency."""
    p, y = p.double().flatten(), y.double().flatten()
    idx = (p * bins).long().clamp(0, bins - 1)
    return [{"bin": [b / bins, (b + 1) / bins], "count": int((idx == b).sum()),
             "predicted": float(p[idx == b].mean()) if (idx == b).any() else None,
             "observed": float(y[idx == b].mean()) if (idx == b).any() else None} for b in range(bins)]


def predictions(cal: Calibration, signals: torch.Tensor, nfe: Sequence[int], use_signals: bool = True) -> dict:
    """Stacked (N, U) predictions of a calibration for a held-out set's signals."""
    preds = [cal.predict(n, signals[:, j], use_signals) for j, n in enumerate(nfe)]
    names = ("rmse", "rmse_median", "rmse_low", "rmse_high", "semantic", "semantic_median", "semantic_low",
             "semantic_high", "flip")
    return {k: torch.stack([getattr(p, k) for p in preds], 1) for k in names}


def target_metrics(pred: dict, pop: dict, real: dict, t: str, sel) -> dict:
    """Metrics of distance t over the updates ``sel`` (a list of indices), all samples pooled."""
    y = real[t][:, sel].double()
    inside = lambda p: ((real[t][:, sel] >= p[f"{t}_low"][:, sel])  # noqa: E731
                        & (real[t][:, sel] <= p[f"{t}_high"][:, sel])).double().mean()
    mae = lambda p, k: float((p[k][:, sel].double() - y).abs().mean())  # noqa: E731
    m = {"realised_mean": float(y.mean()), "mae": mae(pred, t), "mae_population": mae(pop, t),
         "mae_median_point": mae(pred, f"{t}_median"), "mae_population_median": mae(pop, f"{t}_median"),
         "coverage_80": float(inside(pred)), "coverage_80_population": float(inside(pop)),
         "interval_width": float((pred[f"{t}_high"][:, sel] - pred[f"{t}_low"][:, sel]).double().mean()),
         "interval_width_population": float((pop[f"{t}_high"][:, sel] - pop[f"{t}_low"][:, sel]).double().mean())}
    m["mae_reduction"] = 1 - m["mae"] / m["mae_population"] if m["mae_population"] > 0 else float("nan")
    m["mae_reduction_median"] = (1 - m["mae_median_point"] / m["mae_population_median"]
                                 if m["mae_population_median"] > 0 else float("nan"))
    if len(sel) == 1:
        m["spearman"] = spearman(pred[t][:, sel[0]], real[t][:, sel[0]])
    return m


def flip_metrics(pred: dict, pop: dict, real: dict, sel, bins: bool = False) -> dict:
    f = real["flip"][:, sel].double()
    m = {"rate": float(f.mean()), "brier": float(((pred["flip"][:, sel].double() - f) ** 2).mean()),
         "brier_population": float(((pop["flip"][:, sel].double() - f) ** 2).mean())}
    if bins:
        m.update(reliability=reliability(pred["flip"][:, sel], f), reliability_population=reliability(
            pop["flip"][:, sel], f))
    return m


def evaluate(cal: Calibration, signals: torch.Tensor, real: dict, nfe: Sequence[int]) -> dict:
    """Held-out metrics per update, and pooled over the non-final updates ("all") and over those from the first
    inner result on ("after_first_result"). Baselines: the population curve (mean D at that NFE, for the mean
    prediction) and the population median (for the median prediction)."""
    pred, pop = predictions(cal, signals, nfe), predictions(cal, signals, nfe, use_signals=False)
    per = [dict(nfe=int(n), flip=flip_metrics(pred, pop, real, [j]),
                **{t: target_metrics(pred, pop, real, t, [j]) for t in TARGETS}) for j, n in enumerate(nfe)]
    first = cal.meta.get("first_result_nfe", nfe[0])
    first_result = next(j for j, n in enumerate(nfe) if n >= first)
    pooled = {}
    for name, sel in (("all", range(len(nfe) - 1)), ("after_first_result", range(first_result, len(nfe) - 1))):
        sel = list(sel)
        p = {t: target_metrics(pred, pop, real, t, sel) for t in TARGETS}
        for t in TARGETS:
            p[t]["spearman_pooled"] = spearman(pred[t][:, sel].flatten(), real[t][:, sel].flatten())
            p[t]["spearman_within_update_mean"] = float(np.nanmean([per[j][t]["spearman"] for j in sel]))
        p["flip"] = flip_metrics(pred, pop, real, sel, bins=True)
        pooled[name] = p
    return {"samples": int(signals.shape[0]), "per_update": per, "pooled": pooled}


def load_chunks(paths: Sequence[Path]) -> dict:
    """Concatenate chunk files along the sample axis (positions taken from the first)."""
    docs = [dict(np.load(p)) for p in paths]
    if not docs:
        raise FileNotFoundError("calibration runs: no chunk files")
    out = {k: docs[0][k] for k in ("nfe", "outer_step", "inner_step", "t")}
    for k in ("updates", "firsts", "var", "seeds", "labels"):
        out[k] = np.concatenate([d[k] for d in docs])
    return out


PIXEL_SIGNALS = tuple(s for s in SIGNALS if s not in FEATURE_SIGNALS)


def calibration_set(paths: Sequence[Path], inner_steps: Sequence[int], classifier: torch.nn.Module,
                    feature_signals: bool = True) -> dict:
    """Signals (N, U, S) and targets of the chunk files ``paths``, with a FashionClassifier-like ``classifier``
    (``body`` → features, ``head`` → logits) as the semantic distance's network and, with ``feature_signals``,
    as the feature function of the feature signals."""
    chunk = load_chunks(paths)
    fn = classifier_signals(classifier)
    signals = replay_signals(chunk, inner_steps, fn if feature_signals else None)
    targets = chunk_targets(chunk, lambda x: fn(x)[0], lambda x: fn(x)[1])
    return {"signals": signals, "targets": targets, "nfe": [int(n) for n in chunk["nfe"]],
            "seeds": chunk["seeds"].tolist()}
