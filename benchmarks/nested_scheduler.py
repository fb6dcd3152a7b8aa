"""Overhead of the generic nested path against the same stock pipeline with its own scheduler, at equal model calls
(K outer × N inner against K·N stock steps), measured side by side in one process (same threads, float32,
interleaved repeats in a rotating order, medians; wall time and process CPU time):

* ``nested``: ``pipe.scheduler = NestedScheduler(...)``, the final image only (the pipeline's own call);
* ``anytime+tiny``: ``list(anytime(pipe, ..., previews="all", preview_vae=tiny, preview_results=True))``, every
  one of the K·N updates decoded (all but the last through a small random ``AutoencoderTiny``, the last through
  the pipeline's VAE, as stock decodes its one image), in the order a user iterates them.

The tiny random-weight fixtures of the tests on the CPU: their model is so small that the wrapper's bookkeeping is
visible; ``--flux-sizes`` adds the FLUX.1 fixture rebuilt from its config at larger widths / depths, so the same
run shows how the ratio falls as a step costs more (the wrapper's cost per step is fixed).

    python benchmarks/nested_scheduler.py [--families flux,flux2,qwen-image,z-image,chroma,wan,sdxl]
                                          [--flux-sizes 4x32x2,8x32x4,8x64x4] [--outer 4] [--inner 7] [--repeats 9]
                                          [--threads 1]

A size is HEADSxHEAD_DIMxLAYERS: ``num_attention_heads``, ``attention_head_dim``, and ``num_layers`` =
``num_single_layers`` of ``FluxTransformer2DModel`` (the fixture: 2x16x1).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# families whose anytime updates decode 2-D latents through an AutoencoderTiny (the video and Qwen latents are 5-D)
TINY_FAMILIES = ("flux", "flux2", "flux2-klein", "z-image", "chroma", "sdxl")


def build(family: str):
    from fixtures_any import BUILDERS, embeds
    if family in BUILDERS:
        kw = dict(embeds(family), height=16, width=16)
        if family == "wan":
            kw["num_frames"] = 5
        return BUILDERS[family](), kw
    import fixtures_modern
    pipe = getattr(fixtures_modern, f"tiny_{family}")()
    g = torch.Generator().manual_seed(3)
    dim, pooled = {"flux": (32, 32), "sdxl": (64, 32), "sd3": (64, 64)}[family]
    kw = dict(prompt_embeds=torch.randn(1, 8, dim, generator=g), pooled_prompt_embeds=torch.randn(1, pooled,
                                                                                                   generator=g),
              height=16, width=16)
    if family != "flux":
        kw.update(negative_prompt_embeds=torch.randn(1, 8, dim, generator=g),
                  negative_pooled_prompt_embeds=torch.randn(1, pooled, generator=g))
    return pipe, kw


def parse_size(size: str) -> tuple[int, int, int]:
    try:
        heads, head_dim, layers = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--flux-sizes: {size!r} is not HEADSxHEAD_DIMxLAYERS (e.g. 4x32x2)") from None
    if head_dim % 4 or min(heads, head_dim, layers) < 1:
        raise SystemExit(f"--flux-sizes: {size!r}: head_dim must be a positive multiple of 4 (rotary axes)")
    return heads, head_dim, layers


def build_flux_sized(size: str):
    """The FLUX.1 fixture with its transformer rebuilt from its own config at another width / depth."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    heads, head_dim, layers = parse_size(size)
    pipe, kw = build("flux")
    cfg = dict(pipe.transformer.config)
    cfg.update(num_attention_heads=heads, attention_head_dim=head_dim, num_layers=layers,
               num_single_layers=layers, axes_dims_rope=(head_dim // 4, head_dim // 4, head_dim // 2))
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel.from_config(cfg).eval()
    sized = FluxPipeline(**{**pipe.components, "transformer": transformer})
    sized.set_progress_bar_config(disable=True)
    return sized, kw


def measure(family: str, outer: int, inner: int, repeats: int, size: str | None = None) -> dict:
    import nested_diffusion
    from fixtures_modern import tiny_taesd
    from nested_diffusion.pipelines import NestedScheduler
    pipe, kw = build_flux_sized(size) if size else build(family)
    stock_scheduler = pipe.scheduler
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    calls = [0]
    denoiser.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))

    def stock():
        pipe.scheduler = stock_scheduler
        return pipe(**kw, num_inference_steps=outer * inner, output_type="pt",
                    generator=torch.Generator().manual_seed(0))

    def nested():
        pipe.scheduler = NestedScheduler(stock_scheduler, outer_steps=outer, outer_eta=0.0)
        try:
            return pipe(**kw, num_inference_steps=inner, output_type="pt", generator=torch.Generator().manual_seed(0))
        finally:
            pipe.scheduler = stock_scheduler

    runs = {"stock": stock, "nested": nested}
    if family in TINY_FAMILIES:
        tiny = tiny_taesd(int(pipe.vae.config.latent_channels))

        def anytime_tiny():
            ups = list(nested_diffusion.anytime(pipe, **kw, outer_steps=outer, inner_steps=inner, outer_eta=0.0,
                                                previews="all", preview_vae=tiny, preview_results=True,
                                                generator=torch.Generator().manual_seed(0)))
            if len(ups) != outer * inner or [u.decoder for u in ups].count("tiny") != outer * inner - 1:
                raise RuntimeError(f"{family}: {len(ups)} updates, decoders {[u.decoder for u in ups]}")
            return ups

        runs["anytime+tiny"] = anytime_tiny
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    counted = {}
    names = list(runs)
    with torch.no_grad():
        for fn in runs.values():                            # warm-up
            fn()
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:   # rotating order
                calls[0] = 0
                c0, t0 = time.process_time(), time.perf_counter()
                runs[name]()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                counted.setdefault(name, calls[0])          # CFG families may call the model twice per step
                if calls[0] != counted.setdefault("stock", calls[0]) or calls[0] % (outer * inner):
                    raise RuntimeError(f"{family} {name}: {calls[0]} model calls, stock {counted['stock']}")
    return {"wall": {k: statistics.median(v) for k, v in wall.items()},
            "cpu": {k: statistics.median(v) for k, v in cpu.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="flux,flux2,flux2-klein,qwen-image,z-image,chroma,wan,sdxl")
    p.add_argument("--flux-sizes", default="4x32x2,8x32x4,8x64x4",
                   help="larger FLUX.1 transformers, HEADSxHEAD_DIMxLAYERS, comma-separated ('' for none)")
    p.add_argument("--outer", type=int, default=4)
    p.add_argument("--inner", type=int, default=7)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    steps = a.outer * a.inner
    print(f"torch {torch.__version__}, {a.threads} thread(s), float32, CPU; {a.outer} outer × {a.inner} inner "
          f"= {steps} steps each (model calls counted, equal); medians of {a.repeats} interleaved runs "
          f"(rotating order); ratios by wall time (by process CPU time in brackets)")
    print(f"{'configuration':<18} {'stock s':>8} {'ms/step':>8} {'nested s':>9} {'nested/stock':>18} "
          f"{'anytime+tiny s':>15} {'anytime+tiny/stock':>19}")
    configs = [(fam, None) for fam in a.families.split(",") if fam]
    configs += [("flux", size) for size in a.flux_sizes.split(",") if size]
    for fam, size in configs:
        r = measure(fam, a.outer, a.inner, a.repeats, size)
        w, c = r["wall"], r["cpu"]
        label = fam if size is None else f"flux {size}"
        line = (f"{label:<18} {w['stock']:>8.4f} {1e3 * w['stock'] / steps:>8.2f} {w['nested']:>9.4f} "
                f"{w['nested'] / w['stock']:>8.3f} ({c['nested'] / c['stock']:.3f})")
        if "anytime+tiny" in w:
            line += (f" {w['anytime+tiny']:>15.4f} {w['anytime+tiny'] / w['stock']:>9.3f} "
                     f"({c['anytime+tiny'] / c['stock']:.3f})")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
