"""Metrics of finished sample sets, without sampling: FD at every NFE mark, the anytime AUC, FD at fractions of
the budget (Table 3's readout) and consistency with the final image (Fig. 11), for runs made by
``nested-diffusion sample`` (read back as ``Snapshots`` by ``distributed.SampleStore.snapshots``), so FD/AUC of
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
from typing import Callable, Sequence

import torch

from ..io import atomic_write_json
from .auc import anytime_auc, nfe_marks, values_at_marks
from .consistency import consistency_curves
from .distances import bootstrap_counts, fd_noise_floor, percentile_interval, weighted_stats
from .frechet import FrechetToReference
from .features import extract_features
from .reference import EvalReference
from .snapshots import Snapshots

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class SampleSet:
    """One configuration's samples: ``snaps.marks`` are the stored NFE marks (ending at ``total_nfe``)."""

    label: str
    outer: int
    inner: int
    total_nfe: int
    snaps: Snapshots
    info: dict | None = None


def fd_per_mark(snaps: Snapshots, reference: EvalReference, counts: torch.Tensor | None = None):
    """FD at each stored mark (computed once per distinct snapshot) and, with bootstrap ``counts`` (R, N), the
    (R, marks) replicates."""
    fd = FrechetToReference(reference.stats)
    feats = [extract_features(reference.extractor, img) for img in snaps.images]
    point = [fd.of_features(f) for f in feats]
    per_mark = [point[j] for j in snaps.mark_index]
    if counts is None:
        return per_mark, None
    boot = torch.stack([fd(*weighted_stats(f, counts)) for f in feats], dim=1)
    return per_mark, boot[:, snaps.mark_index]


def _spread(v: torch.Tensor) -> dict:
    v = v.to(torch.float64)
    return dict(std=float(v.std()), percentile95=percentile_interval(v.tolist()))


def _fd_row(s: SampleSet, reference: EvalReference, counts, step: int, fractions: Sequence[float]) -> dict:
    grid = nfe_marks(s.total_nfe, step)
    fd, boot = fd_per_mark(s.snaps, reference, counts)
    on_grid = values_at_marks(s.snaps.marks, fd, grid)
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
        stored = m >= s.snaps.marks[0]   # None: the run stored no result this early
        budget.append(dict(fraction=f, nfe=m, fd=values_at_marks(s.snaps.marks, fd, [m])[0] if stored else None))
    row["budget"] = budget
    if boot is not None and row["auc"] is not None:
        reps = [values_at_marks(s.snaps.marks, b.tolist(), grid) for b in boot]
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
    t0, rows = time.time(), []
    sizes = {s.snaps.images[0].shape[0] for s in sets}
    counts = bootstrap_counts(sizes.pop(), bootstrap, seed) if bootstrap > 0 and len(sizes) == 1 else None
    if bootstrap > 0 and counts is None:
        raise ValueError("bootstrap: the sets hold different sample counts; pairing needs equal counts")
    for s in sets:
        n = s.snaps.images[0].shape[0]
        row = dict(label=s.label, outer=s.outer, inner=s.inner, total_nfe=s.total_nfe, samples=n,
                   stored_marks=list(s.snaps.marks), sampler=s.info,
                   distinct_update_nfes=[s.snaps.update_nfes[j] for j in sorted(set(s.snaps.mark_index))])
        if reference is not None:
            row.update(_fd_row(s, reference, counts, step, fractions))
            if counts is not None and rows and "_auc_reps" in row and "_auc_reps" in rows[0]:
                d = row["_auc_reps"] - rows[0]["_auc_reps"]
                row["auc_minus_first"] = dict(point=row["auc"] - rows[0]["auc"], **_spread(d))
            if log:
                auc = "n/a" if row["auc"] is None else f"{row['auc']:.2f}"
                log(f"{s.label}: AUC {auc}, final FD {row['final_fd']:.4g} ({n} samples)")
        if metrics:
            row["consistency"] = consistency_curves(s.snaps, metrics)
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
