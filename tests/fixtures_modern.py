"""Tiny random-weight SDXL, SD3 and FLUX pipelines built offline at test time (no downloads, nothing committed).

CLIP tokenizers come from ``fixtures_tiny.tiny_tokenizer``; the T5 tokenizer is a ``tokenizers`` Unigram model
over the same few words plus single characters, saved as tokenizer.json and loaded with ``T5TokenizerFast``.
Latents are 8×8 (SDXL: 4 channels; SD3/FLUX: 16), images 16×16 (VAE factor 2). Requires diffusers/transformers.
"""
from __future__ import annotations

import json
import os
import string
import tempfile

import torch

from fixtures_tiny import WORDS, tiny_tokenizer

# the real models' scheduler configs (the parts that matter; diffusers fills the rest with its defaults)
SDXL_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "timestep_spacing": "leading", "steps_offset": 1,
                  "interpolation_type": "linear", "prediction_type": "epsilon", "use_karras_sigmas": False}
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
FLUX_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                  "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}


def tiny_t5_tokenizer(directory: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    directory = directory or tempfile.mkdtemp(prefix="tiny_t5_tok_")
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in string.ascii_lowercase]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 64, "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                   "extra_ids": 0}, f)
    return T5TokenizerFast.from_pretrained(directory)


def _clip(tok, projection: bool = False, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                         num_hidden_layers=2, max_position_embeddings=77, projection_dim=hidden,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg).eval()


def _t5(tok, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_ff=37, d_kv=8, num_layers=1,
                                   num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                   eos_token_id=1, decoder_start_token_id=0)).eval()


def tiny_kl_vae(latent_channels: int, scaling: float, shift: float | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, scaling_factor=scaling, shift_factor=shift).eval()


def tiny_taesd(latent_channels: int, seed: int = 0):
    """A random AutoencoderTiny (TAESD architecture, narrow) decoding ``latent_channels`` latents at factor 2."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(in_channels=3, out_channels=3, latent_channels=latent_channels,
                           encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), upsampling_scaling_factor=2).eval()


def tiny_sdxl(seed: int = 0, scheduler=None):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    tok, tok2 = tiny_tokenizer(), tiny_tokenizer()
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
                                cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=6 * 8 + 32).eval()
    pipe = StableDiffusionXLPipeline(vae=tiny_kl_vae(4, 0.13025), text_encoder=_clip(tok), text_encoder_2=_clip(
        tok2, projection=True), tokenizer=tok, tokenizer_2=tok2, unet=unet,
        scheduler=scheduler or EulerDiscreteScheduler.from_config(SDXL_SCHEDULER), force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3(seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tok, tok2, tok3 = tiny_tokenizer(), tiny_tokenizer(), tiny_t5_tokenizer()
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=16, pooled_projection_dim=64, pos_embed_max_size=16
                                        ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER),
        vae=tiny_kl_vae(16, 1.5305, 0.0609), text_encoder=_clip(tok, True), tokenizer=tok,
        text_encoder_2=_clip(tok2, True), tokenizer_2=tok2, text_encoder_3=_t5(tok3, 64), tokenizer_3=tok3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux(seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tok, tok2 = tiny_tokenizer(), tiny_t5_tokenizer()
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True,
                                         axes_dims_rope=(4, 4, 8)).eval()
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER),
                        vae=tiny_kl_vae(16, 0.3611, 0.1159), text_encoder=_clip(tok), tokenizer=tok,
                        text_encoder_2=_t5(tok2, 32), tokenizer_2=tok2, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
