"""Nested Stable Diffusion XL: the VP nested sampler of the SD 1.x pipeline with SDXL's conditioning.

Outer DDIM (η_outer) over round(linspace(T−1, 0, K+1))[:-1]; inner runs (DDIM η = 0.85 by default, DPM-Solver++,
or a diffusers scheduler instance) end on a clean x̂0 (ᾱ = 1). Every UNet call gets the two CLIP encoders'
penultimate states and ``added_cond_kwargs`` (pooled projection, time ids (orig, crop, target)); CFG batches
[negative, positive] and acts in the inner process only. One NFE = one UNet call.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput

from ..core.denoisers import ModelDenoiser
from ..core.nested import NestedSampler
from ..core.noise_schedule import NoiseSchedule
from ..core.run import RunDefaults
from .adapters import checked_solver, pipeline_run
from .anytime import (AnytimeIterMixin, PipelineInterrupted, anytime_pairs, bind_call, callback_inputs,
                      check_call_args)
from .modern import (check_generators, decode_sdxl_latents, decode_update, output_class,
                     preview_decoder)
from .expected_change import call_identity, resolve_calibration
from .noise import make_noise
from .previews import check_preview

NestedStableDiffusionXLPipelineOutput = output_class(StableDiffusionXLPipelineOutput,
                                                     "NestedStableDiffusionXLPipelineOutput", __name__)


class _XLCond:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def batch(self) -> tuple[torch.Tensor, dict]:
        if not self.cfg:
            return self.positive, {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return (torch.cat([self.negative, self.positive]),
                {"text_embeds": torch.cat([self.negative_pooled, self.pooled]),
                 "time_ids": torch.cat([self.negative_time_ids, self.time_ids])})


class NestedStableDiffusionXLPipeline(AnytimeIterMixin, StableDiffusionXLPipeline):
    r"""Anytime generation with Nested Diffusion on SDXL (loads like ``StableDiffusionXLPipeline``:
    ``from_pretrained``, ``from_pipe``, ``from_single_file``, LoRA/textual-inversion loaders, ``torch_dtype``,
    offloading). ``pipe.scheduler`` only supplies the betas and the prediction type."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "add_text_embeds",
                               "add_time_ids"]
    # the run options a call leaves out (core.run): as Nested SD (5 × 20, DDIM inner η 0.85, outer η implied)
    run_defaults = RunDefaults(outer_steps=5, inner_steps=20, inner_solver="ddim", outer_eta=None)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        outer_steps: int | None = None,
        inner_steps: int | list[int] | None = None,
        inner_solver: Any = None,
        inner_eta: float | None = None,
        outer_eta: float | str | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        max_nfe: int | None = None,
        deadline: float | None = None,
        previews: str | None = None,
        grid: str | None = None,
        preview: str | None = None,
        preview_vae: Any = None,
        preview_results: bool = False,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        denoiser_hook: Callable | None = None,
        calibration: Any = None,
        num_inference_steps: int | None = None,
        num_inner_steps: int | None = None,
        inner_scheduler: Any = None,
        eta: float | None = None,
        schedule: Any = None,
        total_nfe: int | None = None,
    ):
        r"""Generate images; returns the last anytime update (the final result unless stopped early).

        SDXL arguments as in ``StableDiffusionXLPipeline`` (latents = x_T, not rescaled). Nested arguments exactly
        as ``NestedStableDiffusionPipeline`` (outer_steps 5, inner_steps 20, inner_solver "ddim" with inner_eta
        0.85, "dpmpp_2s", "dpmpp_2m" or a scheduler instance; outer_eta; max_nfe; deadline; previews; grid;
        callback_on_step_end). Previews as ``NestedFluxPipeline`` (preview, preview_vae = e.g. taesdxl,
        preview_results); the final image always uses the full VAE. ``schedule`` ("progressive", "uniform" or a
        ``Schedule``) with ``total_nfe`` (default 100) instead of outer/inner steps, as in
        ``NestedStableDiffusionPipeline``: ``pipe(prompt, schedule="progressive", total_nfe=100)``.
        ``calibration``: a calibration (or file) from ``nested-diffusion calibrate --pipeline sdxl`` for this
        configuration (checked before any model call); every output then carries ``expected_change``.
        """
        return self._final_output(locals())

    def core_sampler(self, **kwargs) -> NestedSampler:
        """The core sampler a call with these nested arguments runs: its grid, inner steps and NFE schedule,
        built without any model call (the evaluation runners' bookkeeping)."""
        return self._core_sampler(bind_call(self, (), kwargs))

    def _core_sampler(self, a: dict) -> NestedSampler:
        config = dict(self.scheduler.config)
        if config.get("rescale_betas_zero_snr"):
            raise ValueError("scheduler: rescale_betas_zero_snr=True (ᾱ_T = 0) is not supported by the nested "
                             "sampler; use a scheduler config without it")
        schedule = NoiseSchedule.from_diffusers_config(config)
        run = checked_solver(pipeline_run(a, self.run_defaults, schedule.num_train_timesteps), schedule)
        denoiser = ModelDenoiser(self._unet_fn, schedule, config.get("prediction_type", "epsilon"))
        return NestedSampler.from_run(denoiser, run)

    def decode_x0(self, x0: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """An x̂0 latent → image in [−1, 1] through the full VAE (as the final image)."""
        return self._full_decode(x0)

    def _check(self, a: dict) -> tuple[list[str], str, int]:
        a["height"] = a["height"] or self.default_sample_size * self.vae_scale_factor
        a["width"] = a["width"] or self.default_sample_size * self.vae_scale_factor
        m = max(8, self.vae_scale_factor)
        for name in ("height", "width"):
            v = a[name]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % m:
                raise ValueError(f"{name}: must be a positive multiple of {m}, got {v!r}")
        n_img = a["num_images_per_prompt"]
        if isinstance(n_img, bool) or not isinstance(n_img, int) or n_img < 1:
            raise ValueError(f"num_images_per_prompt: must be an integer ≥ 1, got {n_img!r}")
        inputs = callback_inputs(a["callback_on_step_end"], a["callback_on_step_end_tensor_inputs"]
                                 if a["callback_on_step_end_tensor_inputs"] is not None else ["latents"])
        check_call_args(a["max_nfe"], a["deadline"], a["previews"], a["output_type"], inputs,
                     self._callback_tensor_inputs, a["guidance_scale"])
        self.check_inputs(a["prompt"], a["prompt_2"], a["height"], a["width"], 1, a["negative_prompt"],
                          a["negative_prompt_2"], a["prompt_embeds"], a["negative_prompt_embeds"],
                          a["pooled_prompt_embeds"], a["negative_pooled_prompt_embeds"])
        batch = (1 if isinstance(a["prompt"], str) else len(a["prompt"]) if a["prompt"] is not None
                 else a["prompt_embeds"].shape[0]) * n_img
        check_generators(a["generator"], batch)
        return inputs, check_preview(a["preview"], a["preview_vae"]), batch

    def _prepare(self, **a):
        tensor_inputs, preview, batch = self._check(a)
        shape = (batch, self.unet.config.in_channels, a["height"] // self.vae_scale_factor,
                 a["width"] // self.vae_scale_factor)
        if a["latents"] is not None and tuple(a["latents"].shape) != shape:
            raise ValueError(f"latents: expected shape {shape}, got {tuple(a['latents'].shape)}")
        sampler = self._core_sampler(a)
        self._guidance_scale, self._guidance_rescale = float(a["guidance_scale"]), float(a["guidance_rescale"])
        self._clip_skip, self._cross_attention_kwargs = a["clip_skip"], a["cross_attention_kwargs"]
        self._denoising_end, self._interrupt = None, False
        self.nested_sampler = sampler
        calibration = resolve_calibration(a["calibration"], sampler.calibration_settings(a["previews"]),
                                          lambda: call_identity(self, a["guidance_scale"], a["height"], a["width"],
                                                                a.get("guidance_rescale", 0.0)))
        cond = self._encode(a, batch)
        noise = make_noise(a["generator"], batch, cond.device, cond.positive.dtype)
        x_T = noise.randn(shape[1:]) if a["latents"] is None else a["latents"].to(cond.device, cond.positive.dtype)
        names = {"prompt_embeds": "positive", "negative_prompt_embeds": "negative", "add_text_embeds": "pooled",
                 "add_time_ids": "time_ids"}

        def apply(returned: dict) -> None:
            for key, attr in names.items():
                setattr(cond, attr, returned.get(key, getattr(cond, attr)))

        pairs = anytime_pairs(self, sampler, noise, x_T, cond, a["max_nfe"], a["deadline"], a["previews"],
                              a["callback_on_step_end"], tensor_inputs,
                              lambda: {k: getattr(cond, v) for k, v in names.items()}, apply, a["denoiser_hook"],
                              calibration)
        ctx = dict(output_type=a["output_type"], return_dict=a["return_dict"], spatial=lambda x0: x0,
                   output_cls=NestedStableDiffusionXLPipelineOutput, full=self._full_decode,
                   preview=preview_decoder(self, a, preview, None))
        return pairs, ctx

    def _encode(self, a: dict, batch: int) -> _XLCond:
        device = self._execution_device
        lora_scale = (a["cross_attention_kwargs"] or {}).get("scale")
        pos, neg, pooled, neg_pooled = self.encode_prompt(
            a["prompt"], a["prompt_2"], device, a["num_images_per_prompt"], self.do_classifier_free_guidance,
            a["negative_prompt"], a["negative_prompt_2"], a["prompt_embeds"], a["negative_prompt_embeds"],
            a["pooled_prompt_embeds"], a["negative_pooled_prompt_embeds"], lora_scale, a["clip_skip"])
        proj = (int(pooled.shape[-1]) if self.text_encoder_2 is None else self.text_encoder_2.config.projection_dim)
        size = (a["height"], a["width"])

        def time_ids(orig, crop, target):
            ids = self._get_add_time_ids(orig or size, crop, target or size, dtype=pos.dtype,
                                         text_encoder_projection_dim=proj)
            return ids.to(device).repeat(batch, 1)
        ids = time_ids(a["original_size"], a["crops_coords_top_left"], a["target_size"])
        neg_ids = ids
        if a["negative_original_size"] is not None and a["negative_target_size"] is not None:
            neg_ids = time_ids(a["negative_original_size"], a["negative_crops_coords_top_left"],
                               a["negative_target_size"])
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            w = torch.tensor(self._guidance_scale - 1).repeat(batch)
            timestep_cond = self.get_guidance_scale_embedding(
                w, embedding_dim=self.unet.config.time_cond_proj_dim).to(device=device, dtype=pos.dtype)
        return _XLCond(positive=pos.to(device), negative=neg, pooled=pooled.to(device), negative_pooled=neg_pooled,
                       time_ids=ids, negative_time_ids=neg_ids, cfg=self.do_classifier_free_guidance,
                       timestep_cond=timestep_cond, device=device)

    def _unet_fn(self, x: torch.Tensor, t: torch.Tensor, cond: _XLCond) -> torch.Tensor:
        """ε (or v) for the core ModelDenoiser: one UNet call on the [negative, positive] batch, guided."""
        if self._interrupt:
            raise PipelineInterrupted()
        x_in, t_in = (torch.cat([x, x]), torch.cat([t, t])) if cond.cfg else (x, t)
        embeds, added = cond.batch()
        out = self.unet(x_in, t_in, encoder_hidden_states=embeds, timestep_cond=cond.timestep_cond,
                        cross_attention_kwargs=self._cross_attention_kwargs, added_cond_kwargs=added,
                        return_dict=False)[0]
        if not cond.cfg:
            return out
        uncond, text = out.chunk(2)
        guided = uncond + self._guidance_scale * (text - uncond)
        if self._guidance_rescale > 0:
            guided = rescale_noise_cfg(guided, text, guidance_rescale=self._guidance_rescale)
        return guided

    def _full_decode(self, z: torch.Tensor) -> torch.Tensor:
        """As the stock decode: float32 VAE when a float16 one asks for it, latents_mean/std when configured."""
        image = decode_sdxl_latents(self.vae, z)
        return self.watermark.apply_watermark(image) if self.watermark is not None else image

    def _output(self, update, x0: torch.Tensor, ctx: dict):
        return decode_update(self, update, x0, ctx)
