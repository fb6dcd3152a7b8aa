"""Nested vs vanilla diffusers pipelines on a GPU with full-size *random-weight* models (nothing downloaded):
SD-1.5-sized (UNet 860M, CLIP ViT-L/14 text encoder, SD VAE) and DiT-XL/2-256-sized (675M), built from their
published configurations written out below, in fp16 on CUDA. Prints the modes and ratios of
benchmarks/pipelines.py (equal NFE, interleaved repeats, medians) plus images/s.

    python benchmarks/gpu_pipelines.py                      # SD 512² batch 4 and DiT 256² batch 8, 4 × 15 NFE
    python benchmarks/gpu_pipelines.py --dry-run            # configs + parameter counts on the meta device
    python benchmarks/gpu_pipelines.py --tiny               # the tiny test models (CPU is fine): a plumbing check
Random weights give the same compute as trained ones (no early exits anywhere); the images are noise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")
DIT_SCHEDULER = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                     clip_sample=False, timestep_spacing="trailing")
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
                 flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1)
CLIP_L14_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                     num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=512, scaling_factor=0.18215)
DIT_XL2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
               sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
               norm_elementwise_affine=False, activation_fn="gelu-approximate", attention_bias=True)


def _modules(kind: str):
    from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    if kind == "sd":
        return dict(unet=lambda: UNet2DConditionModel(**SD15_UNET), vae=lambda: AutoencoderKL(**SD_VAE),
                    text_encoder=lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT)))
    return dict(transformer=lambda: DiTTransformer2DModel(**DIT_XL2), vae=lambda: AutoencoderKL(**SD_VAE))


def dry_run() -> int:
    """Build every module on the meta device (no memory, no compute) and print its parameter count."""
    reported = {"sd.unet": 860, "sd.vae": 84, "sd.text_encoder": 123, "dit.transformer": 675}  # rounded, M
    for kind in ("sd", "dit"):
        for name, make in _modules(kind).items():
            with torch.device("meta"):
                m = make()
            n = sum(p.numel() for p in m.parameters()) / 1e6
            if name == "transformer":  # diffusers repeats the timestep/label embedder in every block; the original
                emb = sum(p.numel() for p in m.transformer_blocks[0].norm1.emb.parameters())  # DiT shares one and
                pos = m.pos_embed.pos_embed.numel()                      # counts its fixed positional table
                n = (n * 1e6 - (len(m.transformer_blocks) - 1) * emb + pos) / 1e6
            ref = reported.get(f"{kind}.{name}")
            print(f"  {kind}.{name:13s} {type(m).__name__:22s} {n:8.2f} M parameters"
                  + (" (original layout)" if name == "transformer" else "")
                  + (f"; usually reported as ≈ {ref} M" if ref else ""))
    return 0


def _randomize_zero_params(module: torch.nn.Module) -> None:
    """Zero-initialised tensors (DiT's adaLN-Zero modulations, final layers) make outputs trivially zero."""
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.02)


def build(kind: str, device: torch.device, dtype: torch.dtype):
    """Stock + nested pipeline sharing one set of full-size random-weight modules, built directly on ``device``."""
    from diffusers import DDIMScheduler, DiTPipeline, StableDiffusionPipeline

    from fixtures_tiny import tiny_tokenizer
    from nested_diffusion.pipelines import NestedDiTPipeline, NestedStableDiffusionPipeline
    torch.manual_seed(0)
    mods = {}
    for name, make in _modules(kind).items():
        with torch.device(device):
            m = make()
        _randomize_zero_params(m)
        mods[name] = m.to(dtype=dtype).eval()
    if kind == "sd":  # any CLIP tokenizer: prompts are padded to 77 tokens, so the text-encoder cost is the same
        stock = StableDiffusionPipeline(**mods, tokenizer=tiny_tokenizer(), scheduler=DDIMScheduler(**SD_SCHEDULER),
                                        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        nested = NestedStableDiffusionPipeline.from_pipe(stock)
    else:
        stock = DiTPipeline(**mods, scheduler=DDIMScheduler(**DIT_SCHEDULER))
        nested = NestedDiTPipeline.from_pipe(stock)
    for p in (stock, nested):
        p.set_progress_bar_config(disable=True)
    return stock, nested


def build_tiny(kind: str, device: torch.device, dtype: torch.dtype):
    from diffusers import DDIMScheduler

    from fixtures_tiny import tiny_dit, tiny_sd
    from nested_diffusion.pipelines import NestedDiTPipeline, NestedStableDiffusionPipeline
    if kind == "sd":
        stock = tiny_sd(DDIMScheduler(**SD_SCHEDULER))
        nested = NestedStableDiffusionPipeline.from_pipe(stock)
    else:
        stock = tiny_dit(DDIMScheduler(**DIT_SCHEDULER))
        nested = NestedDiTPipeline.from_pipe(stock)
    stock.to(device=device, dtype=dtype)
    nested.set_progress_bar_config(disable=True)
    return stock, nested


def millions(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="sd,dit", help="comma list of sd, dit (default: %(default)s)")
    ap.add_argument("--outer", type=int, default=4)
    ap.add_argument("--inner", type=int, default=15, help="inner steps (default 15: 4 × 15 = 60 NFE)")
    ap.add_argument("--sd-batch", type=int, default=4)
    ap.add_argument("--dit-batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=512, help="SD image side (default 512; --tiny: 16)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    ap.add_argument("--tiny", action="store_true", help="tiny test models (runs on CPU; plumbing check only)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="print configs' parameter counts (meta device) and exit")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in ("sd", "dit")]
    if bad or not models:
        ap.error(f"--models: {bad or models} not valid; use a comma list of sd, dit")
    torch.set_num_threads(args.threads)
    if args.dry_run:
        return dry_run()
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print("error: no CUDA device visible to torch; this benchmark builds SD-1.5 / DiT-XL/2-sized models and "
              "needs a GPU (use --tiny for a CPU plumbing check, --dry-run for the configs)", file=sys.stderr)
        return 1
    from pipelines import CallCounter, check_equal_nfe, dit_modes, measure, report
    device = torch.device("cuda" if cuda else "cpu")
    dtype = getattr(torch, args.dtype) if cuda else torch.float32
    size = 16 if args.tiny and args.size == 512 else args.size
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    nfe = args.outer * args.inner
    where = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"{where}, torch {torch.__version__}, {args.dtype if cuda else 'float32'}, {args.outer} outer × "
          f"{args.inner} inner = {nfe} NFE, median of {args.repeats} interleaved repeats"
          + (" (tiny models)" if args.tiny else ""))
    for kind in models:
        stock, nested = (build_tiny if args.tiny else build)(kind, device, dtype)
        model = stock.unet if kind == "sd" else stock.transformer
        counter = CallCounter(model, stock.vae)
        if kind == "sd":
            from pipelines import sd_modes
            batch = args.sd_batch
            modes = sd_modes(stock, nested, args.outer, args.inner, batch, size, size)
            title = (f"{'tiny SD' if args.tiny else 'SD-1.5-sized'} ({millions(model):.2f} M UNet), {size}² px")
        else:
            batch = args.dit_batch
            modes = dit_modes(stock, nested, args.outer, args.inner, batch)
            px = model.config.sample_size * 2 ** (len(stock.vae.config.block_out_channels) - 1)
            title = f"{'tiny DiT' if args.tiny else 'DiT-XL/2-sized'} ({millions(model):.2f} M), {px}² px"
        med, calls = measure(modes, counter, args.repeats, sync)   # pipelines run without autograd themselves
        check_equal_nfe(calls, nfe, kind)
        report(f"{title}, batch {batch}", med, calls, nfe, batch)
        del stock, nested, model, modes, counter
        if cuda:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
