"""Pieces shared by the SDXL, SD3 and FLUX nested pipelines: the flow schedule of a diffusers FlowMatch
scheduler, and decoding an update with the full VAE or a cheap preview."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..core.flow_schedule import FlowSchedule
from .anytime import anytime_fields, with_anytime_fields
from .previews import PreviewDecoder, kl_encoder

DECODER_FIELD = (("decoder", "str", dataclasses.field(default="vae")),)  # which decoder made the images


def execution_device(module: Any) -> torch.device:
    """Where a module's inputs must go (the offload hook's device when offloading is on), as diffusers does."""
    try:
        from diffusers.utils.torch_utils import get_module_execution_device
        return get_module_execution_device(module)
    except ImportError:  # older diffusers
        return next(module.parameters()).device


def vae_dtype(vae: Any) -> torch.dtype:
    return next(vae.parameters()).dtype


def output_class(base: type, name: str, module: str) -> type:
    return with_anytime_fields(base, name, f"{base.__name__} plus where in the nested run the images come from (the "
                               "AnytimeInfo fields), the x̂0 latent they were decoded from, and the decoder used "
                               "(\"vae\", \"tiny\" or \"latent_rgb\").", module, DECODER_FIELD)


def decode_sdxl_latents(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """SDXL's final decode of x̂0 latents → pixels in [−1, 1], as the stock pipeline does it: a float16 VAE that
    asks for it (``force_upcast``) decodes in float32, and ``latents_mean``/``latents_std`` apply when configured."""
    cfg = vae.config
    upcast = vae_dtype(vae) == torch.float16 and cfg.force_upcast
    if upcast:
        vae.to(torch.float32)
    z = z.to(execution_device(vae), vae_dtype(vae))
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(z.device, z.dtype)
        std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(z.device, z.dtype)
        z = z * std / cfg.scaling_factor + mean
    else:
        z = z / cfg.scaling_factor
    image = vae.decode(z, return_dict=False)[0]
    if upcast:
        vae.to(torch.float16)
    return image


def flow_schedule_of(scheduler: Any, mu: float | None) -> FlowSchedule:
    if type(scheduler).__name__ != "FlowMatchEulerDiscreteScheduler":
        raise ValueError(f"scheduler: the nested flow pipelines read a FlowMatchEulerDiscreteScheduler config, got "
                         f"{type(scheduler).__name__}")
    return FlowSchedule.from_diffusers_config(dict(scheduler.config), mu)


def decode_update(pipe: Any, update: Any, x0: torch.Tensor, ctx: dict) -> Any:
    """The output for one update: the full VAE (``ctx["full"]``: latents → image in [−1, 1]) or the cheap
    preview decoder; ``ctx["spatial"]`` maps the x̂0 latent to (B, C, h, w) (FLUX: unpacking)."""
    output_type, cheap = ctx["output_type"], ctx["preview"]
    decoder = "vae"
    if output_type == "latent":
        image = x0
    else:
        z = ctx["spatial"](x0)
        if cheap.wants(update):
            image, decoder = cheap.decode(z), cheap.preview
        else:
            image = ctx["full"](z)
        image = pipe.image_processor.postprocess(image.float() if decoder != "vae" else image,
                                                 output_type=output_type)
    if not ctx["return_dict"]:
        return (image,)
    return ctx["output_cls"](images=image, latents=x0, decoder=decoder, **anytime_fields(update))


def preview_decoder(pipe: Any, a: dict, preview: str, shift: float | None) -> PreviewDecoder:
    """The call's preview decoder; latent_rgb factors are fitted on ``pipe.vae`` (latent shift ``shift``)."""
    encode = kl_encoder(pipe.vae, pipe.vae.config.scaling_factor, shift, execution_device(pipe.vae))
    return PreviewDecoder(pipe, preview, a.get("preview_vae"), bool(a.get("preview_results")), encode,
                          pipe.vae_scale_factor)


def check_generators(generator: Any, batch: int) -> None:
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"generator: a list of {len(generator)} generators for {batch} images; pass one or one "
                         f"per image")
