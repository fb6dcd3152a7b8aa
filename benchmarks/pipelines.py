"""Nested vs vanilla diffusers pipeline: wall time at equal NFE on the tiny random-weight SD components.

Side by side in one run (interleaved repeats, median):
  vanilla   stock StableDiffusionPipeline, DDIM η=0.85, K·n steps, one VAE decode
  final     NestedStableDiffusionPipeline.__call__, K outer × n inner (DDIM η=0.85), one VAE decode
  anytime   NestedStableDiffusionPipeline.iter_anytime, every update consumed and decoded
            (n previews of the first inner run + K−1 inner results)
  results   iter_anytime(previews="none"): only the K inner-run results decoded
UNet calls are counted in every mode to confirm equal NFE. Needs diffusers + transformers.
Usage: python benchmarks/pipelines.py [--outer 4] [--inner 5] [--size 64] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny fixtures live with the tests

from fixtures_tiny import SD_CONFIG, tiny_sd  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outer", type=int, default=4)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (latent = size / 2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import DDIMScheduler

    from nested_diffusion.pipelines import NestedStableDiffusionPipeline

    stock = tiny_sd(DDIMScheduler(**SD_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                  timestep_spacing="trailing"))
    nested = NestedStableDiffusionPipeline.from_pipe(stock)
    nested.set_progress_bar_config(disable=True)
    nfe = args.outer * args.inner
    common = dict(prompt="a photo of a cat", height=args.size, width=args.size, output_type="np")
    calls = [0]
    stock.unet.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))

    def vanilla():
        return stock(**common, num_inference_steps=nfe, eta=0.85, generator=torch.Generator().manual_seed(0))

    def final():
        return nested(**common, outer_steps=args.outer, inner_steps=args.inner,
                      generator=torch.Generator().manual_seed(0))

    def anytime(previews="first"):
        outs = nested.iter_anytime(**common, outer_steps=args.outer, inner_steps=args.inner, previews=previews,
                                   generator=torch.Generator().manual_seed(0))
        return sum(1 for _ in outs)

    modes = {"vanilla": vanilla, "final": final, "anytime": anytime, "results": lambda: anytime("none")}
    times = {k: [] for k in modes}
    unet_calls, decodes = {}, {}
    for k, fn in modes.items():  # warm-up, NFE check
        calls[0] = 0
        out = fn()
        unet_calls[k] = calls[0]
        decodes[k] = out if isinstance(out, int) else 1
    for _ in range(args.repeats):
        for k, fn in modes.items():  # interleaved so machine noise hits every mode alike
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), tiny SD at {args.size}×{args.size} px "
          f"(latent {args.size // 2}²), {args.outer} outer × {args.inner} inner = {nfe} NFE, "
          f"median of {args.repeats} interleaved repeats")
    base = statistics.median(times["vanilla"])
    for k in modes:
        m = statistics.median(times[k])
        print(f"  {k:8s} {m * 1e3:8.1f} ms  {m * 1e3 / nfe:6.2f} ms/NFE  UNet calls {unet_calls[k]:3d}  "
              f"VAE decodes {decodes[k]:2d}  ratio vs vanilla {m / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
