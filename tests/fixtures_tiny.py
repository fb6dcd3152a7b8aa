"""Tiny random-weight Stable Diffusion and DiT components, built offline (no downloads).

``tiny_sd()`` returns a stock ``StableDiffusionPipeline`` and ``tiny_dit()`` a stock ``DiTPipeline``; both are a
few hundred thousand parameters, so a forward pass takes milliseconds on one CPU thread. The CLIP tokenizer
gets a hand-written byte-level BPE vocabulary (the 256 GPT-2 byte characters, their word-final forms, and a
few merged words). Requires diffusers and transformers.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch

SD_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
DIT_CONFIG = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
WORDS = ("a", "photo", "of", "cat", "dog", "the", "red", "blue")
ID2LABEL = {0: "tench, Tinca tinca", 1: "goldfish", 2: "great white shark, white shark", 3: "tiger shark"}


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte → printable-character table (the alphabet of CLIP's BPE)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_tokenizer(directory: str | None = None):
    """A CLIPTokenizer whose vocabulary knows the bytes plus the whole words in ``WORDS``."""
    from transformers import CLIPTokenizer

    directory = directory or tempfile.mkdtemp(prefix="tiny_clip_tok_")
    base = _bytes_to_unicode()
    vocab_list = ["<|startoftext|>", "<|endoftext|>"] + base + [c + "</w>" for c in base]
    merges = []
    for word in WORDS:  # left-to-right merges building "word</w>"
        if len(word) == 1:
            continue
        left = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + "</w>" if i == len(word) - 1 else ch
            merges.append(f"{left} {right}")
            left = left + right
            if left not in vocab_list:
                vocab_list.append(left)
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"),
                         model_max_length=77)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, scaling_factor=0.18215).eval()


def tiny_sd_components(scheduler=None, prediction_type: str = "epsilon", seed: int = 0) -> dict:
    """Components for StableDiffusionPipeline(**components): 8×8 latents ↔ 16×16 images (VAE factor 2)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=24,
                                        num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=77,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id)).eval()
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=16, attention_head_dim=4).eval()
    if scheduler is None:
        scheduler = DDIMScheduler(**SD_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                  prediction_type=prediction_type)
    return dict(vae=tiny_vae(), text_encoder=text, tokenizer=tok, unet=unet, scheduler=scheduler,
                safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)


def tiny_sd(scheduler=None, prediction_type: str = "epsilon", seed: int = 0):
    """A stock StableDiffusionPipeline on the tiny components (progress bars off)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd_components(scheduler, prediction_type, seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_dit_components(scheduler=None, learned_sigma: bool = True, seed: int = 0) -> dict:
    """Components for DiTPipeline(**components): 1000 classes + the null row 1000, 8×8 latents."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                        out_channels=8 if learned_sigma else 4, num_layers=1, sample_size=8,
                                        patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero").eval()
    # ada_norm_zero initialises its modulation to zero, which makes the output exactly zero: randomise it
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.05)
    scheduler = scheduler or DDIMScheduler(**DIT_CONFIG, clip_sample=False)
    return dict(transformer=transformer, vae=tiny_vae(), scheduler=scheduler, id2label=dict(ID2LABEL))


def tiny_dit(scheduler=None, learned_sigma: bool = True, seed: int = 0):
    from diffusers import DiTPipeline

    pipe = DiTPipeline(**tiny_dit_components(scheduler, learned_sigma, seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_clip(directory: str):
    """A tiny random-weight CLIP (16×16 images, 8-d projection) with the tiny tokenizer, saved to ``directory``
    (a local folder for CLIPScorer / CLIPImageFeatures)."""
    from transformers import CLIPConfig, CLIPModel

    tok = tiny_tokenizer(str(directory))
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=24,
                                      num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=77,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id),
                     vision_config=dict(hidden_size=16, intermediate_size=24, num_attention_heads=2,
                                        num_hidden_layers=1, image_size=16, patch_size=8), projection_dim=8)
    CLIPModel(cfg).eval().save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
