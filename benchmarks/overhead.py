"""Sampler overhead: nested vs vanilla wall time at equal NFE, measured side by side (interleaved repeats).

1. A near-free model (x ↦ 0.1·x): the time is almost all sampler code; prints µs per NFE for both.
2. A realistic small conv model (the bundled UNet architecture, random weights, batch 64): prints the ratio.
Target: ratio ≤ 1.02 with the realistic model; sampler overhead well under 1 ms per step.
Usage: python benchmarks/overhead.py [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from nested_diffusion import ModelDenoiser, NestedSampler, vanilla_sampler
from nested_diffusion.bundled import TinyUNet


def timed(sampler, shape, cond):
    t0 = time.perf_counter()
    sampler.sample(list(range(shape[0])), shape, cond=cond)
    return time.perf_counter() - t0


def compare(name, den, shape, cond, outer, inner, solver, repeats):
    nested = NestedSampler(den, outer, inner, solver, 0.85 if solver == "ddim" else None)
    vanilla = vanilla_sampler(den, outer * inner, solver, 0.85 if solver == "ddim" else None)
    timed(nested, shape, cond), timed(vanilla, shape, cond)  # warm-up
    tn, tv = [], []
    for _ in range(repeats):  # interleave so machine noise hits both alike
        tn.append(timed(nested, shape, cond))
        tv.append(timed(vanilla, shape, cond))
    mn, mv = statistics.median(tn), statistics.median(tv)
    nfe = outer * inner
    print(f"{name:34s} {outer:2d}x{inner:<3d} {solver:8s} nested {mn * 1e3 / nfe:8.3f} ms/NFE  "
          f"vanilla {mv * 1e3 / nfe:8.3f} ms/NFE  ratio {mn / mv:.3f}")
    return mn / mv, mn / nfe, mv / nfe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} interleaved repeats")
    cheap = ModelDenoiser(lambda x, t, c: 0.1 * x, "linear", "epsilon", check_finite=False)
    for solver in ("ddim", "dpmpp_2m", "ddpm"):
        _, n_s, v_s = compare("near-free model, batch 8×1×28×28", cheap, (8, 1, 28, 28), None, 10, 20, solver,
                              args.repeats)
    unet = TinyUNet().eval()
    real = ModelDenoiser(lambda x, t, c: unet(x, t, c), "cosine", "v", learned_variance=True)
    labels = torch.arange(64) % 10
    for solver in ("ddim", "ddpm"):   # as users call it: the sampler itself runs the model without autograd
        compare("TinyUNet 1.6M params, batch 64", real, (64, 1, 28, 28), labels, 4, 10, solver, args.repeats)


if __name__ == "__main__":
    main()
