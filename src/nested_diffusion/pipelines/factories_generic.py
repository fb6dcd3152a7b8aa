"""The evaluation runners (``sample``, ``eval``) on a generic family: a stock diffusers pipeline run through
``anytime(..., decode=False)`` (``NestedScheduler``), same conventions as the other factories: sample i uses seed
``seed + i`` and prompt ``i % len(prompts)``; only the snapshots the runners keep are decoded, as the stock
pipeline decodes its final latents (``any_pipeline.spatial_latents`` + ``vae_decode``).

The grid / NFE bookkeeping is a core ``FlowNestedSampler`` of the same resolved run (its outer times, inner steps
and NFE schedule); the model runs only inside the pipeline call, with the pipeline's own scheduler as the inner
solver (first order: one model call per inner step, as the core's Euler counts).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import torch

from ..core.events import AnytimeUpdate
from ..core.flow_nested import FlowNestedSampler
from ..core.flow_schedule import FlowSchedule
from ..core.flow_solvers import FlowDenoiser
from ..core.registry import FLOW
from ..core.schedules import Schedule
from ..evaluation.snapshots import SamplerFactory
from .factories import check_stream_batch, prompt_inputs, sampled_fingerprint


def _no_model(x, sigma, cond=None):
    raise RuntimeError("GenericPipelineSampler: the model runs inside the pipeline call; use stream()")


def latent_shape(layout: str, pipe: Any, height: int, width: int) -> tuple:
    """The per-sample shape of the latents the pipeline's loop steps (packed tokens for FLUX-type layouts)."""
    f = pipe.vae_scale_factor
    h, w = height // (2 * f), width // (2 * f)
    channels = int(pipe.transformer.config.in_channels)
    if layout in ("flux", "flux2", "qwen"):
        return (h * w, channels)
    if layout == "kl":
        return (channels, 2 * h, 2 * w)
    raise ValueError(f"layout: {layout!r} has no image latent shape here (valid: flux, flux2, qwen, kl)")


def decode_latents(layout: str, pipe: Any, x0: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """x̂0 latents in the loop's layout → images in [−1, 1], as the stock pipeline decodes its final latents."""
    from .any_pipeline import spatial_latents, vae_decode
    call = dict(height=height, width=width)
    if layout == "flux2":
        f = pipe.vae_scale_factor
        grid = torch.zeros(x0.shape[0], 1, height // (2 * f), width // (2 * f))
        call["latent_ids"] = pipe._prepare_latent_ids(grid).to(x0.device)
    return vae_decode(layout, pipe, spatial_latents(layout, pipe, x0, call))


class _ForwardCall:
    """One transformer forward's arguments, handed through a ``wrap_denoiser`` wrapper as its ``x``."""

    def __init__(self, args: tuple, kwargs: dict):
        self.args, self.kwargs = args, kwargs
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        self.is_cuda = bool(tensors) and tensors[0].is_cuda


class _ForwardDenoiser:
    """The transformer's forward as a denoiser for ``stream(wrap_denoiser=)`` (timing / counting wrappers see every
    transformer forward: with true CFG, two per step)."""

    def __init__(self, forward: Any, schedule: Any):
        self.forward, self.schedule = forward, schedule

    def __call__(self, x: _ForwardCall, t: Any = None, cond: Any = None):
        return self.forward(*x.args, **x.kwargs)


class GenericPipelineSampler(FlowNestedSampler):
    """The bookkeeping of a resolved flow run (a ``FlowNestedSampler`` that never calls its model) whose
    ``stream`` is one ``anytime(pipe, ..., decode=False)`` run and whose ``decode`` is the stock decode.
    ``learned_variance`` False: the calibration runs (``evaluation.calibration_runs.run_chunk``) record no
    variance through a wrapper (its ``wrap_denoiser`` sees transformer forwards, two per step with true CFG)."""

    learned_variance = False

    def __init__(self, pipe: Any, family: Any, latent: tuple, options: dict, decode_batch: int, **steps):
        from ..core.run import resolve_run
        cfg = pipe.scheduler.config
        T = int(cfg.get("num_train_timesteps", 1000))
        given = {k: v for k, v in dict(steps, outer_eta=options.get("outer_eta"), grid=options.get("grid")).items()
                 if v is not None}
        run = resolve_run(defaults=family.defaults(), names={"schedule_options": None}, num_train_timesteps=T,
                          **given)
        super().__init__(FlowDenoiser(_no_model, FlowSchedule(shift=float(cfg.get("shift", 1.0)),
                                                                 num_train_timesteps=T)), run=run)
        self.pipe, self.family, self.latent_shape = pipe, family, tuple(latent)
        self.options, self.decode_batch = dict(options), int(decode_batch)
        self.cond_arg = "prompt"
        self.calibration = None

    def stream(self, seeds, shape, cond=None, max_nfe=None, deadline=None, previews=None, x_T=None,
               device=None, dtype=None, stop=None, grad=False, wrap_denoiser=None, calibration=None):
        from .any_pipeline import anytime
        shape = check_stream_batch(shape, self.latent_shape, cond, "prompt")
        if grad or (calibration or self.calibration) is not None:
            what = "grad" if grad else "calibration"
            raise ValueError(f"{what}: not available for the generic family {self.family.name} (a stock pipeline "
                             f"through NestedScheduler)")
        seeds = [int(s) for s in (seeds if isinstance(seeds, (list, tuple, range)) else getattr(seeds, "seeds"))]
        run = self.config
        o = {k: v for k, v in self.options.items() if k not in ("outer_eta", "grid")}
        extra = {} if x_T is None else {"latents": x_T}
        transformer = self.pipe.transformer
        if wrap_denoiser is not None:
            wrapped = wrap_denoiser(_ForwardDenoiser(transformer.forward, self.denoiser.schedule))
            transformer.forward = lambda *a, **k: wrapped(_ForwardCall(a, k), None, None)
        try:
            for u in anytime(self.pipe, prompt=list(cond),
                             schedule=Schedule(run.schedule, tuple(run.inner_steps), run.outer_times),
                             outer_eta=run.outer_eta, grid=run.grid, seed=seeds, max_nfe=max_nfe, deadline=deadline,
                             previews=previews, stop=stop, decode=False,
                             generator=[torch.Generator().manual_seed(s) for s in seeds], **o, **extra):
                yield AnytimeUpdate.of(u.x0, u)
        finally:
            if wrap_denoiser is not None:
                del transformer.forward            # the class's forward again

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        h, w = self.options["height"], self.options["width"]
        out = [decode_latents(self.family.layout, self.pipe, latents[i:i + self.decode_batch], h, w)
               .float().clamp(-1, 1).cpu() for i in range(0, latents.shape[0], self.decode_batch)]
        return torch.cat(out)


def generic_factory(pipe: Any, prompts: "Sequence[str] | str | os.PathLike", guidance_scale: float | None = None,
                    outer_eta: Any = None, grid: str | None = None, negative_prompt: str | None = None,
                    height: int | None = None, width: int | None = None, decode_batch: int = 8,
                    model_id: str | None = None, family: str | None = None) -> SamplerFactory:
    """Runners on a stock pipeline of a generic image family (``any_pipeline.GENERIC_FAMILIES``; ``family``: its
    name, default: found from the pipeline's class); None keeps the pipeline's own default for that argument. The
    inner solver is the pipeline's own scheduler."""
    from .any_pipeline import GENERIC_FAMILIES, generic_family_of
    if family is not None and family not in GENERIC_FAMILIES:
        raise ValueError(f"family: {family!r} is not a generic family; valid: {', '.join(GENERIC_FAMILIES)}")
    fam = GENERIC_FAMILIES[family] if family is not None else generic_family_of(pipe)
    if fam is None or not any(c.__name__ in fam.pipelines for c in type(pipe).__mro__):
        raise TypeError(f"pipe: {type(pipe).__name__} is not the stock pipeline of "
                        f"{'a generic family' if fam is None else fam.name + ' (' + ', '.join(fam.pipelines) + ')'}")
    if fam.video:
        raise ValueError(f"pipe: {fam.name} is a video family; the evaluation runners record images")
    if fam.defaults().kind != FLOW:
        raise ValueError(f"pipe: {fam.name} is not a flow family; run it through its nested pipeline class")
    prompts, height, width = prompt_inputs(pipe, prompts, decode_batch, height, width)
    given = dict(guidance_scale=guidance_scale, outer_eta=outer_eta, grid=grid, negative_prompt=negative_prompt)
    options = {k: v for k, v in given.items() if v is not None}
    options.update(height=height, width=width)
    latent = latent_shape(fam.layout, pipe, height, width)

    def build(outer: int, inner: int) -> GenericPipelineSampler:
        return GenericPipelineSampler(pipe, fam, latent, options, decode_batch, outer_steps=outer, inner_steps=inner)

    def build_schedule(name: Any, total_nfe: int | None) -> GenericPipelineSampler:
        if isinstance(name, Schedule):
            return GenericPipelineSampler(pipe, fam, latent, options, decode_batch, schedule=name)
        return GenericPipelineSampler(pipe, fam, latent, options, decode_batch, schedule=name, nfe=total_nfe)

    def cond_for(indices: Sequence[int]) -> list:
        return [prompts[i % len(prompts)] for i in indices]

    build(1, 1)  # validates the options before any sampling
    encoders = [getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2")]
    identity = model_id or f"{type(pipe).__name__}-{sampled_fingerprint(pipe.transformer, pipe.vae, *encoders)}"
    info = dict(pipeline=fam.name, model=identity,
                **{k: v if isinstance(v, (int, float, str)) else type(v).__name__ for k, v in options.items()},
                solver=f"{type(pipe.scheduler).__name__} (the pipeline's own)",
                prompts=dict(count=len(prompts), first=prompts[0],
                             sha256=hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:12]),
                conditioning="sample i: seed + i, prompt i % count", dtype=str(pipe.transformer.dtype),
                device=pipe._execution_device.type, decode="full VAE decode of the x̂0 latent, clamp [-1, 1], uint8")
    return SamplerFactory(build, latent, cond_for, info, build_schedule=build_schedule)
