"""Latency of the README demo on the bundled model: model load, first x0 preview, first finished inner run
(the first garment-quality image), and the whole run, for the demo's default settings (10 classes, 5 × 20
learned-variance DDPM, guidance 2.0) and for vanilla sampling at the same NFE, side by side.

Targets (issue 3): ≤ 10 s of generation on 2 cores, first usable image ≤ 1 s after sampling starts.
Usage: python benchmarks/demo_latency.py [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from nested_diffusion import NestedSampler
from nested_diffusion.bundled import DEFAULT_GUIDANCE, load_unet, make_denoiser


def one_run(sampler, labels):
    first = first_result = None
    t0 = time.perf_counter()
    with torch.inference_mode():
        for u in sampler.stream(list(range(len(labels))), (len(labels), 1, 28, 28), cond=labels):
            first = first if first is not None else u.elapsed
            if first_result is None and u.source == "inner_result":
                first_result = u.elapsed
    return first, first_result, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--inner", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = load_unet()
    load_s = time.perf_counter() - t0
    den = make_denoiser(model, DEFAULT_GUIDANCE)
    labels = torch.arange(10)
    nested = NestedSampler(den, args.outer, args.inner, "ddpm")
    vanilla = NestedSampler(den, 1, args.outer * args.inner, "ddpm")
    one_run(NestedSampler(den, 1, 2, "ddpm"), labels)  # warm-up
    rows = {"nested": [], "vanilla": []}
    for _ in range(args.repeats):
        rows["nested"].append(one_run(nested, labels))
        rows["vanilla"].append(one_run(vanilla, labels))
    print(f"torch {torch.__version__}, {args.threads} threads, batch 10 (one per class), guidance {DEFAULT_GUIDANCE}, "
          f"median of {args.repeats}; model load {load_s:.2f} s")
    for name, r in rows.items():
        first, first_res, total = (statistics.median(v) for v in zip(*r))
        s = nested if name == "nested" else vanilla
        print(f"{name:8s} {s.outer_steps}×{s.inner_steps[0]:<3d} first preview {first:.3f} s   first finished "
              f"image {first_res:.3f} s   total {total:.2f} s ({total / s.total_nfe * 1e3:.1f} ms/NFE)")
    print(f"ratio nested/vanilla total time: {statistics.median(r[2] for r in rows['nested']) / statistics.median(r[2] for r in rows['vanilla']):.3f}")


if __name__ == "__main__":
    main()
