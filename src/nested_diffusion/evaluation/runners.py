"""Experiment runners (the paper's Table 1, Table 3, Fig. 9, Fig. 10 and Fig. 11, at this project's scale).

Every runner: one sampling run per configuration (snapshotted at each NFE mark through the anytime stream, never
rerun per budget), cached per (configuration, chunk of seeds), the same seeds and labels under every configuration,
and a JSON (+ PNG) written atomically. Distances are Fréchet distances on the reference's feature network — not
Inception FID unless that network is Inception — with a paired bootstrap spread and the FD noise floor at the
sample count (FD of real held-out images of the same N).
"""
from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from .. import __version__
from ..io import atomic_write_json
from . import plots
from .auc import DEFAULT_STEP, anytime_auc, nfe_marks, parse_configs
from .consistency import consistency_curves
from .distances import (FrechetToReference, bootstrap_counts, fd_noise_floor, kid_from_features, percentile_interval,
                        precision_recall, subset, weighted_stats)
from .features import dequantize, extract_features
from .reference import EvalReference
from .snapshots import SamplerFactory, Snapshots, collect_config_snapshots, config_label

SCHEMA_VERSION = 1
RND_CONFIGS = ((1, 200), (2, 100), (4, 50), (5, 40), (10, 20), (20, 10))   # Table 1
BUDGETS = (100, 150, 200, 250)                                              # Table 3
FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
CONSISTENCY_CONFIGS = ((2, 100), (4, 50), (5, 40), (10, 20))


def _common(factory: SamplerFactory, n: int, seed: int, t_start: float) -> dict:
    return dict(schema_version=SCHEMA_VERSION, samples=n, seed=seed, seeds=list(range(seed, seed + n)),
                seed_rule="sample i uses seed `seed + i` and the same conditioning under every configuration",
                sampler=factory.info, guidance=factory.info.get("guidance"),
                versions=dict(nested_diffusion=__version__, torch=torch.__version__, python=platform.python_version()),
                threads=torch.get_num_threads(), started=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_start)))


def _check_common(n_samples: int, chunk: int, bootstrap: int, min_samples: int = 2) -> None:
    for name, v, low in (("n_samples", n_samples, min_samples), ("chunk", chunk, 1), ("bootstrap", bootstrap, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name}: must be an integer ≥ {low}, got {v!r}")


def _timing(col: dict, metric_s: float, total_nfe: int) -> dict:
    t = dict(col)
    t["metric_s"] = metric_s
    image_nfe = t["samples_computed"] * total_nfe
    t["image_nfe_per_s"] = image_nfe / t["sampling_s"] if t["sampling_s"] > 0 else None
    t["model_image_nfe_per_s"] = image_nfe / t["denoiser_s"] if t["denoiser_s"] > 0 else None
    return t


def _total_timing(parts: Sequence[dict]) -> dict:
    """Where the time went: model forwards (denoiser calls) vs sampler code vs snapshotting vs metrics."""
    keys = ("sampling_s", "denoiser_s", "decode_s", "sampler_overhead_s", "snapshot_s", "metric_s",
            "samples_computed")
    return {k: sum(p[k] for p in parts) for k in keys}


class FDEvaluator:
    """FD at every mark of a Snapshots set, with paired bootstrap replicates (same counts for every set)."""

    def __init__(self, ref: EvalReference, n: int, replicates: int, seed: int):
        if ref.heldout is not None and ref.heldout.shape[0] < n:  # checked before any sampling
            raise ValueError(f"reference: the noise-floor pool has {ref.heldout.shape[0]} held-out samples, fewer "
                             f"than n_samples={n}; give a larger held-out set")
        self.ref, self.fd = ref, FrechetToReference(ref.stats)
        self.description = getattr(ref.extractor, "description", ref.stats.extractor_id)
        self.counts = bootstrap_counts(n, replicates, seed) if replicates > 0 else None

    def features(self, snaps: Snapshots) -> list[torch.Tensor]:
        return [extract_features(self.ref.extractor, img) for img in snaps.images]

    def __call__(self, snaps: Snapshots, feats: list[torch.Tensor]) -> tuple[list[float], torch.Tensor | None]:
        fd = [self.fd.of_features(f) for f in feats]
        per_mark = [fd[j] for j in snaps.mark_index]
        if self.counts is None:
            return per_mark, None
        boot = torch.stack([self.fd(*weighted_stats(f, self.counts)) for f in feats], dim=1)   # (R, distinct)
        return per_mark, boot[:, snaps.mark_index]                                            # (R, marks)


def bootstrap_spread(values: torch.Tensor | Sequence[float]) -> dict:
    """Bootstrap spread. Resampling with replacement duplicates samples, which inflates FD: the replicates' mean
    sits above the point estimate, so read ``std`` as the spread; differences of paired replicates (same counts
    for every configuration) largely cancel that bias."""
    v = torch.as_tensor(values, dtype=torch.float64)
    return dict(mean=float(v.mean()), std=float(v.std()), percentile95=percentile_interval(v.tolist()))


def _scores(snaps: Snapshots, scores: Sequence, seed: int) -> dict:
    """Per-sample scores (e.g. CLIP score to each sample's prompt) at every mark: mean/std over samples, computed
    once per distinct snapshot. A score is ``score(images (N, C, H, W) uint8, sample indices) -> (N,)``."""
    out = {}
    idx = [s - seed for s in snaps.seeds]
    for sc in scores:
        per = []
        for img in snaps.images:
            v = torch.as_tensor(sc(img, idx)).detach().reshape(-1).double().cpu()
            if v.shape[0] != len(idx) or not bool(torch.isfinite(v).all()):
                raise ValueError(f"score {sc.name!r}: expected {len(idx)} finite per-sample values, got {v.tolist()}")
            per.append(v)
        out[sc.name] = dict(mean=[float(per[j].mean()) for j in snaps.mark_index],
                            std=[float(per[j].std()) if len(idx) > 1 else 0.0 for j in snaps.mark_index])
    return out


def _floor(ev: FDEvaluator, n: int, seed: int) -> dict | None:
    if ev.ref.heldout is None:
        return None
    return fd_noise_floor(ev.fd, ev.ref.heldout, n, repeats=5, seed=seed)


def config_fields(config, sampler) -> dict:
    """A result row's name for one configuration: outer/inner/label for OUTERxINNER (as always); for a named
    schedule also ``schedule`` and the sampler's inner steps (a list) and outer times."""
    if not isinstance(config, str):
        return dict(outer=config[0], inner=config[1], label=config_label(config))
    return dict(outer=sampler.outer_steps, inner=list(sampler.inner_steps), label=config, schedule=config,
                outer_times=[int(t) for t in sampler.times[:-1]])


def _build_all(factory: SamplerFactory, configs, total_nfe: int) -> dict:
    """Every configuration's sampler, built (validated) before any sampling; each must spend ``total_nfe``."""
    samplers = {c: factory.make(c, total_nfe) for c in configs}
    bad = [f"{config_label(c)} ({s.total_nfe} NFE)" for c, s in samplers.items() if s.total_nfe != total_nfe]
    if bad:
        raise ValueError(f"configs: every configuration must spend total_nfe={total_nfe} NFE; not {', '.join(bad)}")
    return samplers


# ---------------------------------------------------------------------------------------------------- Table 1
def run_rnd_sweep(factory: SamplerFactory, reference: EvalReference, out_dir: str | os.PathLike,
                  configs: Sequence = RND_CONFIGS, total_nfe: int = 200, step: int = DEFAULT_STEP,
                  n_samples: int = 2000, seed: int = 0, chunk: int = 100, bootstrap: int = 200,
                  cache_dir: str | os.PathLike | None = None, kid: bool = True,
                  log: Callable[[str], None] | None = print, scores: Sequence = ()) -> dict:
    """AUC (Δ Σ ln FD) and final FD for each outer×inner split of ``total_nfe``; FD-per-NFE curves (Fig. 9).
    ``scores``: per-sample scores also reported at every mark (e.g. ``pipelines.factories.prompt_score``: CLIP
    score to each sample's prompt). A reference without features (statistics only) gives FD without KID and
    precision/recall."""
    t_start, out = time.time(), Path(out_dir)
    configs = parse_configs(configs)
    marks = nfe_marks(total_nfe, step)
    _check_common(n_samples, chunk, bootstrap, min_samples=4)       # precision/recall with k = 3 needs > 3
    samplers = _build_all(factory, configs, total_nfe)      # validates every configuration before sampling
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    ev = FDEvaluator(reference, n_samples, bootstrap, seed)
    rows = []
    for c in configs:
        snaps = collect_config_snapshots(factory, c, total_nfe, n_samples, seed, marks, cache, chunk, log)
        t0 = time.perf_counter()
        feats = ev.features(snaps)
        row = _rnd_row(ev, snaps, feats, config_fields(c, samplers[c]), marks, total_nfe, step,
                       rows[0] if rows else None)
        final = feats[snaps.mark_index[-1]]
        if scores:
            row["scores"] = _scores(snaps, scores, seed)
        row.update(_final_set_metrics(reference, final, n_samples, seed, kid))
        row["timing"] = _timing(snaps.timing, time.perf_counter() - t0, total_nfe)
        rows.append(row)
        if log:
            log(f"{row['label']}: AUC {row['auc']:.2f}, final FD {row['final_fd']:.4g}")
    for row in rows:
        row.pop("_auc_reps", None)
        row.pop("_final_reps", None)
    floor = _floor(ev, n_samples, seed)
    doc = dict(experiment="rnd_sweep", **_common(factory, n_samples, seed, t_start), total_nfe=total_nfe, step=step,
               marks=marks, auc_definition="step * sum_{n=step..total_nfe} ln FD(n), natural log, FD of the anytime "
               "result after n NFE (step function)", metric=f"Fréchet distance on {ev.description}",
               feature_network=reference.stats.extractor_id, reference=reference.info(),
               noise_floor=floor,
               auc_at_noise_floor=None if floor is None else len(marks) * step * math.log(floor["mean"]),
               bootstrap=dict(replicates=bootstrap, seed=seed, paired=True, level=0.95), configs=rows,
               scores={sc.name: getattr(sc, "description", sc.name) for sc in scores})
    doc["timing_total"] = _total_timing([r["timing"] for r in rows])
    doc["files"] = [plots.plot_fd_curves(doc, out / "rnd_fd_curves.png").name, "rnd_sweep.json"]
    doc["wall_time_s"] = time.time() - t_start
    atomic_write_json(out / "rnd_sweep.json", doc)
    return doc


def _rnd_row(ev: FDEvaluator, snaps: Snapshots, feats, name: dict, marks, total_nfe: int, step: int,
             first: dict | None) -> dict:
    """FD curve, AUC and final FD of one configuration, with bootstrap spreads and the paired difference to
    ``first`` (vanilla in Table 1's order); ``_auc_reps``/``_final_reps`` are kept for later rows."""
    fd, boot = ev(snaps, feats)
    row = dict(**name, fd=fd, auc=anytime_auc(dict(zip(marks, fd)), total_nfe, step),
               final_fd=fd[-1], distinct_update_nfes=[snaps.update_nfes[j] for j in sorted(set(snaps.mark_index))])
    if boot is None:
        return row
    row["fd_boot_std"] = boot.std(0).tolist()
    row["_auc_reps"] = torch.tensor([anytime_auc(dict(zip(marks, b.tolist())), total_nfe, step) for b in boot],
                                    dtype=torch.float64)
    row["_final_reps"] = boot[:, -1]
    row["auc_boot"], row["final_fd_boot"] = bootstrap_spread(row["_auc_reps"]), bootstrap_spread(row["_final_reps"])
    if first is not None:
        row["auc_minus_first"] = dict(point=row["auc"] - first["auc"],
                                      **bootstrap_spread(row["_auc_reps"] - first["_auc_reps"]))
        row["final_fd_minus_first"] = dict(point=row["final_fd"] - first["final_fd"],
                                           **bootstrap_spread(row["_final_reps"] - first["_final_reps"]))
    return row


def _final_set_metrics(reference: EvalReference, final, n_samples: int, seed: int, kid: bool) -> dict:
    """KID and k=3 precision/recall of the final samples (needs reference features, not only statistics)."""
    out = {}
    if reference.features is None:
        return out
    if kid:
        m, s = kid_from_features(reference.features, final, seed=seed)
        out["final_kid"] = dict(mean=m, std=s, subset_size=min(1000, n_samples, reference.features.shape[0]))
    out["final_precision_recall"] = precision_recall(subset(reference.features, n_samples, seed), final, k=3)
    return out


# ---------------------------------------------------------------------------------------------------- Table 3
def run_budget_table(factory: SamplerFactory, reference: EvalReference, out_dir: str | os.PathLike,
                     budgets: Sequence[int] = BUDGETS, fractions: Sequence[float] = FRACTIONS, nested_outer: int = 5,
                     step: int = DEFAULT_STEP, n_samples: int = 2000, seed: int = 0, chunk: int = 100,
                     bootstrap: int = 200, cache_dir: str | os.PathLike | None = None,
                     log: Callable[[str], None] | None = print, scores: Sequence = (),
                     nested_schedule: str | None = None) -> dict:
    """FD of vanilla's x̂0 preview vs nested (``nested_outer`` × N/outer, or the named schedule
    ``nested_schedule`` at N NFE, e.g. "progressive") at fractions of each budget N (and the mean of each of
    ``scores``, as in ``run_rnd_sweep``)."""
    t_start, out = time.time(), Path(out_dir)
    _check_common(n_samples, chunk, bootstrap)
    plan = budget_plans(factory, budgets, fractions, nested_outer, step, nested_schedule)  # before any sampling
    nested_schedule = None if nested_schedule is None else parse_configs(nested_schedule)[0]
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    ev = FDEvaluator(reference, n_samples, bootstrap, seed)
    rows, timing = [], {}
    for N, pair, fm, marks in plan:
        res = {}
        for name, c in zip(("vanilla", "nested"), pair):
            snaps = collect_config_snapshots(factory, c, N, n_samples, seed, marks, cache, chunk, log)
            t0 = time.perf_counter()
            fd, boot = ev(snaps, ev.features(snaps))
            res[name] = (fd, boot, marks, _scores(snaps, scores, seed))
            timing[f"{c}-{N}" if isinstance(c, str) else config_label(c)] = _timing(snaps.timing,
                                                                                   time.perf_counter() - t0, N)
        rows += [_budget_row(N, f, m, pair, res, marks) for f, m in zip(fractions, fm)]
        if log:
            log(f"budget {N}: " + ", ".join(f"{r['fraction']:.0%} {r['vanilla_fd']:.3g}/{r['nested_fd']:.3g}"
                                            for r in rows if r["budget"] == N))
    doc = dict(experiment="budget_table", **_common(factory, n_samples, seed, t_start), budgets=list(budgets),
               fractions=list(fractions), nested_outer=nested_outer,
               vanilla="x̂0 preview of a single run of N steps (the finished sample at 100%)",
               nested=(f"{nested_outer} outer steps × N/{nested_outer} inner" if nested_schedule is None else
                       f"schedule {nested_schedule!r} at N NFE") + "; result of the last finished inner run",
               metric=f"Fréchet distance on {ev.description}",
               feature_network=reference.stats.extractor_id, reference=reference.info(),
               noise_floor=_floor(ev, n_samples, seed), bootstrap=dict(replicates=bootstrap, seed=seed, paired=True),
               rows=rows, timing=timing, timing_total=_total_timing(list(timing.values())),
               scores={sc.name: getattr(sc, "description", sc.name) for sc in scores})
    doc["files"] = [plots.plot_budget_table(doc, out / "budget_table.png").name, "budget_table.json"]
    doc["wall_time_s"] = time.time() - t_start
    atomic_write_json(out / "budget_table.json", doc)
    return doc


def build_configs(factory: SamplerFactory, configs, total_nfe: int) -> dict:
    """Every configuration's sampler (``configs``: as ``parse_configs`` reads them), built — so validated — before
    anything is sampled or measured; ValueError naming ``configs`` otherwise."""
    return _build_all(factory, parse_configs(configs), total_nfe)


def budget_plans(factory: SamplerFactory, budgets, fractions, nested_outer: int, step: int,
                 nested_schedule: str | None = None) -> list:
    """The budget table's plan, one entry per budget, every sampler built (validated) before any work."""
    if nested_schedule is not None:
        nested_schedule = parse_configs(nested_schedule)[0]
        if not isinstance(nested_schedule, str):
            raise ValueError(f"nested_schedule: expected a schedule name, got {nested_schedule!r}")
    bad = [N for N in budgets if isinstance(N, bool) or not isinstance(N, int) or N < 1]
    if bad or not budgets:
        raise ValueError(f"budgets: each budget is a whole number of NFE ≥ 1, got {list(budgets)}")
    return [_budget_plan(factory, N, fractions, nested_outer, step, nested_schedule) for N in budgets]


def _budget_plan(factory: SamplerFactory, N: int, fractions, nested_outer: int, step: int,
                 nested_schedule: str | None = None):
    """(N, [vanilla, nested] configurations, NFE of each fraction, marks) for one budget."""
    if nested_schedule is None and N % nested_outer:
        raise ValueError(f"budgets: {N} NFE is not divisible into nested_outer={nested_outer} equal inner runs")
    fm = []
    for f in fractions:
        m = round(f * N)
        if not (0 < f <= 1) or abs(m - f * N) > 1e-9:
            raise ValueError(f"fractions: {f} of {N} NFE is not a whole NFE count in (0, {N}]")
        fm.append(m)
    pair = [(1, N), (nested_outer, N // nested_outer) if nested_schedule is None else nested_schedule]
    try:
        _build_all(factory, pair, N)
    except ValueError as e:
        raise ValueError(f"budgets: {N} NFE cannot be sampled ({e})") from None
    return N, pair, fm, sorted(set(nfe_marks(N, step)) | set(fm))


def _budget_row(N: int, f: float, m: int, pair, res: dict, marks) -> dict:
    row = dict(budget=N, fraction=f, nfe=m)
    for name, c in zip(("vanilla", "nested"), pair):
        fd, boot, mk, sc = res[name]
        row[f"{name}_config"] = config_label(c)
        row[f"{name}_fd"] = fd[mk.index(m)]
        for sname, v in sc.items():
            row[f"{name}_{sname}"] = v["mean"][mk.index(m)]
        if boot is not None:
            row[f"{name}_fd_boot_std"] = float(boot[:, mk.index(m)].std())
    if res["vanilla"][1] is not None:  # paired replicates: same resampling counts for both methods
        diff = res["nested"][1][:, marks.index(m)] - res["vanilla"][1][:, marks.index(m)]
        row["nested_minus_vanilla"] = dict(point=row["nested_fd"] - row["vanilla_fd"], **bootstrap_spread(diff))
    return row


# ---------------------------------------------------------------------------------------------------- Fig. 11
def run_consistency(factory: SamplerFactory, metrics: Sequence, out_dir: str | os.PathLike,
                    configs: Sequence = CONSISTENCY_CONFIGS, total_nfe: int = 200, step: int = DEFAULT_STEP,
                    n_samples: int = 2000, seed: int = 0, chunk: int = 100, cache_dir: str | os.PathLike | None = None,
                    log: Callable[[str], None] | None = print) -> dict:
    """Mean distance (± std, s.e.) of the anytime result at each mark from the final image, per configuration."""
    t_start, out = time.time(), Path(out_dir)
    configs = parse_configs(configs)
    marks = nfe_marks(total_nfe, step)
    _check_common(n_samples, chunk, 0)
    if not metrics:
        raise ValueError("metrics: give at least one consistency metric")
    samplers = _build_all(factory, configs, total_nfe)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    rows = []
    for c in configs:
        snaps = collect_config_snapshots(factory, c, total_nfe, n_samples, seed, marks, cache, chunk, log)
        t0 = time.perf_counter()
        curves = consistency_curves(snaps, metrics)
        rows.append(dict(**config_fields(c, samplers[c]), curves=curves,
                         timing=_timing(snaps.timing, time.perf_counter() - t0, total_nfe)))
    doc = dict(experiment="consistency", **_common(factory, n_samples, seed, t_start), total_nfe=total_nfe,
               step=step, marks=marks, metrics={m.name: m.kind for m in metrics},
               definition="per sample: metric(anytime result after n NFE, final result); mean/std/sem over samples; "
                          "mse on a [0, 1] pixel scale", configs=rows,
               timing_total=_total_timing([r["timing"] for r in rows]))
    doc["files"] = [plots.plot_consistency(doc, out / "consistency.png").name, "consistency.json"]
    doc["wall_time_s"] = time.time() - t_start
    atomic_write_json(out / "consistency.json", doc)
    return doc


# ---------------------------------------------------------------------------------------------------- Fig. 10
def run_qualitative(factory: SamplerFactory, out_dir: str | os.PathLike, configs: Sequence = RND_CONFIGS,
                    total_nfe: int = 200, samples: Sequence[int] = (0, 1, 2, 3), rows_every: int = 20,
                    seed: int = 0, cache_dir: str | os.PathLike | None = None, scale: int = 2,
                    log: Callable[[str], None] | None = print) -> dict:
    """Same seeds under each outer/inner ratio: one column per ratio, progression top to bottom."""
    t_start, out = time.time(), Path(out_dir)
    configs = parse_configs(configs)
    rows = nfe_marks(total_nfe, rows_every)
    samples = sorted({int(s) for s in samples})
    if not samples or samples[0] < 0:
        raise ValueError(f"samples: give non-negative sample indices, got {samples}")
    _build_all(factory, configs, total_nfe)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    n = samples[-1] + 1
    grids = {}
    for c in configs:
        snaps = collect_config_snapshots(factory, c, total_nfe, n, seed, rows, cache, n, log)
        grids[config_label(c)] = [dequantize(snaps.at(m)[samples]) for m in rows]
    doc = dict(experiment="qualitative", **_common(factory, len(samples), seed, t_start))
    doc.update(total_nfe=total_nfe, sample_indices=samples, seeds=[seed + s for s in samples], rows_nfe=rows,
               configs=[config_label(c) for c in configs])
    doc["files"] = [plots.qualitative_figure(grids, rows, samples, out / "qualitative.png", scale).name,
                    "qualitative.json"]
    doc["wall_time_s"] = time.time() - t_start
    atomic_write_json(out / "qualitative.json", doc)
    return doc
