"""Plots and a markdown table for docs/RESULTS.md from a calibration file and its held-out chunks.

    .venv/bin/python scripts/expected_change_report.py --calibration CAL.json --cache runs/expected-change/5x20 \
        --heldout 200000:202000 --name 5x20 --out docs/results/expected-change

Writes <name>-scatter.png (predicted vs realised D, held-out, four updates), <name>-per-update.png (MAE of the
per-sample predictor and the population curve, Spearman, 80% coverage per update) and <name>-flip.png
(reliability diagram of the flip probability); prints the pooled numbers as markdown.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nested_diffusion.core.expected_change import TARGETS, load_calibration  # noqa: E402
from nested_diffusion.evaluation.expected_change import calibration_set, evaluate, predictions  # noqa: E402
from nested_diffusion.bundled.features import load_feature_classifier  # noqa: E402
from nested_diffusion.io import atomic_write_json  # noqa: E402

LABEL = {"rmse": "pixel RMSE on [0, 1]", "semantic": "1 − cos (classifier features)"}


def chunk_paths(cache: Path, lo: int, hi: int) -> list[Path]:
    out = []
    for p in sorted(cache.glob("chunk-*.npz")):
        a, b = (int(x) for x in p.stem.split("-")[1:3])
        if lo <= a and b < hi:
            out.append(p)
    return out


def scatter(pred, real, nfe, name, out):
    U = len(nfe)
    picks = sorted({0, U // 6, U // 2, U - 2} if U > 4 else set(range(U - 1)))
    fig, axes = plt.subplots(2, len(picks), figsize=(3.2 * len(picks), 6.2), squeeze=False)
    for r, t in enumerate(TARGETS):
        for c, j in enumerate(picks):
            ax = axes[r][c]
            x, y = pred[t][:, j].clamp_min(1e-6), real[t][:, j].clamp_min(1e-6)
            ax.scatter(x, y, s=3, alpha=0.3)
            lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xscale("log"), ax.set_yscale("log")
            ax.set_title(f"NFE {nfe[j]}: {t}", fontsize=9)
            ax.set_xlabel("predicted (mean)", fontsize=8), ax.set_ylabel("realised", fontsize=8)
    fig.suptitle(f"{name}: predicted vs realised remaining change (held-out)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / f"{name}-scatter.png", dpi=110)
    plt.close(fig)


def per_update(ev, name, out):
    per = ev["per_update"][:-1]
    nfe = [p["nfe"] for p in per]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for t, style in zip(TARGETS, ("-", "--")):
        axes[0].plot(nfe, [p[t]["mae"] / p[t]["mae_population"] for p in per], style, label=t)
        axes[1].plot(nfe, [p[t]["spearman"] for p in per], style, label=t)
        axes[2].plot(nfe, [p[t]["coverage_80"] for p in per], style, label=t)
    axes[0].set_title("MAE per-sample / MAE population curve", fontsize=9)
    axes[1].set_title("Spearman (predicted vs realised)", fontsize=9)
    axes[2].set_title("80% interval coverage", fontsize=9)
    axes[2].axhspan(0.75, 0.85, color="g", alpha=0.1)
    for ax in axes:
        ax.set_xlabel("NFE of the update"), ax.legend(fontsize=8), ax.grid(alpha=0.3)
    fig.suptitle(f"{name}: held-out, per update", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / f"{name}-per-update.png", dpi=110)
    plt.close(fig)


def flip_plot(ev, name, out):
    pooled = ev["pooled"]["all"]["flip"]
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for key, lab in (("reliability", "per-sample"), ("reliability_population", "population rate")):
        pts = [(b["predicted"], b["observed"], b["count"]) for b in pooled[key] if b["count"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=lab, ms=4)
        for p in pts:
            ax.annotate(str(p[2]), (p[0], p[1]), fontsize=6)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("predicted flip probability"), ax.set_ylabel("observed flip frequency")
    ax.set_title(f"{name}: flip reliability (Brier {pooled['brier']:.4f} vs {pooled['brier_population']:.4f})",
                 fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{name}-flip.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--heldout", required=True, help="lo:hi held-out seeds")
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/results/expected-change"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    cal = load_calibration(a.calibration)
    steps = [int(s) for s in cal.config["sampler"]["inner_steps"]]
    fx = load_feature_classifier()
    feat = cal.uses_feature_signals()
    lo, hi = (int(x) for x in a.heldout.split(":"))
    ho = calibration_set(chunk_paths(a.cache, lo, hi), steps, fx.classifier, feat)
    ev = evaluate(cal, ho["signals"], ho["targets"], ho["nfe"])
    ev.update(calibration=cal.hash, heldout_samples=len(ho["seeds"]), heldout_seeds=[min(ho["seeds"]),
                                                                                     max(ho["seeds"])])
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out / f"{a.name}-evaluation.json", ev)
    scatter(predictions(cal, ho["signals"], ho["nfe"]), ho["targets"], ho["nfe"], a.name, a.out)
    per_update(ev, a.name, a.out)
    flip_plot(ev, a.name, a.out)
    print(f"{a.name}: {len(ho['seeds'])} held-out samples, calibration {cal.hash} "
          f"({cal.meta.get('samples')} samples, signals {cal.meta.get('signals')})")
    print("| updates | distance | MAE mean / population | reduction | MAE median / pop. median | reduction "
          "| Spearman pooled / within update | 80% coverage (population) |")
    for part in ("all", "after_first_result"):
        for t in TARGETS:
            p = ev["pooled"][part][t]
            print(f"| {part} | {t} | {p['mae']:.4f} / {p['mae_population']:.4f} | {100 * p['mae_reduction']:.0f}% "
                  f"| {p['mae_median_point']:.4f} / {p['mae_population_median']:.4f} "
                  f"| {100 * p['mae_reduction_median']:.0f}% | {p['spearman_pooled']:.2f} / "
                  f"{p['spearman_within_update_mean']:.2f} | {p['coverage_80']:.3f} ({p['coverage_80_population']:.3f}) |")
        f = ev["pooled"][part]["flip"]
        print(f"| {part} | flip: Brier {f['brier']:.4f} vs population rate {f['brier_population']:.4f} "
              f"(rate {f['rate']:.3f}) | | | | | | |")
    print(json.dumps({p["nfe"]: [round(p[t]["spearman"], 2) for t in TARGETS] for p in ev["per_update"][:-1]}))


if __name__ == "__main__":
    main()
