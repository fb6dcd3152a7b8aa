"""Expected change for the diffusers pipelines (Nested SD, Nested DiT): what identifies a pipeline configuration
in a calibration, and how a pipeline call resolves its ``calibration=`` argument.

Signal space: the pipelines compute the run-time signals (``core.expected_change.SignalTracker``) on the x̂0
*latents* the sampler already holds (scaled latents, as the UNet / transformer sees them), never on decoded
images: attaching a calibration costs no VAE decode and no extra NFE. "pixel" signals of a pipeline calibration
are therefore latent RMSEs and latent grey levels; the learned-variance signals come from DiT's variance head.
The *targets* (what is predicted) are on decoded images: pixel RMSE on [0, 1] and 1 − cosine of a feature
network's features (``evaluation.pipeline_calibration``). Feature signals (a feature network at run time) are not
offered for pipelines: they would need a decode of every update.

A configuration is {"sampler": ``NestedSampler.calibration_settings``, "model": ``model_identity`` (pipeline
kind, weights fingerprint of the denoiser, VAE and text encoder, guidance and the settings that change the
denoiser), "calibration_set": the prompts or labels source (hashed, not checked at run time: a call may use any
prompt or label)}.
"""
from __future__ import annotations

from typing import Any, Callable

from ..core.expected_change import Calibration, canonical
from ..core.expected_change import resolve_calibration as resolve
from .factories import sampled_fingerprint


def model_identity(pipe: Any, guidance_scale: float, **settings: Any) -> dict:
    """What identifies a Nested SD / DiT pipeline's denoiser and decoder in a calibration: its kind, the weights
    fingerprint (SD: UNet, VAE, text encoder; DiT: transformer, VAE), the guidance scale and ``settings``."""
    if getattr(pipe, "unet", None) is not None:
        kind, modules = "sd", (pipe.unet, pipe.vae, getattr(pipe, "text_encoder", None))
    elif getattr(pipe, "transformer", None) is not None:
        kind, modules = "dit", (pipe.transformer, pipe.vae)
    else:
        raise TypeError(f"pipe: expected a Nested SD or DiT pipeline, got {type(pipe).__name__}")
    return canonical({"pipeline": kind, "weights": sampled_fingerprint(*modules), "guidance": float(guidance_scale),
                      **settings})


def sd_identity(pipe: Any, guidance_scale: float, guidance_rescale: float, height: int, width: int) -> dict:
    return model_identity(pipe, guidance_scale, guidance_rescale=float(guidance_rescale),
                          size=[int(height), int(width)])


def dit_identity(pipe: Any, guidance_scale: float, guided_channels: int | None) -> dict:
    return model_identity(pipe, guidance_scale, guided_channels=guided_channels)


def _is(pipe: Any, cls_name: str) -> bool:
    return any(c.__name__ == cls_name for c in type(pipe).__mro__)


def call_identity(pipe: Any, guidance_scale: float, height: int | None = None, width: int | None = None,
                  guidance_rescale: float = 0.0, guided_channels: int | None = 3) -> dict:
    """``model_identity`` of a call of ``pipe`` with these settings (the dict its ``calibration=`` check uses):
    Nested SD with its size and guidance rescale, Nested DiT with its guided channels, the other families (SDXL,
    SD3, FLUX, …) with their pipeline class name, the weights of the denoiser, VAE and every text encoder, the guidance and
    the size. Sizes left None are the pipeline's default."""
    if _is(pipe, "NestedDiTPipeline"):
        return dit_identity(pipe, guidance_scale, guided_channels)
    size = getattr(pipe, "default_sample_size", None)
    if size is None:
        size = pipe.unet.config.sample_size
    size = int(size if isinstance(size, int) else size[0]) * int(pipe.vae_scale_factor)
    height, width = height or size, width or size
    if _is(pipe, "NestedStableDiffusionPipeline"):
        return sd_identity(pipe, guidance_scale, guidance_rescale, height, width)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    encoders = [getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")]
    return canonical({"pipeline": type(pipe).__name__,   # the pipeline class: a family's code, named without
                      # reaching up to the family table (pipelines sit below it)
                      "weights": sampled_fingerprint(denoiser, pipe.vae, *encoders), "guidance": float(guidance_scale),
                      "guidance_rescale": float(guidance_rescale), "size": [int(height), int(width)]})


def sampler_identity(sampler: Any) -> dict:
    """``model_identity`` of a ``factories.PipelineSampler`` (the same dict the pipeline call computes); a
    guidance the sampler leaves out is the family's default."""
    o = sampler.options
    guidance = o.get("guidance_scale")
    if guidance is None:
        from .anytime import default_guidance
        guidance = default_guidance(type(sampler.pipe))
    return call_identity(sampler.pipe, guidance, o.get("height"), o.get("width"), o.get("guidance_rescale", 0.0),
                         o.get("guided_channels", 3))


def resolve_calibration(calibration: Any, sampler_settings: dict, model: Callable[[], dict]) -> Calibration | None:
    """A pipeline call's ``calibration=``: None, "none", "auto" (pipelines ship no calibrations: None), a
    ``Calibration`` or a calibration file, through the one resolver (``core.expected_change``); checked against
    this call's configuration before any model call — ValueError naming both configurations when it was made for
    another one."""
    calibration = resolve(calibration, sampler_settings, model)
    if calibration is not None:
        calibration.tracker()  # ValueError now if it needs a feature function that is not attached
    return calibration

