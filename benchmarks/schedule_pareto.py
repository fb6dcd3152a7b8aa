"""The measured Pareto front of every schedule (and display rule) run at ≥ 2,000 samples: anytime AUC, final FD
and consistency (mean pixel RMSE of the shown image to the final over the marks; lower is better for all three).

Reads the ``schedules-*.json`` files ``benchmarks/schedule_search.py`` wrote (``--dir``), keeps those with at least
``--min-samples`` samples and the given budget, merges rows by name (the same seeds give the same numbers), prints
them sorted by AUC with the rows no other row beats on all of ``--criteria`` marked, and draws two panels:
AUC vs final FD and AUC vs consistency.

    python benchmarks/schedule_pareto.py --budget 100 --dir docs/results/frontier --out docs/results/frontier/pareto-100.png
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


def consistency(r: dict) -> float:
    """Mean pixel RMSE of the shown image to the final over the marks (older files: from the per-mark list)."""
    return r.get("mean_rmse_to_final", sum(r["rmse_to_final"]) / len(r["rmse_to_final"]))


CRITERIA = {"auc": lambda r: r["auc"], "final": lambda r: r["final_fd"], "consistency": consistency}


def pareto(rows: dict[str, dict], criteria=("auc", "final")) -> set[str]:
    """Names no other row beats on all ``criteria`` (lower is better for each)."""
    keys = [CRITERIA[c] for c in criteria]

    def dominated(a):
        return any(all(k(b) <= k(a) for k in keys) and any(k(b) < k(a) for k in keys) for b in rows.values())
    return {n for n, r in rows.items() if not dominated(r)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--dir", type=Path, default=Path("docs/results/schedules"))
    ap.add_argument("--min-samples", type=int, default=2000)
    ap.add_argument("--criteria", nargs="+", choices=sorted(CRITERIA), default=["auc", "final", "consistency"],
                    help="what a row must not lose on to be on the front (default: all three)")
    ap.add_argument("--skip", nargs="*", default=["+x0", "+fill0.75"],
                    help="rows whose name contains one of these are left out (default: the always-x̂0 rule and the "
                         "second fill fraction, to keep the plot readable; the JSON has them)")
    ap.add_argument("--out", type=Path, default=None, help="PNG of the plot (needs matplotlib)")
    args = ap.parse_args()
    rows = load_rows(args.dir, args.budget, args.min_samples)
    rows = {n: r for n, r in rows.items() if not any(s in n for s in args.skip)}
    if not rows:
        raise SystemExit(f"error: no schedules-*.json in {args.dir} at budget {args.budget} with ≥ "
                         f"{args.min_samples} samples")
    front = pareto(rows, args.criteria)
    print(f"budget {args.budget} NFE, {len(rows)} rows with ≥ {args.min_samples} samples (* = not beaten on all of "
          f"{', '.join(args.criteria)})")
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["auc"]):
        print(f"{'*' if name in front else ' '} {name:34s} AUC {r['auc']:7.2f}  final FD {r['final_fd']:.4f}  "
              f"RMSE to final {consistency(r):.3f}  first result @{r['first_result_nfe']:3d}  "
              f"({r['samples']} samples, {r['file']})")
    if args.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        for ax, (key, ylabel) in zip(axes, (("final", "final FD (lower is better)"),
                                            ("consistency", "mean pixel RMSE of the shown image to the final"))):
            for i, (name, r) in enumerate(sorted(rows.items(), key=lambda kv: kv[1]["auc"])):
                vanilla, ptr = name.startswith("vanilla"), name.startswith("ptr")
                y = CRITERIA[key](r)
                ax.scatter(r["auc"], y, marker="s" if vanilla else ("^" if ptr else "o"),
                           color="tab:red" if name in front else ("tab:gray" if vanilla else "tab:blue"), zorder=3)
                ax.annotate(name, (r["auc"], y), fontsize=6, xytext=(4, 4 if i % 2 else -9),
                            textcoords="offset points")
            ax.set_xlabel(f"anytime AUC = 10·Σ ln FD(n), n = 10 … {args.budget} NFE (lower is better)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        fig.suptitle(f"Schedules and display rules at {args.budget} NFE, bundled model, "
                     f"{min(r['samples'] for r in rows.values())} held-out samples (red: not beaten on all of "
                     f"{', '.join(args.criteria)}; squares: vanilla, triangles: preview-then-refine)", fontsize=9)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
