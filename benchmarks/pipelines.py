"""Nested vs vanilla diffusers pipelines: wall time at equal NFE, measured side by side in one run (interleaved
repeats, median), on the tiny random-weight SD / DiT components (CPU). benchmarks/gpu_pipelines.py reuses the
modes and the report with SD-1.5 / DiT-XL/2-sized models on a GPU.

Modes (K outer × n inner = N NFE; every mode's model calls are counted to confirm equal NFE):
  vanilla        stock diffusers pipeline, N steps, one VAE decode
  vanilla_every  vanilla decoding every step (SD: stock pipeline + a callback decoding the latents of each step;
                 DiT, whose stock pipeline has no callback: NestedDiT with K = 1, every x̂0 preview decoded)
  final          Nested __call__: lazy, only the final result is decoded
  every_outer    Nested iter_anytime(previews="none"): every outer step's result decoded (what the authors' code
                 does unconditionally)
  anytime        Nested iter_anytime(previews="first"): every update consumed and decoded (n + K − 1)
Ratios printed: (a) anytime / vanilla_every and anytime / vanilla (decoding every consumed update),
(b) final / vanilla (final only), (c) final / every_outer (the saving of lazy decoding).
Usage: python benchmarks/pipelines.py [--model sd|dit|both] [--outer 4] [--inner 5] [--size 64] [--batch 1]
       [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tiny fixtures live with the tests

PROMPT = "a photo of a cat"


class CallCounter:
    """Forward calls of the denoising model and of the VAE decoder (one per vae.decode)."""

    def __init__(self, model: torch.nn.Module, vae) -> None:
        self.model = self.decodes = 0
        model.register_forward_hook(lambda *a: setattr(self, "model", self.model + 1))
        vae.decoder.register_forward_hook(lambda *a: setattr(self, "decodes", self.decodes + 1))


def _gens(batch: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(batch)]


def sd_modes(stock, nested, outer: int, inner: int, batch: int, height: int, width: int) -> dict[str, Callable]:
    """The five modes for Stable Diffusion (stock StableDiffusionPipeline with a DDIM scheduler, η = 0.85)."""
    n = outer * inner
    common = dict(prompt=[PROMPT] * batch, height=height, width=width, output_type="np")

    def decode_step(pipe, i, t, kw):  # the stock way to show progress: decode this step's latents
        img = pipe.vae.decode(kw["latents"] / pipe.vae.config.scaling_factor, return_dict=False)[0]
        pipe.image_processor.postprocess(img, output_type="np")
        return {}

    def consume(**kw):
        return sum(1 for _ in nested.iter_anytime(**common, outer_steps=outer, inner_steps=inner,
                                                  generator=_gens(batch), **kw))

    return {
        "vanilla": lambda: stock(**common, num_inference_steps=n, eta=0.85, generator=_gens(batch)),
        "vanilla_every": lambda: stock(**common, num_inference_steps=n, eta=0.85, generator=_gens(batch),
                                       callback_on_step_end=decode_step,
                                       callback_on_step_end_tensor_inputs=["latents"]),
        "final": lambda: nested(**common, outer_steps=outer, inner_steps=inner, generator=_gens(batch)),
        "every_outer": lambda: consume(previews="none"),
        "anytime": lambda: consume(previews="first"),
    }


def dit_modes(stock, nested, outer: int, inner: int, batch: int, guidance: float = 1.5) -> dict[str, Callable]:
    """The five modes for DiT (stock DiTPipeline with its scheduler; nested: DDPM learned-variance inner)."""
    n = outer * inner
    labels = [i % 1000 for i in range(batch)]
    common = dict(class_labels=labels, guidance_scale=guidance, output_type="np")

    def consume(o, i, **kw):
        return sum(1 for _ in nested.iter_anytime(**common, outer_steps=o, inner_steps=i, generator=_gens(batch),
                                                  **kw))

    return {
        "vanilla": lambda: stock(**common, num_inference_steps=n, generator=_gens(batch)),
        "vanilla_every": lambda: consume(1, n, previews="first"),
        "final": lambda: nested(**common, outer_steps=outer, inner_steps=inner, generator=_gens(batch)),
        "every_outer": lambda: consume(outer, inner, previews="none"),
        "anytime": lambda: consume(outer, inner, previews="first"),
    }


def measure(modes: dict[str, Callable], counter: CallCounter, repeats: int, sync: Callable[[], None] = lambda: None):
    """One warm-up call per mode (counting model calls and decodes), then ``repeats`` interleaved rounds."""
    calls, times = {}, {k: [] for k in modes}
    for k, fn in modes.items():
        counter.model = counter.decodes = 0
        fn()
        sync()
        calls[k] = (counter.model, counter.decodes)
    for _ in range(repeats):
        for k, fn in modes.items():  # interleaved: machine noise hits every mode alike
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, calls


def report(title: str, med: dict, calls: dict, nfe: int, batch: int) -> None:
    print(title)
    for k, m in med.items():
        print(f"  {k:13s} {m * 1e3:9.1f} ms  {m * 1e3 / nfe:7.2f} ms/NFE  {batch / m:8.2f} images/s  "
              f"model calls {calls[k][0]:3d}  VAE decodes {calls[k][1]:3d}")
    print(f"  (a) every consumed update decoded: anytime / vanilla_every = {med['anytime'] / med['vanilla_every']:.3f}"
          f", anytime / vanilla = {med['anytime'] / med['vanilla']:.3f}")
    print(f"  (b) final only:                    final / vanilla         = {med['final'] / med['vanilla']:.3f}")
    print(f"  (c) lazy decoding:                 final / every_outer     = {med['final'] / med['every_outer']:.3f}"
          f"  (saves {100 * (1 - med['final'] / med['every_outer']):.1f}% vs decoding every outer step)")


def check_equal_nfe(calls: dict, nfe: int, name: str) -> None:
    bad = {k: c[0] for k, c in calls.items() if c[0] != nfe}
    if bad:
        raise RuntimeError(f"{name}: model calls differ from {nfe} NFE: {bad}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("sd", "dit", "both"), default="both")
    ap.add_argument("--outer", type=int, default=4)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--size", type=int, default=64, help="SD image side in pixels (latent = size / 2)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import DDIMScheduler

    from fixtures_tiny import DIT_CONFIG, SD_CONFIG, tiny_dit, tiny_sd
    from nested_diffusion.pipelines import NestedDiTPipeline, NestedStableDiffusionPipeline

    nfe = args.outer * args.inner
    head = (f"torch {torch.__version__}, {args.threads} thread(s), {args.outer} outer × {args.inner} inner = {nfe} "
            f"NFE, batch {args.batch}, median of {args.repeats} interleaved repeats")
    print(head)
    if args.model in ("sd", "both"):
        stock = tiny_sd(DDIMScheduler(**SD_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                      timestep_spacing="trailing"))
        nested = NestedStableDiffusionPipeline.from_pipe(stock)
        nested.set_progress_bar_config(disable=True)
        counter = CallCounter(stock.unet, stock.vae)
        med, calls = measure(sd_modes(stock, nested, args.outer, args.inner, args.batch, args.size, args.size),
                             counter, args.repeats)
        check_equal_nfe(calls, nfe, "sd")
        report(f"tiny SD at {args.size}×{args.size} px (latent {args.size // 2}²), CPU", med, calls, nfe, args.batch)
    if args.model in ("dit", "both"):
        stock = tiny_dit(DDIMScheduler(**DIT_CONFIG, clip_sample=False, timestep_spacing="trailing"))
        nested = NestedDiTPipeline.from_pipe(stock)
        nested.set_progress_bar_config(disable=True)
        counter = CallCounter(stock.transformer, stock.vae)
        med, calls = measure(dit_modes(stock, nested, args.outer, args.inner, args.batch), counter, args.repeats)
        check_equal_nfe(calls, nfe, "dit")
        report("tiny DiT (latent 8², image 16²), CPU", med, calls, nfe, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
