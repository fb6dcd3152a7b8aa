"""Nested Stable Diffusion (Elata et al., WACV 2024, §4.2 and supplementary §C.2) as a diffusers pipeline.

The outer process is DDIM (η_outer) on round(linspace(T−1, 0, K+1))[:-1]; its denoiser at each outer time t_k
is a complete inner run (DDIM η_inner = 0.85 by default, DPM-Solver++ 2S/2M, or a diffusers scheduler) from
x_{t_k} to x̂0 (the paper's Algorithm 1/2). Classifier-free guidance is part of the denoiser, so it acts in the
inner process only. One NFE = one UNet call (the guided [uncond, text] pair is one batched call).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from diffusers import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from ..core.denoisers import ModelDenoiser
from ..core.nested import NestedSampler
from ..core.noise_schedule import NoiseSchedule
from ..core.run import RunDefaults
from .adapters import checked_solver, pipeline_run
from .anytime import (AnytimeIterMixin, PipelineInterrupted, anytime_fields, anytime_pairs, callback_inputs,
                      check_call_args, with_anytime_fields)
from .expected_change import resolve_calibration, sd_identity
from .noise import make_noise


NestedStableDiffusionPipelineOutput = with_anytime_fields(StableDiffusionPipelineOutput, "NestedStableDiffusionPipelineOutput", "StableDiffusionPipelineOutput plus where in the nested run the images come from (the AnytimeInfo fields) and the x̂0 latent they were decoded from.", __name__)


class _TextCond:
    """Mutable conditioning passed through the core sampler to the UNet call (callbacks may replace embeds)."""

    def __init__(self, positive, negative, guidance_scale, rescale, cfg, timestep_cond, attn_kwargs):
        self.positive, self.negative = positive, negative
        self.guidance_scale, self.rescale, self.cfg = guidance_scale, rescale, cfg
        self.timestep_cond, self.attn_kwargs = timestep_cond, attn_kwargs

    def embeds(self) -> torch.Tensor:
        return torch.cat([self.negative, self.positive]) if self.cfg else self.positive  # uncond first (diffusers)


def _batch_of(prompt: Any) -> int | None:
    return 1 if isinstance(prompt, str) else len(prompt) if isinstance(prompt, list) else None


class NestedStableDiffusionPipeline(AnytimeIterMixin, StableDiffusionPipeline):
    r"""Anytime text-to-image generation with Nested Diffusion on any Stable Diffusion 1.x/2.x checkpoint.

    Loads like ``StableDiffusionPipeline`` (``from_pretrained``, ``from_pipe``, ``from_single_file``, LoRA and
    textual inversion loaders, ``.to()``, ``enable_model_cpu_offload``). ``pipe.scheduler`` only supplies the
    noise schedule (its betas) and the prediction type (ε or v); the sampling itself is the core NestedSampler.

    ``pipe(...)`` returns the final images; ``pipe.iter_anytime(...)`` (same arguments) yields one output per
    anytime update, decoding only the updates it yields. Both return/yield
    ``NestedStableDiffusionPipelineOutput`` (a ``StableDiffusionPipelineOutput`` with ``nfe`` etc.).
    """

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    # the run options a call leaves out (core.run): 5 × 20, DDIM inner (η 0.85), outer η implied by the inner
    # solver (√(1−ᾱ_t) for DPM-Solver++, the paper's §C.2)
    run_defaults = RunDefaults(outer_steps=5, inner_steps=20, inner_solver="ddim", outer_eta=None)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        outer_steps: int | None = None,
        inner_steps: int | list[int] | None = None,
        inner_solver: Any = None,
        inner_eta: float | None = None,
        outer_eta: float | str | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        max_nfe: int | None = None,
        deadline: float | None = None,
        previews: str | None = None,
        grid: str | None = None,
        guidance_rescale: float = 0.0,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
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

        Args:
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt, height, width,
            guidance_scale (default 7.5; CFG is on when > 1), guidance_rescale, cross_attention_kwargs, clip_skip,
            latents (x_T, not rescaled), generator, output_type ("pil", "np", "pt", "latent"), return_dict:
                as in ``StableDiffusionPipeline``.
            outer_steps (default 5; alias ``num_inference_steps``): outer DDIM steps K.
            inner_steps (default 20; alias ``num_inner_steps``): steps of each inner run (an int or one per outer
                step). Total NFE = Σ inner steps.
            inner_solver (alias ``inner_scheduler``): "ddim" (default), "dpmpp_2s", "dpmpp_2m", the authors'
                "DDIM" / "DPMSolver" (= dpmpp_2s), or a diffusers scheduler instance accepting ``timesteps=``
                (run through ``SchedulerSolver``, a fresh copy per inner run).
            inner_eta: DDIM η of the inner runs (default 0.85, §C.2); only for "ddim".
            outer_eta (alias ``eta``): η of the outer DDIM steps: a number, a per-step list, a callable
                (k, t, ᾱ_t) → η, or "sqrt_one_minus_alpha_bar". Default: √(1−ᾱ_t) with a DPM-Solver++ inner
                solver (the paper's high-order setting), else 0.
            max_nfe: NFE budget; stops with the best result within it (an inner run that cannot finish within
                the budget is not started, except the first, whose x̂0 previews are results).
            deadline: wall-clock budget in seconds, same semantics.
            previews: "first" (default: every inner x̂0 of the first inner run is an update), "none", "all".
            grid: "clean" (default; inner runs end on x̂0, ᾱ = 1) or "authors" (inner grids end at t = 1 → 0).
            callback_on_step_end(pipe, i, t, kwargs): called once per anytime update (see ``anytime_pairs``);
                kwargs["latents"] is the update's x̂0 latent; returned prompt embeddings take effect from the
                next UNet call. Setting ``pipe._interrupt = True`` stops at the next UNet call and returns the
                last finished update.
            denoiser_hook(denoiser) -> denoiser: wraps this call's model denoiser (profiling, NFE counting).
            calibration: a ``Calibration`` or a file from ``nested-diffusion calibrate --pipeline sd`` for this
                configuration (weights, guidance, size, sampler settings; checked before any model call:
                ValueError otherwise); every output then carries ``expected_change`` (per-sample predicted
                remaining change, from latent signals: no extra NFE, no extra decode; no flip probability, as SD
                has no classifier). None (default): ``expected_change`` is None.
            schedule: a named nested schedule instead of outer/inner steps: "progressive" (two 20-step inner
                runs from t = 999 and 899, then one run with the rest of the budget from t = 799: the first
                finished image after 20 NFE, a final image as good as vanilla sampling's) or "uniform"
                (5 outer steps of total_nfe / 5), or a ``core.schedules.Schedule`` (``make_schedule(...)``, for
                the builders' options). Passing it with outer_steps / inner_steps (or their aliases) is a
                ValueError. The outer times start at the pipeline's t = T − 1 (999).
            total_nfe: the schedule's budget, inner steps in total (default 100 = 5 × 20); only with a schedule name.

        Example: ``pipe("a cat", schedule="progressive", total_nfe=100)`` runs 20 + 20 + 60 inner steps from
        t = 999, 899, 799; ``pipe.nested_sampler`` is the core sampler it ran.
        """
        return self._final_output(locals())

    # ------------------------------------------------------------------------------------------------ internals
    def _check_prompts(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds) -> int:
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("prompt: pass exactly one of prompt (str or list of str) and prompt_embeds")
        if prompt is not None and (not isinstance(prompt, (str, list)) or
                                   isinstance(prompt, list) and not all(isinstance(p, str) for p in prompt)):
            raise TypeError(f"prompt: expected a str or a list of str, got {type(prompt).__name__}")
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt: the list of prompts is empty")
        batch = _batch_of(prompt) if prompt is not None else int(prompt_embeds.shape[0])
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("negative_prompt: pass at most one of negative_prompt and negative_prompt_embeds")
        if isinstance(negative_prompt, list) and len(negative_prompt) != batch:
            raise ValueError(f"negative_prompt: {len(negative_prompt)} negative prompts for a batch of {batch} "
                             f"prompts; pass one string, or one per prompt")
        if negative_prompt is not None and not isinstance(negative_prompt, (str, list)):
            raise TypeError(f"negative_prompt: expected a str or a list of str, got {type(negative_prompt).__name__}")
        if prompt_embeds is not None and negative_prompt_embeds is not None \
                and prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ValueError(f"negative_prompt_embeds: shape {tuple(negative_prompt_embeds.shape)} differs from "
                             f"prompt_embeds {tuple(prompt_embeds.shape)}")
        return batch

    def _check_call(self, a: dict) -> tuple:
        """Every argument check (before any model call): (callback tensor inputs, prompts, batch, latent shape)."""
        if a["height"] is None or a["width"] is None:
            size = self.unet.config.sample_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            a["height"] = a["height"] or size[0] * self.vae_scale_factor
            a["width"] = a["width"] or size[1] * self.vae_scale_factor
        for name in ("height", "width"):
            v, m = a[name], max(8, self.vae_scale_factor)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % m:
                raise ValueError(f"{name}: must be a positive multiple of {m}, got {v!r}")
        n_img = a["num_images_per_prompt"]
        if isinstance(n_img, bool) or not isinstance(n_img, int) or n_img < 1:
            raise ValueError(f"num_images_per_prompt: must be an integer ≥ 1, got {n_img!r}")
        tensor_inputs = callback_inputs(a["callback_on_step_end"], a["callback_on_step_end_tensor_inputs"]
                                        if a["callback_on_step_end_tensor_inputs"] is not None else ["latents"])
        check_call_args(a["max_nfe"], a["deadline"], a["previews"], a["output_type"], tensor_inputs,
                     self._callback_tensor_inputs, a["guidance_scale"])
        prompts = self._check_prompts(a["prompt"], a["negative_prompt"], a["prompt_embeds"],
                                      a["negative_prompt_embeds"])
        batch = prompts * n_img
        gen = a["generator"]
        if isinstance(gen, list) and len(gen) != batch:
            raise ValueError(f"generator: a list of {len(gen)} generators for {batch} images "
                             f"({prompts} prompts × {n_img}); pass one generator or one per image")
        shape = (batch, self.unet.config.in_channels, a["height"] // self.vae_scale_factor,
                 a["width"] // self.vae_scale_factor)
        if a["latents"] is not None and tuple(a["latents"].shape) != shape:
            raise ValueError(f"latents: expected shape {shape}, got {tuple(a['latents'].shape)}")
        return tensor_inputs, prompts, batch, shape

    def _nested_sampler(self, a: dict) -> NestedSampler:
        """The core sampler of this call (validates every grid and step count)."""
        config = dict(self.scheduler.config)
        if config.get("rescale_betas_zero_snr"):
            raise ValueError("scheduler: rescale_betas_zero_snr=True (ᾱ_T = 0) is not supported by the nested "
                             "sampler; use a scheduler config without it")
        schedule = NoiseSchedule.from_diffusers_config(config)
        run = checked_solver(pipeline_run(a, self.run_defaults, schedule.num_train_timesteps), schedule)
        self._guidance_scale, self._guidance_rescale = float(a["guidance_scale"]), float(a["guidance_rescale"])
        self._clip_skip, self._cross_attention_kwargs = a["clip_skip"], a["cross_attention_kwargs"]
        self._interrupt = False
        learned = self.unet.config.out_channels == 2 * self.unet.config.in_channels
        denoiser = ModelDenoiser(self._unet_fn, schedule, config.get("prediction_type", "epsilon"), learned)
        return NestedSampler.from_run(denoiser, run)

    def _prepare(self, **a):
        tensor_inputs, prompts, batch, shape = self._check_call(a)  # 1. every check before any model call
        sampler = self._nested_sampler(a)
        self.nested_sampler = sampler
        calibration = resolve_calibration(a["calibration"], sampler.calibration_settings(a["previews"]),
                                          lambda: sd_identity(self, a["guidance_scale"], a["guidance_rescale"],
                                                              a["height"], a["width"]))
        n_img, gen = a["num_images_per_prompt"], a["generator"]
        prompt, negative = a["prompt"], a["negative_prompt"]
        if isinstance(negative, str) and prompts > 1:
            negative = [negative] * prompts  # one negative prompt for every prompt
        if isinstance(negative, list) and isinstance(prompt, str):
            prompt = [prompt]
        # ---- 2. text encoder, noise, loop
        device = self._execution_device
        lora_scale = (a["cross_attention_kwargs"] or {}).get("scale")
        pos, neg = self.encode_prompt(prompt, device, n_img, self.do_classifier_free_guidance, negative,
                                      prompt_embeds=a["prompt_embeds"],
                                      negative_prompt_embeds=a["negative_prompt_embeds"],
                                      lora_scale=lora_scale, clip_skip=a["clip_skip"])
        dtype = pos.dtype
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:  # guidance-distilled UNets take w as an embedding
            w = torch.tensor(self._guidance_scale - 1).repeat(batch)
            timestep_cond = self.get_guidance_scale_embedding(
                w, embedding_dim=self.unet.config.time_cond_proj_dim).to(device=device, dtype=dtype)
        cond = _TextCond(pos, neg, self._guidance_scale, self._guidance_rescale, self.do_classifier_free_guidance,
                         timestep_cond, a["cross_attention_kwargs"])
        noise = make_noise(gen, batch, device, dtype)
        x_T = noise.randn(shape[1:]) if a["latents"] is None else a["latents"].to(device=device, dtype=dtype)

        def tensors() -> dict:
            return {"prompt_embeds": cond.positive, "negative_prompt_embeds": cond.negative}

        def apply(returned: dict) -> None:
            cond.positive = returned.get("prompt_embeds", cond.positive)
            cond.negative = returned.get("negative_prompt_embeds", cond.negative)

        pairs = anytime_pairs(self, sampler, noise, x_T, cond, a["max_nfe"], a["deadline"], a["previews"],
                              a["callback_on_step_end"], tensor_inputs, tensors, apply, a["denoiser_hook"],
                              calibration)
        ctx = dict(output_type=a["output_type"], return_dict=a["return_dict"], device=device, dtype=dtype,
                   generator=gen if isinstance(gen, (torch.Generator, list)) else None)
        return pairs, ctx

    def _unet_fn(self, x: torch.Tensor, t: torch.Tensor, cond: _TextCond) -> torch.Tensor:
        """ε (or v) for the core ModelDenoiser: one UNet call on the [uncond, text] batch, guided (CFG eq. 6)."""
        if self._interrupt:
            raise PipelineInterrupted()
        x_in, t_in = (torch.cat([x, x]), torch.cat([t, t])) if cond.cfg else (x, t)
        out = self.unet(x_in, t_in, encoder_hidden_states=cond.embeds(), timestep_cond=cond.timestep_cond,
                        cross_attention_kwargs=cond.attn_kwargs, return_dict=False)[0]
        if not cond.cfg:
            return out
        uncond, text = out.chunk(2)
        c = x.shape[1]  # guide the prediction channels; a learned-variance half comes from the text branch
        guided = uncond[:, :c] + cond.guidance_scale * (text[:, :c] - uncond[:, :c])
        if cond.rescale > 0:
            guided = rescale_noise_cfg(guided, text[:, :c], guidance_rescale=cond.rescale)
        return torch.cat([guided, text[:, c:]], dim=1) if out.shape[1] > c else guided

    def _output(self, update, x0: torch.Tensor, ctx: dict):
        output_type = ctx["output_type"]
        if output_type == "latent":
            image, nsfw = x0, None
        else:
            image = self.vae.decode(x0 / self.vae.config.scaling_factor, return_dict=False,
                                    generator=ctx["generator"])[0]
            image, nsfw = self.run_safety_checker(image, ctx["device"], ctx["dtype"])
            denormalize = [True] * image.shape[0] if nsfw is None else [not flag for flag in nsfw]
            image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize)
        if not ctx["return_dict"]:
            return image, nsfw
        return NestedStableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw, latents=x0,
                                                   **anytime_fields(update))
