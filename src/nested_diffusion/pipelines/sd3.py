"""Nested Stable Diffusion 3 / 3.5 (rectified flow): anytime text-to-image on any diffusers SD3 checkpoint.

Outer process: the flow DDIM step from each inner result (default ``outer_eta="fresh"``, see README); inner
process: Euler (or Heun) on the flow ODE over diffusers' default SD3 grid (``grid="sigma_min"``:
linspace(1, σ_min, n)·u, then the static shift s = 3). Classifier-free guidance ([negative, positive] batch, one
transformer call per NFE) acts in the inner process only. Skip-layer guidance is not offered.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

from ..core.flow_nested import FlowNestedSampler
from ..core.flow_solvers import FlowDenoiser
from ..core.registry import FLOW
from ..core.run import RunDefaults
from .adapters import pipeline_run
from .anytime import (AnytimeIterMixin, PipelineInterrupted, anytime_pairs, bind_call, callback_inputs,
                      check_call_args)
from .modern import (check_generators, decode_update, execution_device, flow_schedule_of, output_class,
                     preview_decoder, vae_dtype)
from .expected_change import call_identity, resolve_calibration
from .noise import make_noise
from .previews import check_preview

NestedStableDiffusion3PipelineOutput = output_class(StableDiffusion3PipelineOutput,
                                                    "NestedStableDiffusion3PipelineOutput", __name__)


class _SD3Cond:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def embeds(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cfg:
            return self.positive, self.pooled
        return torch.cat([self.negative, self.positive]), torch.cat([self.negative_pooled, self.pooled])


class NestedStableDiffusion3Pipeline(AnytimeIterMixin, StableDiffusion3Pipeline):
    r"""Anytime generation with Nested Diffusion on SD3/SD3.5 (loads like ``StableDiffusion3Pipeline``).
    ``pipe.scheduler`` (FlowMatchEulerDiscreteScheduler) only supplies the shift. ``pipe(...)`` returns the final
    images; ``pipe.iter_anytime(...)`` (same arguments) yields one output per anytime update."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds"]
    # the run options a call leaves out (core.run): 4 × 7 flow Euler inner, outer flow DDIM with fresh noise
    run_defaults = RunDefaults(kind=FLOW, outer_steps=4, inner_steps=7, nfe=28, inner_solver="euler",
                               outer_eta="fresh", grid="sigma_min")   # the stock SD3 grid

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        outer_steps: int | None = None,
        inner_steps: int | list[int] | None = None,
        inner_solver: Any = None,
        inner_eta: float | str | None = None,
        outer_eta: float | str | None = None,
        guidance_scale: float = 7.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
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
        max_sequence_length: int = 256,
        mu: float | None = None,
        num_inference_steps: int | None = None,
        num_inner_steps: int | None = None,
        inner_scheduler: Any = None,
        eta: float | None = None,
        schedule: Any = None,
        total_nfe: int | None = None,
    ):
        r"""Generate images; returns the last anytime update (the final result unless stopped early).

        SD3 arguments as in ``StableDiffusion3Pipeline``; nested and preview arguments as ``NestedFluxPipeline``
        (outer_steps default 4, inner_steps 7, inner_solver "euler"/"heun", outer_eta default "fresh"), except
        grid defaults to "sigma_min" (the stock SD3 grid) and CFG (guidance_scale > 1) runs in the inner process.
        ``schedule`` ("progressive", "uniform" or a ``Schedule``) with ``total_nfe``: a named split of the budget
        instead of outer/inner steps; the progressive schedule's outer times are flow times u (1.0, 0.9, 0.8).
        ``calibration``: a calibration (or file) from ``nested-diffusion calibrate --pipeline sd3`` for this
        configuration (checked before any model call); every output then carries ``expected_change``.
        """
        return self._final_output(locals())

    def core_sampler(self, **kwargs) -> FlowNestedSampler:
        """The core sampler a call with these (nested, size, mu) arguments runs: its grid, inner steps and NFE
        schedule, built without any model call (the evaluation runners' bookkeeping)."""
        a = bind_call(self, (), kwargs)
        self._default_size(a)
        return self._core_sampler(a)

    def _core_sampler(self, a: dict) -> FlowNestedSampler:
        cfg, mu = self.scheduler.config, a["mu"]
        if cfg.get("use_dynamic_shifting") and mu is None:
            p, f = self.transformer.config.patch_size, self.vae_scale_factor
            mu = calculate_shift((a["height"] // f // p) * (a["width"] // f // p), cfg.get("base_image_seq_len", 256),
                                 cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                                 cfg.get("max_shift", 1.16))
        return FlowNestedSampler.from_run(FlowDenoiser(self._transformer_fn, flow_schedule_of(self.scheduler, mu)),
                                          pipeline_run(a, self.run_defaults))

    def decode_x0(self, x0: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """An x̂0 latent → image in [−1, 1] through the full VAE (as the final image)."""
        return self._full_decode(x0)

    def _default_size(self, a: dict) -> None:
        a["height"] = a["height"] or self.default_sample_size * self.vae_scale_factor
        a["width"] = a["width"] or self.default_sample_size * self.vae_scale_factor

    def _check(self, a: dict) -> tuple[list[str], str]:
        m = self.vae_scale_factor * self.patch_size
        self._default_size(a)
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
        self.check_inputs(a["prompt"], a["prompt_2"], a["prompt_3"], a["height"], a["width"],
                          negative_prompt=a["negative_prompt"], negative_prompt_2=a["negative_prompt_2"],
                          negative_prompt_3=a["negative_prompt_3"], prompt_embeds=a["prompt_embeds"],
                          negative_prompt_embeds=a["negative_prompt_embeds"],
                          pooled_prompt_embeds=a["pooled_prompt_embeds"],
                          negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
                          max_sequence_length=a["max_sequence_length"])
        return inputs, check_preview(a["preview"], a["preview_vae"])

    def _prepare(self, **a):
        tensor_inputs, preview = self._check(a)
        batch = (1 if isinstance(a["prompt"], str) else len(a["prompt"]) if a["prompt"] is not None
                 else a["prompt_embeds"].shape[0]) * a["num_images_per_prompt"]
        gen = a["generator"]
        check_generators(gen, batch)
        shape = (batch, self.transformer.config.in_channels, a["height"] // self.vae_scale_factor,
                 a["width"] // self.vae_scale_factor)
        if a["latents"] is not None and tuple(a["latents"].shape) != shape:
            raise ValueError(f"latents: expected shape {shape}, got {tuple(a['latents'].shape)}")
        sampler = self._core_sampler(a)
        self._guidance_scale, self._clip_skip = a["guidance_scale"], a["clip_skip"]
        self._joint_attention_kwargs, self._interrupt = a["joint_attention_kwargs"], False
        self.nested_sampler = sampler
        calibration = resolve_calibration(a["calibration"], sampler.calibration_settings(a["previews"]),
                                          lambda: call_identity(self, a["guidance_scale"], a["height"], a["width"],
                                                                a.get("guidance_rescale", 0.0)))
        cond = self._encode(a)
        noise = make_noise(gen, batch, cond.device, cond.positive.dtype)
        x_T = noise.randn(shape[1:]) if a["latents"] is None else a["latents"].to(cond.device, cond.positive.dtype)
        names = {"prompt_embeds": "positive", "negative_prompt_embeds": "negative", "pooled_prompt_embeds": "pooled"}

        def apply(returned: dict) -> None:
            for key, attr in names.items():
                setattr(cond, attr, returned.get(key, getattr(cond, attr)))

        pairs = anytime_pairs(self, sampler, noise, x_T, cond, a["max_nfe"], a["deadline"], a["previews"],
                              a["callback_on_step_end"], tensor_inputs,
                              lambda: {k: getattr(cond, v) for k, v in names.items()}, apply, a["denoiser_hook"],
                              calibration)
        ctx = dict(output_type=a["output_type"], return_dict=a["return_dict"], spatial=lambda x0: x0,
                   output_cls=NestedStableDiffusion3PipelineOutput, full=self._full_decode,
                   preview=preview_decoder(self, a, preview, self.vae.config.shift_factor))
        return pairs, ctx

    def _encode(self, a: dict) -> _SD3Cond:
        device = self._execution_device
        lora_scale = (a["joint_attention_kwargs"] or {}).get("scale")
        pos, neg, pooled, neg_pooled = self.encode_prompt(
            prompt=a["prompt"], prompt_2=a["prompt_2"], prompt_3=a["prompt_3"], negative_prompt=a["negative_prompt"],
            negative_prompt_2=a["negative_prompt_2"], negative_prompt_3=a["negative_prompt_3"],
            do_classifier_free_guidance=self.do_classifier_free_guidance, prompt_embeds=a["prompt_embeds"],
            negative_prompt_embeds=a["negative_prompt_embeds"], pooled_prompt_embeds=a["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"], device=device,
            clip_skip=a["clip_skip"], num_images_per_prompt=a["num_images_per_prompt"],
            max_sequence_length=a["max_sequence_length"], lora_scale=lora_scale)
        return _SD3Cond(positive=pos, negative=neg, pooled=pooled, negative_pooled=neg_pooled, device=device,
                        cfg=self.do_classifier_free_guidance, scale=float(a["guidance_scale"]))

    def _transformer_fn(self, x: torch.Tensor, sigma: torch.Tensor, cond: _SD3Cond) -> torch.Tensor:
        """The (guided) velocity at σ; the transformer sees timestep 1000 σ (float32), as in the stock loop."""
        if self._interrupt:
            raise PipelineInterrupted()
        t = sigma.to(x.device) * 1000
        x_in, t_in = (torch.cat([x, x]), torch.cat([t, t])) if cond.cfg else (x, t)
        embeds, pooled = cond.embeds()
        v = self.transformer(hidden_states=x_in, timestep=t_in, encoder_hidden_states=embeds,
                             pooled_projections=pooled, joint_attention_kwargs=self._joint_attention_kwargs,
                             return_dict=False)[0]
        if not cond.cfg:
            return v
        uncond, text = v.chunk(2)
        return uncond + cond.scale * (text - uncond)

    def _full_decode(self, z: torch.Tensor) -> torch.Tensor:
        z = (z / self.vae.config.scaling_factor) + self.vae.config.shift_factor
        return self.vae.decode(z.to(execution_device(self.vae), vae_dtype(self.vae)), return_dict=False)[0]

    def _output(self, update, x0: torch.Tensor, ctx: dict):
        return decode_update(self, update, x0, ctx)
