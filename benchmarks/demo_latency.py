"""Latency of the README demo on the bundled model, float32 against the chosen compute dtype, on the path users run.

Side by side, interleaved, for the demo's default settings (10 classes, the family's run defaults: the progressive
schedule, guidance 1.25; ``--schedule uniform --outer 5 --inner 20`` for the paper's split):
* ``generate --dtype D`` in-process: ``nested_diffusion.cli.main(["generate", ...])`` — the exact function the
  command runs (argument parsing, model load, streaming, per-update lines, writing PNG/GIF/JSON); first preview,
  first finished image and end of sampling are read from the ``elapsed_s`` it records in updates.json — for
  D = float32 and D = ``--dtype`` (default: the family's, ``bundled.RUN_DEFAULTS.dtype``);
* the bare API: ``NestedSampler.stream`` as in the README (the same model and run), for both dtypes;
* ``generate`` as a subprocess at the default dtype (once per repeat): its whole wall time and start-up.
Prints D / float32 for the first finished image and for the whole sampling (target ≤ 0.6), and the sampling-time
ratio command / API (target ≤ 1.1).

``--fd-samples N`` adds the quality side: N samples (sample i: seed ``--fd-seed`` + i, class i mod 10) of the same
run in both dtypes, final images only, through the same sampler ``generate`` builds; FD on the project
classifier's features to the Fashion-MNIST test split, and the relative change D vs float32 with its paired
bootstrap spread (target ≤ 1%).

Usage: python benchmarks/demo_latency.py [--threads 2] [--repeats 3] [--fd-samples 2000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nested_diffusion import NestedSampler
from nested_diffusion.bundled import RUN_DEFAULTS, load_unet, make_denoiser
from nested_diffusion.cli import main as cli_main
from nested_diffusion.core.run import resolve_run


def api_run(sampler, labels):
    first = first_result = last = None
    for u in sampler.stream(list(range(len(labels))), (len(labels), 1, 28, 28), cond=labels):
        first = first if first is not None else u.elapsed
        if first_result is None and u.source == "inner_result":
            first_result = u.elapsed
        last = u.elapsed
    return first, first_result, last


def from_records(path: Path):
    ups = json.loads(path.read_text())["updates"]
    first_result = next(u["elapsed_s"] for u in ups if u["source"] == "inner_result")
    return ups[0]["elapsed_s"], first_result, ups[-1]["elapsed_s"]


def run_options(args) -> dict:
    if args.schedule == "uniform":
        return dict(outer_steps=args.outer, inner_steps=args.inner)
    return dict(schedule=None if args.schedule == "default" else args.schedule, nfe=args.nfe)


def command_args(out: str, args, dtype: str | None) -> list[str]:
    if args.schedule == "uniform":
        shape = ["--schedule", "uniform", "--outer", str(args.outer), "--inner", str(args.inner)]
    else:
        shape = ([] if args.schedule == "default" else ["--schedule", args.schedule]) + \
            ([] if args.nfe is None else ["--nfe", str(args.nfe)])
    return ["generate", "--out", out, *shape, "--threads", str(args.threads), "--quiet",
            *(["--dtype", dtype] if dtype else [])]


def sampler_of(model, run):
    return NestedSampler.from_run(make_denoiser(model, run.guidance), run)


def fd_change(args, runs: dict, models: dict) -> None:
    """FD of the final images in both dtypes on the same seeds; paired bootstrap of the relative change
    (``evaluation.runners.FDEvaluator``: the same resampling for both)."""
    from nested_diffusion.bundled.features import load_feature_classifier
    from nested_diffusion.bundled.reference import fashion_reference
    from nested_diffusion.evaluation.features import quantize
    from nested_diffusion.evaluation.runners import FDEvaluator
    from nested_diffusion.evaluation.snapshots import Snapshots
    ref = fashion_reference(load_feature_classifier(), heldout=args.fd_samples,
                            cache_dir=Path("runs/demo_latency/reference"))
    ev = FDEvaluator(ref, args.fd_samples, 200, args.fd_seed)
    out = {}
    for name, run in runs.items():
        sampler, t0, finals = sampler_of(models[name], run), time.perf_counter(), []
        for lo in range(0, args.fd_samples, 250):
            idx = list(range(lo, min(args.fd_samples, lo + 250)))
            x = sampler.sample([args.fd_seed + i for i in idx], (len(idx), 1, 28, 28),
                               cond=torch.tensor([i % 10 for i in idx])).x0
            finals.append(quantize(x))
        snaps = Snapshots([torch.cat(finals)], [0], [sampler.total_nfe], [], [], [], {})
        fd, boot = ev(snaps, ev.features(snaps))
        out[name] = (fd[0], boot[:, 0])
        print(f"{name}: {args.fd_samples} samples in {time.perf_counter() - t0:.0f} s, FD {fd[0]:.4f}", flush=True)
    (a, ra), (b, rb) = out["float32"], out[args.dtype]
    rel = (rb - ra) / ra
    print(f"FD change {args.dtype} vs float32: {100 * (b - a) / a:+.2f}% (paired bootstrap std "
          f"{100 * float(rel.std()):.2f}%, 95% [{100 * float(rel.quantile(0.025)):+.2f}%, "
          f"{100 * float(rel.quantile(0.975)):+.2f}%]; {args.fd_samples} samples, seeds {args.fd_seed}.."
          f"{args.fd_seed + args.fd_samples - 1}; target ≤ 1%)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (0: only the FD part)")
    ap.add_argument("--dtype", choices=("bfloat16",), default="bfloat16",
                    help="the dtype compared with float32 (the bundled model offers float32 and bfloat16)")
    ap.add_argument("--schedule", choices=("default", "progressive", "ramp", "uniform"), default="default",
                    help="default: the family's (bundled.RUN_DEFAULTS)")
    ap.add_argument("--nfe", type=int, default=None, help="named schedules: inner steps in total (default: the "
                                                          "family's)")
    ap.add_argument("--outer", type=int, default=5, help="uniform")
    ap.add_argument("--inner", type=int, default=20, help="uniform")
    ap.add_argument("--fd-samples", type=int, default=0, help="also measure the FD change on this many samples")
    ap.add_argument("--fd-seed", type=int, default=300000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtypes = ("float32", args.dtype)
    t0 = time.perf_counter()
    models = {d: load_unet(dtype=d) for d in dtypes}
    load_s = (time.perf_counter() - t0) / 2
    runs = {d: resolve_run(defaults=RUN_DEFAULTS, dtype=d, **run_options(args)) for d in dtypes}
    if args.repeats < 1:
        return fd_change(args, runs, models) if args.fd_samples else None
    labels = torch.arange(10)
    nested = {d: sampler_of(models[d], runs[d]) for d in dtypes}
    for d in dtypes:
        api_run(NestedSampler(make_denoiser(models[d], 1.0), 1, 2, "ddpm"), labels)  # warm-up
    rows = {f"generate --dtype {d}": [] for d in dtypes} | {f"API {d}": [] for d in dtypes}
    startup = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for d in dtypes:
                out = f"{tmp}/in{r}{d}"
                assert cli_main(command_args(out, args, d)) == 0
                rows[f"generate --dtype {d}"].append(from_records(Path(out) / "updates.json"))
                rows[f"API {d}"].append(api_run(nested[d], labels))
            t0 = time.perf_counter()
            out = f"{tmp}/sub{r}"
            subprocess.run([sys.executable, "-m", "nested_diffusion.cli", *command_args(out, args, None)], check=True)
            wall = time.perf_counter() - t0
            startup.append((wall, wall - from_records(Path(out) / "updates.json")[2]))
    s = nested["float32"]
    print(f"torch {torch.__version__}, {args.threads} threads, batch 10 (one per class), {runs['float32'].schedule} "
          f"{'+'.join(map(str, s.inner_steps))} {runs['float32'].solver_name}, guidance {runs['float32'].guidance}, "
          f"median of {args.repeats}; model load {load_s:.2f} s; default dtype {RUN_DEFAULTS.dtype}")
    med = {name: [statistics.median(v) for v in zip(*r)] for name, r in rows.items()}
    for name, (first, first_res, total) in med.items():
        print(f"{name:26s} first preview {first:.3f} s   first finished image {first_res:.3f} s   "
              f"sampling {total:.2f} s")
    wall, start = (statistics.median(v) for v in zip(*startup))
    print(f"generate as a subprocess (default dtype): wall {wall:.2f} s, of which start-up, load and writing files "
          f"{start:.2f} s")
    a, b = med["generate --dtype float32"], med[f"generate --dtype {args.dtype}"]
    print(f"{args.dtype} / float32 (generate): first finished image {b[1] / a[1]:.3f}, sampling {b[2] / a[2]:.3f} "
          f"(target ≤ 0.6)")
    for d in dtypes:
        print(f"ratio generate/API sampling time at {d}: {med[f'generate --dtype {d}'][2] / med[f'API {d}'][2]:.3f} "
              f"(target ≤ 1.1)")
    if args.fd_samples:
        fd_change(args, runs, models)


if __name__ == "__main__":
    main()
