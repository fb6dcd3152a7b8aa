"""Metrics of finished sample sets, without sampling: FD at every NFE mark, the anytime AUC, FD at fractions of
the budget (Table 3's readout) and consistency with the final image (Fig. 11), for runs made by
``nested-diffusion sample`` (read back item by item by ``distributed.SampleStore.iter_items``), so FD/AUC of
a 50K-sample run is one more command (``nested-diffusion eval from-samples``).

Sets stored at every update (``--step update``) or at another grid are read on the AUC grid Δ, 2Δ, … with the
step-function rule (the result current at n is the last update with nfe ≤ n).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..io import atomic_write_json
from .auc import anytime_auc, nfe_marks, values_at_marks
from .consistency import evaluate_metric
from .distances import bootstrap_counts, fd_noise_floor, percentile_interval, weighted_stats
from .frechet import FrechetToReference
from .features import extract_features
from .reference import EvalReference
from .snapshots import Snapshots

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class SampleSet:
    """One configuration's samples: ``parts()`` yields its work items as ``Snapshots`` in sample order (each
    with the same stored marks, ending at ``total_nfe``); it is read once, item by item, so only features and
    per-sample metric values are ever held in memory (a 50K-sample run of 256² RGB images fits)."""

    label: str
    outer: int
    inner: int
    total_nfe: int
    parts: Callable[[], Iterable[Snapshots]]
    info: dict | None = None

    @classmethod
    def of(cls, label: str, outer: int, inner: int, total_nfe: int, snaps: Snapshots,
           info: dict | None = None) -> "SampleSet":
        """A set held in memory (one ``Snapshots``)."""
        return cls(label, outer, inner, total_nfe, lambda: [snaps], info)


@dataclass
class SetSummary:
    """What the metrics need of a set: per distinct snapshot the features (N, d) and, per consistency metric,
    the N per-sample values against the final result."""

    marks: list
    mark_index: list
    update_nfes: list
    samples: int
    features: list | None
    values: dict


def summarize(sample_set: SampleSet, extractor=None, metrics: Sequence = ()) -> SetSummary:
    """One pass over the items: features of every distinct snapshot, consistency values against the final."""
    first, feats, values, n = None, None, {m.name: None for m in metrics}, 0
    for k, part in enumerate(sample_set.parts()):
        layout = (list(part.marks), list(part.mark_index), list(part.update_nfes))
        if first is None:
            first = layout
            feats = [[] for _ in part.images] if extractor is not None else None
            values = {m.name: [[] for _ in part.images] for m in metrics}
        elif layout != first:
            raise ValueError(f"{sample_set.label}: item {k} has other NFE marks or updates than item 0")
        final = part.final
        for j, img in enumerate(part.images):
            if feats is not None:
                feats[j].append(extract_features(extractor, img))
            for m in metrics:
                values[m.name][j].append(evaluate_metric(m, img, final))
        n += part.images[0].shape[0]
    if first is None:
        raise ValueError(f"{sample_set.label}: the set holds no samples")
    return SetSummary(*first, n, None if feats is None else [torch.cat(f) for f in feats],
                      {name: [torch.cat(v) for v in per] for name, per in values.items()})


def fd_per_mark(summary: SetSummary, reference: EvalReference, counts: torch.Tensor | None = None):
    """FD at each stored mark (once per distinct snapshot) and, with bootstrap ``counts`` (R, N), the (R, marks)
    replicates."""
    fd = FrechetToReference(reference.stats)
    point = [fd.of_features(f) for f in summary.features]
    per_mark = [point[j] for j in summary.mark_index]
    if counts is None:
        return per_mark, None
    boot = torch.stack([fd(*weighted_stats(f, counts)) for f in summary.features], dim=1)
    return per_mark, boot[:, summary.mark_index]


def consistency_rows(summary: SetSummary, metrics: Sequence) -> dict:
    """Mean, std and standard error over samples of each metric at each stored mark (as ``consistency_curves``)."""
    out = {}
    for m in metrics:
        per = [summary.values[m.name][j] for j in summary.mark_index]
        std = [float(v.std()) if v.numel() > 1 else 0.0 for v in per]
        out[m.name] = dict(kind=m.kind, mean=[float(v.mean()) for v in per], std=std,
                           sem=[x / summary.samples ** 0.5 for x in std])
    return out


def _spread(v: torch.Tensor) -> dict:
    v = v.to(torch.float64)
    return dict(std=float(v.std()), percentile95=percentile_interval(v.tolist()))


def _fd_row(s: SampleSet, summary: SetSummary, reference: EvalReference, counts, step: int,
            fractions: Sequence[float]) -> dict:
    grid = nfe_marks(s.total_nfe, step)
    fd, boot = fd_per_mark(summary, reference, counts)
    on_grid = values_at_marks(summary.marks, fd, grid)
    row = dict(fd_at_stored_marks=fd, fd=on_grid, auc=None, final_fd=fd[-1])
    try:
        row["auc"] = anytime_auc(dict(zip(grid, on_grid)), s.total_nfe, step)
    except ValueError as e:      # an FD of 0 (or −0.0…: a sample set equal to the reference) has no logarithm
        row["auc_error"] = str(e)
    budget = []
    for f in fractions:
        m = round(f * s.total_nfe)
        if not (0 < f <= 1) or m < 1:
            raise ValueError(f"fractions: {f} of {s.total_nfe} NFE is not in (0, 1]")
        stored = m >= summary.marks[0]   # None: the run stored no result this early
        budget.append(dict(fraction=f, nfe=m, fd=values_at_marks(summary.marks, fd, [m])[0] if stored else None))
    row["budget"] = budget
    if boot is not None and row["auc"] is not None:
        reps = [values_at_marks(summary.marks, b.tolist(), grid) for b in boot]
        row["_auc_reps"] = torch.tensor([anytime_auc(dict(zip(grid, r)), s.total_nfe, step) for r in reps])
        row["fd_boot_std"] = torch.tensor(reps).std(0).tolist()
        row["auc_boot"], row["final_fd_boot"] = _spread(row["_auc_reps"]), _spread(boot[:, -1])
    return row


def evaluate_sample_sets(sets: Sequence[SampleSet], reference: EvalReference | None = None,
                         metrics: Sequence = (), step: int = 10, fractions: Sequence[float] = FRACTIONS,
                         bootstrap: int = 0, seed: int = 0, out_dir: str | os.PathLike | None = None,
                         log: Callable[[str], None] | None = None) -> dict:
    """FD/AUC/budget rows (with ``reference``) and consistency curves (with ``metrics``) for every set; the
    bootstrap replicates are paired across sets of equal size (differences to the first set)."""
    if not sets:
        raise ValueError("sets: give at least one sample set")
    t0, rows, counts = time.time(), [], None
    extractor = None if reference is None else reference.extractor
    for s in sets:                                  # one set at a time: its features are dropped after its row
        summary = summarize(s, extractor, metrics)
        n = summary.samples
        if bootstrap > 0 and counts is None:
            counts = bootstrap_counts(n, bootstrap, seed)
        if counts is not None and counts.shape[1] != n:
            raise ValueError(f"bootstrap: {s.label} holds {n} samples, the first set {counts.shape[1]}; paired "
                             f"replicates need equal counts (or --bootstrap 0)")
        row = dict(label=s.label, outer=s.outer, inner=s.inner, total_nfe=s.total_nfe, samples=n,
                   stored_marks=summary.marks, sampler=s.info,
                   distinct_update_nfes=[summary.update_nfes[j] for j in sorted(set(summary.mark_index))])
        if reference is not None:
            row.update(_fd_row(s, summary, reference, counts, step, fractions))
            if counts is not None and rows and "_auc_reps" in row and "_auc_reps" in rows[0]:
                d = row["_auc_reps"] - rows[0]["_auc_reps"]
                row["auc_minus_first"] = dict(point=row["auc"] - rows[0]["auc"], **_spread(d))
            if log:
                auc = "n/a" if row["auc"] is None else f"{row['auc']:.2f}"
                log(f"{s.label}: AUC {auc}, final FD {row['final_fd']:.4g} ({n} samples)")
        if metrics:
            row["consistency"] = consistency_rows(summary, metrics)
        rows.append(row)
    for row in rows:
        row.pop("_auc_reps", None)
    doc = dict(experiment="from_samples", step=step, fractions=list(fractions), configs=rows,
               bootstrap=dict(replicates=bootstrap, seed=seed, paired=True),
               consistency_metrics={m.name: m.kind for m in metrics})
    if reference is not None:
        network = getattr(reference.extractor, "description", reference.stats.extractor_id)
        doc.update(feature_network=reference.stats.extractor_id, reference=reference.info(),
                   metric=f"Fréchet distance on {network}")
        n = rows[0]["samples"]
        if reference.heldout is not None and reference.heldout.shape[0] >= n:
            floor = fd_noise_floor(FrechetToReference(reference.stats), reference.heldout, n, repeats=5, seed=seed)
            doc["noise_floor"] = floor
            doc["auc_at_noise_floor"] = len(rows[0]["fd"]) * step * math.log(floor["mean"])
    doc["wall_time_s"] = time.time() - t0
    if out_dir is not None:
        write_report(doc, Path(out_dir))
    return doc


def write_report(doc: dict, out: Path) -> None:
    """``from_samples.json`` and, when every set spends the same NFE (and has an AUC), the FD-per-NFE figure."""
    out.mkdir(parents=True, exist_ok=True)
    files = ["from_samples.json"]
    rows = doc["configs"]
    plottable = all(r.get("auc") is not None for r in rows)        # log-FD axis: every FD positive
    if "feature_network" in doc and plottable and len({r["total_nfe"] for r in rows}) == 1:
        from . import plots
        fig = dict(doc, marks=nfe_marks(rows[0]["total_nfe"], doc["step"]), samples=rows[0]["samples"])
        files.insert(0, plots.plot_fd_curves(fig, out / "from_samples_fd.png").name)
    doc["files"] = files
    atomic_write_json(out / "from_samples.json", doc)
