"""Latency of the README demo on the bundled model, measured on the path users run.

Side by side, interleaved, for the demo's default settings (10 classes, the progressive schedule at 100 NFE —
20 + 20 + 60 learned-variance DDPM inner steps — guidance 1.25; ``--schedule uniform --outer 5 --inner 20`` for
the paper's split):
* ``generate`` in-process: ``nested_diffusion.cli.main(["generate", ...])`` — the exact function the command runs
  (argument parsing, model load, streaming, per-update lines, writing PNG/GIF/JSON); first preview, first
  finished image and end of sampling are read from the ``elapsed_s`` it records in updates.json;
* the bare API: ``NestedSampler.stream`` as in the README, no context manager around it;
* ``generate`` as a subprocess (once per repeat): its whole wall time, and start-up = wall − sampling.
Prints the sampling-time ratio command / API (target ≤ 1.1).
Usage: python benchmarks/demo_latency.py [--threads 2] [--repeats 3]
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
from nested_diffusion.bundled import DEMO_GUIDANCE, load_unet, make_denoiser
from nested_diffusion.cli import main as cli_main


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


def command_args(out: str, args) -> list[str]:
    shape = (["--nfe", str(args.nfe)] if args.schedule == "progressive"
             else ["--outer", str(args.outer), "--inner", str(args.inner)])
    return ["generate", "--out", out, "--schedule", args.schedule, *shape, "--threads", str(args.threads), "--quiet"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--schedule", choices=("progressive", "uniform"), default="progressive")
    ap.add_argument("--nfe", type=int, default=100, help="progressive: inner steps in total")
    ap.add_argument("--outer", type=int, default=5, help="uniform")
    ap.add_argument("--inner", type=int, default=20, help="uniform")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = load_unet()
    load_s = time.perf_counter() - t0
    den = make_denoiser(model, DEMO_GUIDANCE)
    labels = torch.arange(10)
    nested = (NestedSampler.from_schedule(den, "progressive", args.nfe, "ddpm") if args.schedule == "progressive"
              else NestedSampler(den, args.outer, args.inner, "ddpm"))
    vanilla = NestedSampler(den, 1, nested.total_nfe, "ddpm")
    api_run(NestedSampler(den, 1, 2, "ddpm"), labels)  # warm-up
    rows = {"generate (in-process)": [], "API nested": [], "API vanilla": []}
    startup = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            out = f"{tmp}/in{r}"
            assert cli_main(command_args(out, args)) == 0
            rows["generate (in-process)"].append(from_records(Path(out) / "updates.json"))
            rows["API nested"].append(api_run(nested, labels))
            rows["API vanilla"].append(api_run(vanilla, labels))
            t0 = time.perf_counter()
            out = f"{tmp}/sub{r}"
            subprocess.run([sys.executable, "-m", "nested_diffusion.cli", *command_args(out, args)], check=True)
            wall = time.perf_counter() - t0
            startup.append((wall, wall - from_records(Path(out) / "updates.json")[2]))
    print(f"torch {torch.__version__}, {args.threads} threads, batch 10 (one per class), {args.schedule} "
          f"{'+'.join(map(str, nested.inner_steps))} ddpm, guidance {DEMO_GUIDANCE}, median of {args.repeats}; "
          f"model load {load_s:.2f} s")
    med = {name: [statistics.median(v) for v in zip(*r)] for name, r in rows.items()}
    for name, (first, first_res, total) in med.items():
        print(f"{name:22s} first preview {first:.3f} s   first finished image {first_res:.3f} s   "
              f"sampling {total:.2f} s")
    wall, start = (statistics.median(v) for v in zip(*startup))
    print(f"generate as a subprocess: wall {wall:.2f} s, of which start-up, load and writing files {start:.2f} s")
    ratio = med["generate (in-process)"][2] / med["API nested"][2]
    print(f"ratio generate/API sampling time: {ratio:.3f} (target ≤ 1.1); "
          f"nested/vanilla sampling: {med['API nested'][2] / med['API vanilla'][2]:.3f}")


if __name__ == "__main__":
    main()
