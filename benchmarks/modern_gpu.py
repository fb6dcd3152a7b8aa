"""SDXL- and FLUX.1-sized random-weight pipelines for benchmarks/modern_pipelines.py --gpu (and --dry-run).

Denoisers and VAEs follow the published configurations (modern_pipelines.SDXL_UNET, FLUX_TRANSFORMER, SDXL_VAE,
FLUX_VAE; tiny decoders: AutoencoderTiny's defaults = TAESD, 16 latent channels = taef1). Text encoders are one
layer of the right width (CLIP-L 768, OpenCLIP-bigG 1280, T5-XXL 4096) with the tiny test tokenizers: prompts are
encoded once per call, so this changes no per-NFE cost. Random weights cost the same compute as trained ones.
"""
from __future__ import annotations

import torch

import modern_pipelines as mp


def _clip(tok, hidden: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden,
                         num_attention_heads=hidden // 64, num_hidden_layers=2, max_position_embeddings=77,
                         projection_dim=hidden, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _modules(family: str, tok, t5tok) -> dict:
    from diffusers import AutoencoderKL, AutoencoderTiny, FluxTransformer2DModel, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel
    clip_w, second_w = mp.TEXT_WIDTHS[family]
    if family == "sdxl":
        return dict(unet=lambda: UNet2DConditionModel(**mp.SDXL_UNET), vae=lambda: AutoencoderKL(**mp.SDXL_VAE),
                    text_encoder=lambda: _clip(tok, clip_w, False), text_encoder_2=lambda: _clip(tok, second_w, True),
                    tiny=lambda: AutoencoderTiny(**mp.TAESD))
    t5 = T5Config(vocab_size=len(t5tok), d_model=second_w, d_ff=1024, d_kv=64, num_layers=1,
                  num_heads=second_w // 64, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return dict(transformer=lambda: FluxTransformer2DModel(**mp.FLUX_TRANSFORMER),
                vae=lambda: AutoencoderKL(**mp.FLUX_VAE), text_encoder=lambda: _clip(tok, clip_w, False),
                text_encoder_2=lambda: T5EncoderModel(t5), tiny=lambda: AutoencoderTiny(**mp.TAEF1))


def _tokenizers():
    from fixtures_modern import tiny_t5_tokenizer
    from fixtures_tiny import tiny_tokenizer
    return tiny_tokenizer(), tiny_t5_tokenizer()


def dry_run() -> int:
    """Parameter counts of the --gpu models, built on the meta device (no memory, no compute)."""
    tok, t5tok = _tokenizers()
    for family in ("sdxl", "flux"):
        for name, make in _modules(family, tok, t5tok).items():
            with torch.device("meta"):
                m = make()
            n = sum(p.numel() for p in m.parameters()) / 1e6
            ref = mp.PUBLISHED_M.get(f"{family}.{name}")
            print(f"  {family}.{name:15s} {type(m).__name__:28s} {n:10.2f} M parameters"
                  + (f"; usually reported as ≈ {ref}" if ref else ""))
    return 0


def build_full(family: str, device: str = "cuda", dtype: torch.dtype = torch.bfloat16):
    """Stock + nested pipeline on shared full-size random-weight modules, built directly on the GPU."""
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from diffusers import StableDiffusionXLPipeline

    from fixtures_modern import FLUX_SCHEDULER, SDXL_SCHEDULER
    from nested_diffusion.pipelines import NestedFluxPipeline, NestedStableDiffusionXLPipeline
    torch.manual_seed(0)
    tok, t5tok = _tokenizers()
    mods = {}
    for name, make in _modules(family, tok, t5tok).items():
        with torch.device(device):
            mods[name] = make().to(dtype=dtype).eval()
    tiny = mods.pop("tiny")
    if family == "sdxl":
        stock = StableDiffusionXLPipeline(**mods, tokenizer=tok, tokenizer_2=tok,
                                          scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER))
        nested = NestedStableDiffusionXLPipeline.from_pipe(stock)
    else:
        stock = FluxPipeline(**mods, tokenizer=tok, tokenizer_2=t5tok,
                             scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER))
        nested = NestedFluxPipeline.from_pipe(stock)
    for p in (stock, nested):
        p.set_progress_bar_config(disable=True)
    return stock, nested, tiny
