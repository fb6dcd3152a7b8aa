"""Issue 15: the measured Pareto front (anytime AUC vs final FD) of every schedule run at ≥ 2,000 samples.

Reads the ``schedules-*.json`` files ``benchmarks/schedule_search.py`` wrote (default: docs/results/schedules/),
keeps those with at least ``--min-samples`` samples and the given budget, merges rows by schedule name (the same
seeds give the same numbers), prints them sorted by AUC with the non-dominated ones marked, and draws the plot.

    python benchmarks/schedule_pareto.py --budget 100 --out docs/results/schedules/pareto-100.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_rows(folder: Path, budget: int, min_samples: int) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for path in sorted(folder.glob("schedules-*.json")):
        doc = json.loads(path.read_text())
        if doc["budget"] != budget or doc["samples"] < min_samples:
            continue
        for r in doc["rows"]:
            rows[r["config"]["name"]] = dict(r, samples=doc["samples"], seeds=doc["seeds"], file=path.name)
    return rows


def pareto(rows: dict[str, dict]) -> set[str]:
    """Names no other row beats on both AUC and final FD (lower is better for both)."""
    def dominated(a):
        return any(b["auc"] <= a["auc"] and b["final_fd"] <= a["final_fd"] and
                   (b["auc"] < a["auc"] or b["final_fd"] < a["final_fd"]) for b in rows.values())
    return {n for n, r in rows.items() if not dominated(r)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--dir", type=Path, default=Path("docs/results/schedules"))
    ap.add_argument("--min-samples", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=None, help="PNG of the plot (needs matplotlib)")
    args = ap.parse_args()
    rows = load_rows(args.dir, args.budget, args.min_samples)
    if not rows:
        raise SystemExit(f"error: no schedules-*.json in {args.dir} at budget {args.budget} with ≥ "
                         f"{args.min_samples} samples")
    front = pareto(rows)
    print(f"budget {args.budget} NFE, {len(rows)} schedules with ≥ {args.min_samples} samples (* = Pareto front)")
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["auc"]):
        print(f"{'*' if name in front else ' '} {name:28s} AUC {r['auc']:7.2f}  final FD {r['final_fd']:.4f}  "
              f"first result @{r['first_result_nfe']:3d}  class agreement {r['final_class_agreement']:.3f}  "
              f"({r['samples']} samples, {r['file']})")
    if args.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (name, r) in enumerate(sorted(rows.items(), key=lambda kv: kv[1]["auc"])):
            vanilla = name.startswith("vanilla")
            label = name if "guidance" in r["config"] else f"{name}-g2"
            ax.scatter(r["auc"], r["final_fd"], marker="s" if vanilla else "o",
                       color="tab:red" if name in front else ("tab:gray" if vanilla else "tab:blue"), zorder=3)
            ax.annotate(label, (r["auc"], r["final_fd"]), fontsize=7, xytext=(4, 4 if i % 2 else -10),
                        textcoords="offset points")
        pts = sorted((rows[n]["auc"], rows[n]["final_fd"]) for n in front)
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="tab:red", lw=1, alpha=0.6)
        ax.set_xlabel(f"anytime AUC = {10}·Σ ln FD(n), n = 10 … {args.budget} NFE (lower is better)")
        ax.set_ylabel("final FD (lower is better)")
        ax.set_title(f"Schedules at {args.budget} NFE, bundled model, {min(r['samples'] for r in rows.values())} "
                     f"samples (red: Pareto front; squares: vanilla)", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
