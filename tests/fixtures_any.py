"""Tiny random-weight stock diffusers pipelines of the families run through ``NestedScheduler`` (built offline at test
time; nothing downloaded or committed). They have no text encoders: calls pass ``prompt_embeds`` (and the
pooled / negative embeddings a family needs), made by ``embeds(family, batch)``. Images are 16×16 (VAE factor 2);
Wan videos are 5 frames of 16×16. Requires diffusers."""
from __future__ import annotations

import contextlib

import torch

# the real models' scheduler configs, the parts that matter (diffusers fills the rest with its defaults)
FLUX2_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
                   "time_shift_type": "exponential"}
QWEN_SCHEDULER = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                  "max_shift": 0.9, "base_image_seq_len": 256, "max_image_seq_len": 8192,
                  "shift_terminal": 0.02, "time_shift_type": "exponential"}
ZIMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
WAN_SCHEDULER = {"num_train_timesteps": 1000, "shift": 5.0}
CHROMA_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                    "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
HIDREAM_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
TEXT_DIM = 32


def _flow(config):
    from diffusers import FlowMatchEulerDiscreteScheduler
    return FlowMatchEulerDiscreteScheduler.from_config(config)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _kl(latent_channels: int, scaling: float = 1.0, shift: float | None = None):
    from diffusers import AutoencoderKL
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, scaling_factor=scaling, shift_factor=shift).eval()


def tiny_flux2(seed: int = 0, klein: bool = False):
    """FLUX.2 [dev] (guidance embedding) or, with ``klein``, FLUX.2 [klein] (real CFG, no guidance embedding)."""
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Pipeline, Flux2Transformer2DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                             norm_num_groups=4, mid_block_add_attention=False).eval()
    transformer = Flux2Transformer2DModel(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                          num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                                          timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                          guidance_embeds=not klein).eval()
    if klein:
        return _quiet(Flux2KleinPipeline(scheduler=_flow(FLUX2_SCHEDULER), vae=vae, text_encoder=None, tokenizer=None,
                                         transformer=transformer, is_distilled=False))
    return _quiet(Flux2Pipeline(scheduler=_flow(FLUX2_SCHEDULER), vae=vae, text_encoder=None, tokenizer=None,
                                transformer=transformer))


def tiny_flux2_klein(seed: int = 0):
    return tiny_flux2(seed, klein=True)


def tiny_qwen_image(seed: int = 0):
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                 temperal_downsample=[False], latents_mean=[0.1, -0.2, 0.3, 0.0],
                                 latents_std=[1.5, 0.8, 1.2, 2.0]).eval()
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                              attention_head_dim=16, num_attention_heads=2,
                                              joint_attention_dim=TEXT_DIM, axes_dims_rope=(4, 6, 6)).eval()
    return _quiet(QwenImagePipeline(scheduler=_flow(QWEN_SCHEDULER), vae=vae, text_encoder=None, tokenizer=None,
                                    transformer=transformer))


def tiny_z_image(seed: int = 0):
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32,
                                           n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                           cap_feat_dim=TEXT_DIM, axes_dims=[4, 6, 6], axes_lens=[64, 32, 32]).eval()
    return _quiet(ZImagePipeline(scheduler=_flow(ZIMAGE_SCHEDULER), vae=_kl(4, 0.3611, 0.1159), text_encoder=None,
                                 tokenizer=None, transformer=transformer))


def tiny_chroma(seed: int = 0):
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                                           axes_dims_rope=(4, 4, 8), approximator_num_channels=8,
                                           approximator_hidden_dim=32, approximator_layers=1).eval()
    return _quiet(ChromaPipeline(scheduler=_flow(CHROMA_SCHEDULER), vae=_kl(4, 0.3611, 0.1159), text_encoder=None,
                                 tokenizer=None, transformer=transformer))


def tiny_hidream(seed: int = 0, scheduler=None):
    """HiDream-I1 with a FlowMatchEulerDiscreteScheduler (``scheduler``: another one, e.g. its UniPC default). The
    stock call rescales every requested size to the area of ``default_sample_size`` (128 latents: 1024²); it is set
    to 8 here so the images stay 16×16."""
    from diffusers import HiDreamImagePipeline, HiDreamImageTransformer2DModel

    torch.manual_seed(seed)
    transformer = HiDreamImageTransformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                                 num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                                                 caption_channels=[TEXT_DIM, TEXT_DIM], text_emb_dim=TEXT_DIM,
                                                 num_routed_experts=2, num_activated_experts=1,
                                                 axes_dims_rope=(8, 4, 4), max_resolution=(8, 8),
                                                 llama_layers=[0, 1]).eval()
    none = {f"{k}{s}": None for k in ("text_encoder", "tokenizer") for s in ("", "_2", "_3", "_4")}
    pipe = HiDreamImagePipeline(scheduler=scheduler or _flow(HIDREAM_SCHEDULER), vae=_kl(4, 0.3611, 0.1159),
                                transformer=transformer, **none)
    pipe.default_sample_size = 8
    return _quiet(pipe)


def tiny_wan(seed: int = 0):
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0],
                           scale_factor_spatial=2, scale_factor_temporal=2).eval()
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                        in_channels=4, out_channels=4, text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32,
                                        num_layers=1, rope_max_seq_len=32).eval()
    return _quiet(WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=_flow(WAN_SCHEDULER),
                              transformer=transformer))


BUILDERS = {"flux2": tiny_flux2, "flux2-klein": tiny_flux2_klein, "qwen-image": tiny_qwen_image,
            "z-image": tiny_z_image, "chroma": tiny_chroma, "hidream": tiny_hidream, "wan": tiny_wan}


def embeds(family: str, batch: int = 1, seed: int = 1) -> dict:
    """Random text conditioning for a tiny pipeline of ``family`` (what its text encoders would give)."""
    g = torch.Generator().manual_seed(seed)
    pe = torch.randn(batch, 6, TEXT_DIM, generator=g)
    neg = torch.randn(batch, 6, TEXT_DIM, generator=g)
    if family in ("flux2",):
        return dict(prompt_embeds=pe)
    if family == "flux2-klein":
        return dict(prompt_embeds=pe, negative_prompt_embeds=neg)
    if family == "qwen-image":
        mask = torch.ones(batch, 6, dtype=torch.long)
        return dict(prompt_embeds=pe, prompt_embeds_mask=mask, negative_prompt_embeds=neg,
                    negative_prompt_embeds_mask=mask, true_cfg_scale=2.0)
    if family == "z-image":
        return dict(prompt_embeds=list(pe), negative_prompt_embeds=list(neg))
    if family == "chroma":
        mask = torch.ones(batch, 6, dtype=torch.bool)
        return dict(prompt_embeds=pe, prompt_attention_mask=mask, negative_prompt_embeds=neg,
                    negative_prompt_attention_mask=mask)
    if family == "wan":
        return dict(prompt_embeds=pe, negative_prompt_embeds=neg)
    if family == "hidream":       # T5 tokens, the Llama hidden states of each block's layer, the pooled CLIP
        llama = torch.randn(2, batch, 6, TEXT_DIM, generator=g)
        return dict(prompt_embeds_t5=pe, prompt_embeds_llama3=llama,
                    pooled_prompt_embeds=torch.randn(batch, TEXT_DIM, generator=g), negative_prompt_embeds_t5=neg,
                    negative_prompt_embeds_llama3=torch.randn(2, batch, 6, TEXT_DIM, generator=g),
                    negative_pooled_prompt_embeds=torch.randn(batch, TEXT_DIM, generator=g))
    raise KeyError(family)


TOY_GENERIC = "flux-stock"


@contextlib.contextmanager
def toy_generic_family(folder):
    """A generic family over FLUX.1's stock ``FluxPipeline`` (whose tiny fixture has tokenizers, so text prompts
    work), registered in both tables and saved to ``folder / TOY_GENERIC`` with a two-line prompt file; yields
    ``folder``; unregistered afterwards."""
    from diffusers import FluxPipeline
    from fixtures_modern import tiny_flux

    from nested_diffusion import families
    from nested_diffusion.pipelines import any_pipeline
    any_pipeline.GENERIC_FAMILIES[TOY_GENERIC] = any_pipeline.GenericFamily(
        TOY_GENERIC, ("FluxPipeline",), "NestedFluxPipeline", "flux")
    families.register_family(families.Family(TOY_GENERIC, "FLUX.1 through NestedScheduler", "prompt",
                                             "FluxPipeline", "generic", generic=True))
    try:
        FluxPipeline.from_pipe(tiny_flux()).save_pretrained(folder / TOY_GENERIC)
        (folder / "prompts.txt").write_text("a photo of a cat\nthe red dog\n")
        yield folder
    finally:
        families.unregister_family(TOY_GENERIC)
        any_pipeline.GENERIC_FAMILIES.pop(TOY_GENERIC, None)
