"""Cost of anytime generation and of its previews on the SDXL, SD3 and FLUX nested pipelines, measured side by
side in one run (interleaved repeats, medians; benchmarks/pipelines.py's ``measure``), every mode at equal NFE.

Modes (K outer × n inner = N NFE; model calls and decodes are counted and checked):
  stock         the stock diffusers pipeline, N steps, one full-VAE decode
  stock_every   stock + a callback decoding every step's latents with the full VAE (full-VAE live previews)
  final         nested __call__: only the final result decoded
  anytime_tiny  nested iter_anytime: every anytime update decoded (n + K − 1), all but the final through an
                AutoencoderTiny (preview_results=True), the final through the full VAE
  anytime_rgb   the same with preview="latent_rgb" (fitted linear map; fitted before timing)
  anytime_vae   every anytime update through the full VAE
Ratios printed against stock. Default: the tiny random-weight fixtures of the tests on the CPU (their VAE/model
cost ratio is not a real model's). ``--gpu``: SDXL- and FLUX.1-sized random-weight models from the published
configurations (UNet 2.57 B / transformer 11.9 B, their VAEs, TAESD-sized tiny decoders; 1-layer text encoders
of the right widths, since prompts are encoded once per call), bf16 on CUDA; ``--dry-run`` prints the sizes.

    python benchmarks/modern_pipelines.py [--families sdxl,sd3,flux] [--outer 4] [--inner 7] [--size 64]
    python benchmarks/modern_pipelines.py --gpu [--size 1024] [--batch 1]      # needs CUDA
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PROMPT = "a photo of a cat"
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                        "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, norm_num_groups=32)
FLUX_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                        guidance_embeds=True, axes_dims_rope=(16, 56, 56))
KL_VAE = dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=2, norm_num_groups=32)
SDXL_VAE = dict(KL_VAE, latent_channels=4, scaling_factor=0.13025, force_upcast=True)
FLUX_VAE = dict(KL_VAE, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                use_post_quant_conv=False)
TEXT_WIDTHS = {"sdxl": (768, 1280), "flux": (768, 4096)}  # CLIP-L + OpenCLIP-bigG / CLIP-L + T5-XXL
TAESD = dict(latent_channels=4)   # diffusers' AutoencoderTiny defaults are TAESD's architecture
TAEF1 = dict(latent_channels=16)
PUBLISHED_M = {"sdxl.unet": "2.6 B (SDXL report)", "flux.transformer": "12 B (Black Forest Labs)"}


def modes(family: str, stock, nested, tiny, outer: int, inner: int, batch: int, size: int) -> dict:
    n = outer * inner
    common = dict(prompt=[PROMPT] * batch, height=size, width=size, output_type="np")

    def spatial(lat):
        return nested._unpack_latents(lat, size, size, nested.vae_scale_factor) if family == "flux" else lat

    def decode_step(pipe, i, t, kw):  # full-VAE live preview of the stock loop
        nested.image_processor.postprocess(nested._full_decode(spatial(kw["latents"])), output_type="np")
        return {}

    def gens():
        return [torch.Generator().manual_seed(i) for i in range(batch)]

    def consume(**kw):
        return sum(1 for _ in nested.iter_anytime(**common, outer_steps=outer, inner_steps=inner, generator=gens(),
                                                  **kw))
    return {
        "stock": lambda: stock(**common, num_inference_steps=n, generator=gens()),
        "stock_every": lambda: stock(**common, num_inference_steps=n, generator=gens(),
                                     callback_on_step_end=decode_step, callback_on_step_end_tensor_inputs=["latents"]),
        "final": lambda: nested(**common, outer_steps=outer, inner_steps=inner, generator=gens()),
        "anytime_tiny": lambda: consume(preview_vae=tiny, preview_results=True),
        "anytime_rgb": lambda: consume(preview="latent_rgb", preview_results=True),
        "anytime_vae": lambda: consume(),
    }


class Counter:
    def __init__(self, model, vae, tiny) -> None:
        self.model = self.decodes = self.tiny = 0
        model.register_forward_hook(lambda *a: setattr(self, "model", self.model + 1))
        vae.decoder.register_forward_hook(lambda *a: setattr(self, "decodes", self.decodes + 1))
        tiny.decoder.register_forward_hook(lambda *a: setattr(self, "tiny", self.tiny + 1))


def build_tiny(family: str):
    from fixtures_modern import tiny_flux, tiny_sd3, tiny_sdxl, tiny_taesd
    from nested_diffusion.pipelines import (NestedFluxPipeline, NestedStableDiffusion3Pipeline,
                                            NestedStableDiffusionXLPipeline)
    make, cls = {"sdxl": (tiny_sdxl, NestedStableDiffusionXLPipeline),
                 "sd3": (tiny_sd3, NestedStableDiffusion3Pipeline), "flux": (tiny_flux, NestedFluxPipeline)}[family]
    stock = make()
    nested = cls.from_pipe(stock)
    nested.set_progress_bar_config(disable=True)
    return stock, nested, tiny_taesd(4 if family == "sdxl" else 16)


def measure(modes: dict, counter: Counter, repeats: int, sync) -> tuple[dict, dict, dict]:
    """One untimed warm-up call per mode (counting model calls and decodes; it also fits the latent_rgb factors),
    then ``repeats`` interleaved rounds; medians of wall time and of this process's CPU time (1 thread: CPU time
    is insensitive to other jobs on a shared machine, wall time is what a user waits)."""
    calls, wall, cpu = {}, {k: [] for k in modes}, {k: [] for k in modes}
    for k, fn in modes.items():
        counter.model = counter.decodes = counter.tiny = 0
        fn()
        sync()
        calls[k] = (counter.model, counter.decodes, counter.tiny)
    for _ in range(repeats):
        for k, fn in modes.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()},
            calls)


def run_family(family: str, built, args, device_sync) -> None:
    stock, nested, tiny = built
    model = stock.unet if family == "sdxl" else stock.transformer
    counter = Counter(model, stock.vae, tiny)
    ms = modes(family, stock, nested, tiny, args.outer, args.inner, args.batch, args.size)
    wall, cpu, calls = measure(ms, counter, args.repeats, device_sync)
    nfe = args.outer * args.inner
    bad = {k: c[0] for k, c in calls.items() if c[0] != nfe}
    if bad:
        raise RuntimeError(f"{family}: model calls differ from {nfe} NFE: {bad}")
    print(f"{family}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M model, {args.size}² px, "
          f"batch {args.batch}, {args.outer} × {args.inner} = {nfe} NFE")
    for k in ms:
        c = calls[k]
        print(f"  {k:13s} wall {wall[k] * 1e3:9.1f} ms = {wall[k] / wall['stock']:6.3f} × stock   "
              + (f"cpu {cpu[k] * 1e3:9.1f} ms = {cpu[k] / cpu['stock']:6.3f} × stock   " if not args.gpu else "")
              + f"model calls {c[0]:3d}  full-VAE decodes {c[1]:3d}  tiny decodes {c[2]:3d}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="sdxl,sd3,flux")
    ap.add_argument("--outer", type=int, default=4)
    ap.add_argument("--inner", type=int, default=7)
    ap.add_argument("--size", type=int, default=None, help="image side (default 64 tiny, 1024 --gpu)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gpu", action="store_true", help="SDXL/FLUX-sized random-weight models on CUDA")
    ap.add_argument("--dry-run", action="store_true", help="print the --gpu models' sizes (meta device) and exit")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    if not families or any(f not in ("sdxl", "sd3", "flux") for f in families):
        ap.error(f"--families: {args.families!r} is not valid; use a comma list of sdxl, sd3, flux")
    from modern_gpu import build_full, dry_run
    if args.dry_run:
        return dry_run()
    if args.gpu and not torch.cuda.is_available():
        print("error: --gpu needs a CUDA device visible to torch (none here); run without --gpu for the tiny "
              "CPU fixtures, or --dry-run for the model sizes", file=sys.stderr)
        return 1
    args.size = args.size or (1024 if args.gpu else 64)
    sync = torch.cuda.synchronize if args.gpu else (lambda: None)
    print(f"torch {torch.__version__}, {'CUDA ' + torch.cuda.get_device_name(0) if args.gpu else 'CPU'}, "
          f"{args.threads} thread(s), median of {args.repeats} interleaved repeats")
    for family in families:
        if args.gpu and family == "sd3":
            print("sd3: no SD3-sized configuration in --gpu (SDXL and FLUX only)")
            continue
        run_family(family, build_full(family) if args.gpu else build_tiny(family), args, sync)
    return 0


if __name__ == "__main__":
    sys.exit(main())
