"""Nested FLUX.1 (rectified flow): anytime text-to-image on any diffusers FLUX checkpoint.

Outer process: the flow DDIM step from each inner result (default: fresh noise, ``outer_eta="fresh"`` — an inner
ODE sample re-noised afresh keeps the marginals exact, see README); inner process: Euler (or Heun) on the flow ODE
over the FLUX grid linspace(1, 1/n, n)·u, shifted with μ from the image size. FLUX.1-dev's distilled guidance
is its ``guidance`` embedding (one transformer call per NFE); ``true_cfg_scale`` > 1 with a negative prompt adds
real CFG (two calls per NFE), both in the inner process only.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

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

NestedFluxPipelineOutput = output_class(FluxPipelineOutput, "NestedFluxPipelineOutput", __name__)


class _FluxCond:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class NestedFluxPipeline(AnytimeIterMixin, FluxPipeline):
    r"""Anytime generation with Nested Diffusion on FLUX.1 (loads like ``FluxPipeline``: ``from_pretrained``,
    ``from_pipe``, ``torch_dtype``, offloading, LoRA). ``pipe.scheduler`` (FlowMatchEulerDiscreteScheduler) only
    supplies the shift; sampling is the core FlowNestedSampler. ``pipe(...)`` returns the final images;
    ``pipe.iter_anytime(...)`` (same arguments) yields one output per anytime update."""

    _callback_tensor_inputs = ["latents", "prompt_embeds"]
    # the run options a call leaves out (core.run): 4 × 7 flow Euler inner, outer flow DDIM with fresh noise
    run_defaults = RunDefaults(kind=FLOW, outer_steps=4, inner_steps=7, nfe=28, inner_solver="euler",
                               outer_eta="fresh")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        true_cfg_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        outer_steps: int | None = None,
        inner_steps: int | list[int] | None = None,
        inner_solver: Any = None,
        inner_eta: float | str | None = None,
        outer_eta: float | str | None = None,
        guidance_scale: float = 3.5,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
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
        max_sequence_length: int = 512,
        mu: float | None = None,
        num_inference_steps: int | None = None,
        num_inner_steps: int | None = None,
        inner_scheduler: Any = None,
        eta: float | None = None,
        schedule: Any = None,
        total_nfe: int | None = None,
    ):
        r"""Generate images; returns the last anytime update (the final result unless stopped early).

        FLUX arguments as in ``FluxPipeline``. Nested arguments as ``NestedStableDiffusionPipeline``: outer_steps
        (default 4; alias num_inference_steps), inner_steps (default 7; alias num_inner_steps), inner_solver
        ("euler" default, "heun"), inner_eta (Euler's flow DDIM η; "fresh" redraws all noise), outer_eta (alias
        eta; default "fresh"; 0 = deterministic flow DDIM), max_nfe, deadline, previews ("first", "none", "all"),
        grid ("clean" = FLUX's linspace(1, 1/n, n); "sigma_min" = diffusers' default grid), callback_on_step_end
        (once per update; kwargs["latents"] is the packed x̂0), mu (default from the image size).
        Previews: preview=None/"vae" (full VAE for every decoded update), "tiny" with preview_vae (an
        AutoencoderTiny, e.g. taef1), or "latent_rgb"; preview_results=True also uses it for intermediate inner
        results. The final image always uses the full VAE.
        ``schedule`` ("progressive", "uniform" or a ``Schedule``) with ``total_nfe``: a named split of the budget
        instead of outer/inner steps; the progressive schedule's outer times are flow times u (1.0, 0.9, 0.8).
        ``calibration``: a calibration (or file) from ``nested-diffusion calibrate --pipeline flux`` for this
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
        h, w = 2 * (a["height"] // (self.vae_scale_factor * 2)), 2 * (a["width"] // (self.vae_scale_factor * 2))
        cfg = self.scheduler.config
        mu = a["mu"] if a["mu"] is not None else calculate_shift(
            (h // 2) * (w // 2), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        return FlowNestedSampler.from_run(FlowDenoiser(self._transformer_fn, flow_schedule_of(self.scheduler, mu)),
                                          pipeline_run(a, self.run_defaults))

    def decode_x0(self, x0: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """A packed x̂0 latent → image in [−1, 1] through the full VAE (as the final image)."""
        return self._full_decode(self._unpack_latents(x0, height, width, self.vae_scale_factor))

    def _default_size(self, a: dict) -> None:
        a["height"] = a["height"] or self.default_sample_size * self.vae_scale_factor
        a["width"] = a["width"] or self.default_sample_size * self.vae_scale_factor

    def _check(self, a: dict) -> tuple[list[str], str]:
        m = self.vae_scale_factor * 2
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
        self.check_inputs(a["prompt"], a["prompt_2"], a["height"], a["width"], negative_prompt=a["negative_prompt"],
                          negative_prompt_2=a["negative_prompt_2"], prompt_embeds=a["prompt_embeds"],
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
        h, w = 2 * (a["height"] // (self.vae_scale_factor * 2)), 2 * (a["width"] // (self.vae_scale_factor * 2))
        channels = self.transformer.config.in_channels // 4
        seq = (h // 2) * (w // 2)
        if a["latents"] is not None and tuple(a["latents"].shape) != (batch, seq, channels * 4):
            raise ValueError(f"latents: expected packed shape {(batch, seq, channels * 4)}, "
                             f"got {tuple(a['latents'].shape)}")
        sampler = self._core_sampler(a)
        self._guidance_scale, self._joint_attention_kwargs = a["guidance_scale"], a["joint_attention_kwargs"]
        self._interrupt, self._current_timestep = False, None
        self.nested_sampler = sampler
        calibration = resolve_calibration(a["calibration"], sampler.calibration_settings(a["previews"]),
                                          lambda: call_identity(self, a["guidance_scale"], a["height"], a["width"],
                                                                a.get("guidance_rescale", 0.0)))
        cond = self._encode(a, batch, h, w)
        noise = make_noise(gen, batch, cond.device, cond.dtype)
        if a["latents"] is None:  # drawn unpacked (B, C, h, w) then packed, as FluxPipeline.prepare_latents
            x_T = self._pack_latents(noise.randn((channels, h, w)), batch, channels, h, w)
        else:
            x_T = a["latents"].to(device=cond.device, dtype=cond.dtype)

        def apply(returned: dict) -> None:
            cond.prompt_embeds = returned.get("prompt_embeds", cond.prompt_embeds)

        pairs = anytime_pairs(self, sampler, noise, x_T, cond, a["max_nfe"], a["deadline"], a["previews"],
                              a["callback_on_step_end"], tensor_inputs,
                              lambda: {"prompt_embeds": cond.prompt_embeds}, apply, a["denoiser_hook"],
                              calibration)
        ctx = dict(output_type=a["output_type"], return_dict=a["return_dict"], output_cls=NestedFluxPipelineOutput,
                   spatial=lambda x0: self._unpack_latents(x0, a["height"], a["width"], self.vae_scale_factor),
                   full=self._full_decode,
                   preview=preview_decoder(self, a, preview, self.vae.config.shift_factor))
        return pairs, ctx

    def _encode(self, a: dict, batch: int, h: int, w: int) -> _FluxCond:
        device = self._execution_device
        lora_scale = (a["joint_attention_kwargs"] or {}).get("scale")
        kw = dict(device=device, num_images_per_prompt=a["num_images_per_prompt"],
                  max_sequence_length=a["max_sequence_length"], lora_scale=lora_scale)
        pos, pooled, text_ids = self.encode_prompt(prompt=a["prompt"], prompt_2=a["prompt_2"],
                                                   prompt_embeds=a["prompt_embeds"],
                                                   pooled_prompt_embeds=a["pooled_prompt_embeds"], **kw)
        has_neg = a["negative_prompt"] is not None or (a["negative_prompt_embeds"] is not None and
                                                       a["negative_pooled_prompt_embeds"] is not None)
        true_cfg = a["true_cfg_scale"] > 1 and has_neg
        neg = self.encode_prompt(prompt=a["negative_prompt"], prompt_2=a["negative_prompt_2"],
                                 prompt_embeds=a["negative_prompt_embeds"],
                                 pooled_prompt_embeds=a["negative_pooled_prompt_embeds"], **kw) if true_cfg else None
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([1], a["guidance_scale"], device=device, dtype=torch.float32).expand(batch)
        img_ids = self._prepare_latent_image_ids(batch, h // 2, w // 2, device, pos.dtype)
        return _FluxCond(prompt_embeds=pos, pooled=pooled, text_ids=text_ids, neg=neg, guidance=guidance,
                         img_ids=img_ids, true_cfg=float(a["true_cfg_scale"]) if true_cfg else None, device=device,
                         dtype=pos.dtype)

    def _transformer_fn(self, x: torch.Tensor, sigma: torch.Tensor, cond: _FluxCond) -> torch.Tensor:
        """The velocity at σ, with FluxPipeline's timestep arithmetic (1000 σ in float32, cast, divided by 1000)."""
        if self._interrupt:
            raise PipelineInterrupted()
        t = (sigma.to(x.device) * 1000).to(x.dtype)
        self._current_timestep = t[0]

        def call(embeds, pooled, text_ids):
            return self.transformer(hidden_states=x, timestep=t / 1000, guidance=cond.guidance,
                                    pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                    img_ids=cond.img_ids, joint_attention_kwargs=self._joint_attention_kwargs,
                                    return_dict=False)[0]
        v = call(cond.prompt_embeds, cond.pooled, cond.text_ids)
        if cond.true_cfg is not None:
            v_neg = call(*cond.neg)
            v = v_neg + cond.true_cfg * (v - v_neg)
        return v

    def _full_decode(self, z: torch.Tensor) -> torch.Tensor:
        z = (z / self.vae.config.scaling_factor) + self.vae.config.shift_factor
        return self.vae.decode(z.to(execution_device(self.vae), vae_dtype(self.vae)), return_dict=False)[0]

    def _output(self, update, x0: torch.Tensor, ctx: dict):
        return decode_update(self, update, x0, ctx)
