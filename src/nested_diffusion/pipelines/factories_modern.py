"""Sampler factories that run the evaluation runners on the SDXL, SD3 and FLUX nested pipelines (the counterpart
of ``factories.sd_factory``, same conventions: sample i uses seed ``seed + i`` and prompt ``i % len(prompts)``;
only the snapshots the runners keep are decoded, through the pipeline's full VAE path).

The grid/NFE bookkeeping of each built sampler is the pipeline's own core sampler (``pipe.core_sampler``: a VP
``NestedSampler`` for SDXL, a ``FlowNestedSampler`` for SD3/FLUX), so the runners see exactly what a call runs.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import torch

from ..evaluation.snapshots import SamplerFactory
from .factories import PipelineSampler, prompt_inputs, sampled_fingerprint, step_arguments

FAMILIES = {"NestedStableDiffusionXLPipeline": "sdxl", "NestedStableDiffusion3Pipeline": "sd3",
            "NestedFluxPipeline": "flux"}


class ScheduleCarrier:
    """The sampler's own denoiser: it carries the schedule; the model runs only inside the pipeline call."""

    def __init__(self, schedule: Any):
        self.schedule = schedule

    def __call__(self, x, t, cond=None):
        raise RuntimeError("ModernPipelineSampler: the model runs inside pipe.iter_anytime; use stream()")


class ModernPipelineSampler(PipelineSampler):
    """``PipelineSampler.stream`` (one ``iter_anytime(..., output_type="latent")`` run) with the bookkeeping of
    the pipeline's core sampler and ``decode`` through ``pipe.decode_x0``."""

    def __init__(self, pipe: Any, latent_shape: tuple, outer: int | None, inner: int | None, options: dict,
                 decode_batch: int = 8, schedule: Any = None, total_nfe: int | None = None):
        self.steps = step_arguments(outer, inner, schedule, total_nfe)
        core = pipe.core_sampler(**self.steps, **options)
        self.denoiser, self.grid_convention = ScheduleCarrier(core.denoiser.schedule), core.grid_convention
        self.t_start, self.solver, self.outer_steps, self.times = core.t_start, core.solver, core.outer_steps, \
            core.times
        self.inner_steps, self.total_nfe = core.inner_steps, core.total_nfe
        self.config = core.config  # the resolved run (calibration_settings reads it)
        self.pipe, self.cond_arg, self.latent_shape = pipe, "prompt", tuple(latent_shape)
        self.options, self.outer_arg, self.inner_arg = dict(options), outer, inner
        self.decode_batch = int(decode_batch)
        self.calibration = None  # stream(calibration=) passes one to the pipeline call (PipelineSampler.stream)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x̂0 latents → float32 CPU images in [−1, 1] (the pipeline's final decode), ``decode_batch`` at a time."""
        h, w = self.options["height"], self.options["width"]
        out = [self.pipe.decode_x0(latents[i:i + self.decode_batch], h, w).float().clamp(-1, 1).cpu()
               for i in range(0, latents.shape[0], self.decode_batch)]
        return torch.cat(out)


def latent_shape_of(pipe: Any, family: str, height: int, width: int) -> tuple:
    f = pipe.vae_scale_factor
    if family == "flux":
        h, w = 2 * (height // (f * 2)), 2 * (width // (f * 2))
        return ((h // 2) * (w // 2), int(pipe.transformer.config.in_channels))
    model = pipe.unet if family == "sdxl" else pipe.transformer
    return (int(model.config.in_channels), height // f, width // f)


def modern_factory(pipe: Any, prompts: "Sequence[str] | str | os.PathLike", guidance_scale: float | None = None,
                   inner_solver: Any = None, inner_eta: Any = None, outer_eta: Any = None, grid: str | None = None,
                   negative_prompt: str | None = None, height: int | None = None, width: int | None = None,
                   decode_batch: int = 8, model_id: str | None = None) -> SamplerFactory:
    """Runners on a Nested SDXL / SD3 / FLUX pipeline; None keeps the pipeline's own default for that argument."""
    family = FAMILIES.get(type(pipe).__name__)
    if family is None:
        raise TypeError(f"pipe: expected one of {sorted(FAMILIES)}, got {type(pipe).__name__}")
    prompts, height, width = prompt_inputs(pipe, prompts, decode_batch, height, width)
    given = dict(guidance_scale=guidance_scale, inner_solver=inner_solver, inner_eta=inner_eta,
                 outer_eta=outer_eta, grid=grid, negative_prompt=negative_prompt)
    options = {k: v for k, v in given.items() if v is not None}
    options.update(height=height, width=width)
    latent = latent_shape_of(pipe, family, height, width)
    model = pipe.unet if family == "sdxl" else pipe.transformer
    encoders = [getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")]

    def build(outer: int, inner: int) -> ModernPipelineSampler:
        return ModernPipelineSampler(pipe, latent, outer, inner, options, decode_batch)

    def build_schedule(name: str, total_nfe: int) -> ModernPipelineSampler:  # SDXL; SD3/FLUX: VP-only ValueError
        return ModernPipelineSampler(pipe, latent, None, None, options, decode_batch, name, total_nfe)

    def cond_for(indices: Sequence[int]) -> list:
        return [prompts[i % len(prompts)] for i in indices]
    build(1, 1)  # validates the options before any sampling
    identity = model_id or f"{type(pipe).__name__}-{sampled_fingerprint(model, pipe.vae, *encoders)}"
    info = dict(pipeline=family, model=identity,
                **{k: v if isinstance(v, (int, float, str)) else type(v).__name__ for k, v in options.items()},
                solver=str(inner_solver or type(pipe).run_defaults.inner_solver),
                prompts=dict(count=len(prompts), first=prompts[0],
                             sha256=hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:12]),
                conditioning="sample i: seed + i, prompt i % count", dtype=str(model.dtype),
                device=pipe._execution_device.type, decode="full VAE decode of the x̂0 latent, clamp [-1, 1], uint8")
    return SamplerFactory(build, latent, cond_for, info, build_schedule=build_schedule)
