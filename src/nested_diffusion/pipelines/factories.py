"""Sampler factories that run the evaluation runners on the diffusers pipelines (Nested SD, Nested DiT).

``sd_factory(pipe, prompts)`` and ``dit_factory(pipe, class_labels)`` return a ``SamplerFactory`` whose samplers
drive ``pipe.iter_anytime(..., output_type="latent")``: the runners see the same anytime updates as a user of
the pipeline (same grids, guidance, noise streams), sample i uses seed ``seed + i`` and prompt/label
``i % len(list)`` under every configuration, and only the snapshots the runners keep are VAE-decoded
(``PipelineSampler.decode``: x̂0 latent → image in [−1, 1], like the pipelines' own decode; the SD safety
checker is not applied, as in the usual FID protocol).

Prompts: ``read_prompts(path)`` reads one prompt per line, a JSON list of strings, or a COCO captions file
(``captions_val2014.json``: the first caption of each image, images in ascending id). Class labels:
``parse_class_labels("all" | "0,1,2" | "0-9" | file)``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..core.events import AnytimeUpdate
from ..core.nested import NestedSampler
from ..core.noise import as_noise_source
from ..core.noise_schedule import NoiseSchedule
from ..evaluation.snapshots import SamplerFactory

__all__ = ["PipelineSampler", "sd_factory", "dit_factory", "read_prompts", "parse_class_labels", "step_arguments",
           "sampled_fingerprint", "PromptScore", "prompt_score"]


# ------------------------------------------------------------------------------------------- prompts and labels
def read_prompts(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """Prompts from a text file (one per non-empty line), a JSON list of strings, or COCO captions JSON."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts: no file at {str(p)!r}; pass a text file (one prompt per line) or a "
                                f"COCO captions JSON")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        doc = json.loads(text)
        if isinstance(doc, list) and all(isinstance(s, str) for s in doc):
            prompts = list(doc)
        elif isinstance(doc, dict) and isinstance(doc.get("annotations"), list):
            first: dict[Any, str] = {}
            for a in doc["annotations"]:           # COCO: several captions per image; keep the first one
                if isinstance(a, dict) and "image_id" in a and isinstance(a.get("caption"), str):
                    first.setdefault(a["image_id"], a["caption"])
            prompts = [first[k] for k in sorted(first)]
        else:
            raise ValueError(f"prompts: {str(p)!r} is neither a JSON list of strings nor a COCO captions file "
                             f"(a dict with 'annotations': [{{'image_id', 'caption'}}, ...])")
    else:
        prompts = [line.strip() for line in text.splitlines()]
    prompts = [" ".join(s.split()) for s in prompts if s.strip()]
    if limit is not None:
        prompts = prompts[:limit]
    if not prompts:
        raise ValueError(f"prompts: {str(p)!r} holds no prompts")
    return prompts


def parse_class_labels(spec: "str | int | Sequence[int | str]", num_classes: int | None = None) -> list:
    """'all' (every class id), '1,5,9', '0-9', a text file of ids/names (one per line), or a list."""
    if isinstance(spec, str) and spec.strip() == "all":
        if num_classes is None:
            raise ValueError("class_labels: 'all' needs num_classes")
        return list(range(int(num_classes)))
    if isinstance(spec, str) and Path(spec).is_file():
        items: list = [s.strip() for s in Path(spec).read_text(encoding="utf-8").splitlines() if s.strip()]
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    elif isinstance(spec, int) and not isinstance(spec, bool):
        items = [spec]
    else:
        items = list(spec)
    out: list = []
    for it in items:
        if isinstance(it, str) and "-" in it and all(s.strip().isdigit() for s in it.split("-", 1)):
            lo, hi = (int(s) for s in it.split("-", 1))
            if lo > hi:
                raise ValueError(f"class_labels: range {it!r} is empty (start > end)")
            out.extend(range(lo, hi + 1))
        elif isinstance(it, str) and it.strip().isdigit():
            out.append(int(it))
        else:
            out.append(it)  # a label name (resolved by the pipeline's id2label) or an int
    if not out:
        raise ValueError(f"class_labels: no labels in {spec!r}; give 'all', ids like '1,5,9' or '0-9', or a file")
    return out


# ---------------------------------------------------------------------------------------------------- identity
def sampled_fingerprint(*modules: torch.nn.Module, samples: int = 1024) -> str:
    """Short hash of names, shapes, dtypes and a strided sample of ≤ ``samples`` values of every tensor: cheap
    enough for billion-parameter models, and changes with any retraining or different checkpoint."""
    h = hashlib.sha256()
    for m in modules:
        if m is None:
            continue
        for name, t in m.state_dict().items():
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // samples)
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(flat[::step][:samples].float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "config") and hasattr(v, "set_timesteps"):  # a diffusers scheduler as inner solver
        return {"scheduler": type(v).__name__, **{k: _jsonable(x) for k, x in dict(v.config).items()
                                                  if not k.startswith("_")}}
    return getattr(v, "__name__", None) or type(v).__name__


def _list_hash(items: Sequence) -> str:
    return hashlib.sha256(json.dumps(list(items), default=str).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------------ sampler
def step_arguments(outer: int | None, inner: int | None, schedule: Any, total_nfe: int | None) -> dict:
    """The pipeline-call arguments of one configuration: explicit outer/inner steps, or a named schedule with its
    budget (``schedule="progressive", total_nfe=N``)."""
    if schedule is None:
        return dict(outer_steps=outer, inner_steps=inner)
    return dict(schedule=schedule) if total_nfe is None else dict(schedule=schedule, total_nfe=total_nfe)


class _ScheduleOnly:
    """The PipelineSampler's own denoiser: it carries the schedule (for grids and NFE counts); the model denoiser
    exists only inside a pipeline call."""

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule

    def __call__(self, x, t, cond=None):
        raise RuntimeError("PipelineSampler: the model runs inside pipe.iter_anytime; use stream()")


class PipelineSampler(NestedSampler):
    """A NestedSampler (same grids, NFE schedule and ``stream`` interface) whose stream is one
    ``pipe.iter_anytime(..., output_type="latent")`` run; ``cond`` is the batch's prompts (SD) or class labels
    (DiT). Updates carry the x̂0 *latent*; ``decode`` turns kept ones into images in [−1, 1]. ``calibration=``
    is passed to the pipeline call, so the updates carry its ``expected_change``."""

    def __init__(self, pipe: Any, cond_arg: str, latent_shape: tuple, outer: int | None, inner: int | None,
                 options: dict, decode_batch: int = 8, schedule: Any = None,
                 total_nfe: int | None = None):
        from .adapters import checked_solver, pipeline_run
        noise_schedule = NoiseSchedule.from_diffusers_config(dict(pipe.scheduler.config))
        a = dict(outer_steps=outer, inner_steps=inner, inner_solver=options.get("inner_solver"),
                 inner_eta=options.get("inner_eta"), outer_eta=options.get("outer_eta"), grid=options.get("grid"),
                 schedule=schedule, total_nfe=total_nfe)
        run = checked_solver(pipeline_run(a, type(pipe).run_defaults, noise_schedule.num_train_timesteps),
                             noise_schedule)
        super().__init__(_ScheduleOnly(noise_schedule), run=run)
        self.pipe, self.cond_arg, self.latent_shape = pipe, cond_arg, tuple(latent_shape)
        self.options, self.outer_arg, self.inner_arg = dict(options), outer, inner
        self.steps = step_arguments(outer, inner, schedule, total_nfe)
        self.decode_batch = int(decode_batch)

    def stream(self, seeds, shape, cond=None, max_nfe=None, deadline=None, previews=None, x_T=None,
               device=None, dtype=None, stop=None, grad=False, wrap_denoiser=None, calibration=None):
        shape = check_stream_batch(shape, self.latent_shape, cond, f"{self.cond_arg} entry")
        pipe_device = self.pipe._execution_device
        noise = as_noise_source(seeds, shape[0], pipe_device, self.pipe_dtype)  # per-sample CPU generators
        if grad:
            raise ValueError("grad: the diffusers pipelines always run without autograd")
        calibration = calibration if calibration is not None else self.calibration
        extra = {} if calibration is None else {"calibration": calibration}
        outs = self.pipe.iter_anytime(**{self.cond_arg: list(cond)}, **self.options, **self.steps,
                                      generator=noise, latents=x_T, max_nfe=max_nfe,
                                      deadline=deadline, previews=previews, output_type="latent",
                                      denoiser_hook=wrap_denoiser, **extra)
        try:
            for out in outs:
                yield AnytimeUpdate.of(out.images, out)
                if stop is not None and (stop.is_set() if hasattr(stop, "is_set") else stop()):
                    return
        finally:
            outs.close()

    @property
    def pipe_dtype(self) -> torch.dtype:
        model = getattr(self.pipe, "unet", None)
        return (self.pipe.transformer if model is None else model).dtype

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x̂0 latents → float32 CPU images in [−1, 1] (the pipelines' VAE decode), ``decode_batch`` at a time."""
        vae, out = self.pipe.vae, []
        for i in range(0, latents.shape[0], self.decode_batch):
            z = latents[i:i + self.decode_batch]
            img = vae.decode(z / vae.config.scaling_factor, return_dict=False)[0]
            out.append(img.float().clamp(-1, 1).cpu())
        return torch.cat(out)


def _check_pipe(pipe: Any, cls_name: str, attr: str) -> None:
    if not (hasattr(pipe, "iter_anytime") and hasattr(pipe, attr) and hasattr(pipe, "vae")):
        raise TypeError(f"pipe: expected a {cls_name} (with iter_anytime), got {type(pipe).__name__}; convert a "
                        f"stock pipeline with {cls_name}.from_pipe(pipe)")


def prompt_inputs(pipe: Any, prompts: Any, decode_batch: Any, height: int | None,
                  width: int | None) -> tuple[list[str], int, int]:
    """The checked prompts (a list or a prompt file), decode batch and image size (default: the pipeline's) of a
    prompt-conditioned factory (SDXL, SD3, FLUX and the generic families)."""
    check_decode_batch(decode_batch)
    prompts = read_prompts(prompts) if isinstance(prompts, (str, os.PathLike)) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts: expected a non-empty list of strings or a prompt file")
    default = pipe.default_sample_size * pipe.vae_scale_factor
    return prompts, height or default, width or default


def check_stream_batch(shape: Any, latent_shape: tuple, cond: Any, what: str) -> tuple[int, ...]:
    """A sampler's ``stream`` batch: ``shape`` is (batch, *latent_shape) and ``cond`` holds one ``what`` per sample."""
    shape = tuple(int(s) for s in shape)
    if shape[1:] != latent_shape:
        raise ValueError(f"shape: expected (batch, *{latent_shape}), got {shape}")
    if cond is None or len(cond) != shape[0]:
        raise ValueError(f"cond: need one {what} per sample ({shape[0]}), got {cond!r}")
    return shape


def check_decode_batch(decode_batch: Any) -> None:
    if isinstance(decode_batch, bool) or not isinstance(decode_batch, int) or decode_batch < 1:
        raise ValueError(f"decode_batch: must be an integer ≥ 1, got {decode_batch!r}")


def _make(pipe, cond_arg, latent_shape, options, decode_batch, conds, info) -> SamplerFactory:
    def build(outer: int, inner: int) -> PipelineSampler:
        return PipelineSampler(pipe, cond_arg, latent_shape, outer, inner, options, decode_batch)

    def build_schedule(name: str, total_nfe: int) -> PipelineSampler:
        return PipelineSampler(pipe, cond_arg, latent_shape, None, None, options, decode_batch,
                               schedule=name, total_nfe=total_nfe)

    def cond_for(indices: Sequence[int]) -> list:
        return [conds[i % len(conds)] for i in indices]

    build(1, 1)  # validates the options before any sampling
    return SamplerFactory(build, latent_shape, cond_for, info, build_schedule=build_schedule)


def sd_factory(pipe: Any, prompts: "Sequence[str] | str | os.PathLike", guidance_scale: float = 7.5,
               inner_solver: Any = "ddim", inner_eta: float | None = None, outer_eta: Any = None,
               grid: str | None = None, negative_prompt: str | None = None, height: int | None = None,
               width: int | None = None, decode_batch: int = 8, model_id: str | None = None) -> SamplerFactory:
    """Runners on a ``NestedStableDiffusionPipeline``; sample i is generated from prompt ``prompts[i % P]``.
    ``prompts``: a list or a prompt file (see ``read_prompts``). The other arguments are the pipeline's."""
    _check_pipe(pipe, "NestedStableDiffusionPipeline", "unet")
    check_decode_batch(decode_batch)
    if isinstance(prompts, (str, os.PathLike)):
        prompts = read_prompts(prompts)
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts: expected a non-empty list of strings or a prompt file")
    size = pipe.unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    height = height or size[0] * pipe.vae_scale_factor
    width = width or size[1] * pipe.vae_scale_factor
    m = max(8, pipe.vae_scale_factor)
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % m:
            raise ValueError(f"{name}: must be a positive multiple of {m}, got {v!r}")
    latent = (int(pipe.unet.config.in_channels), height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    options = dict(guidance_scale=guidance_scale, inner_solver=inner_solver, inner_eta=inner_eta,
                   outer_eta=outer_eta, grid=grid, negative_prompt=negative_prompt, height=height, width=width)
    info = dict(pipeline="sd", model=model_id or f"{type(pipe).__name__}-"
                f"{sampled_fingerprint(pipe.unet, pipe.vae, pipe.text_encoder)}",
                **{k: _jsonable(v) for k, v in options.items()}, solver=_jsonable(type(pipe).run_defaults.inner_solver if inner_solver is None else inner_solver),
                prompts=dict(count=len(prompts), sha256=_list_hash(prompts), first=prompts[0]),
                conditioning="sample i: seed + i, prompt i % count", dtype=str(pipe.unet.dtype),
                device=pipe._execution_device.type,
                decode="VAE decode of the x̂0 latent, clamp [-1, 1], uint8; safety checker not applied")
    return _make(pipe, "prompt", latent, options, decode_batch, prompts, info)


def dit_factory(pipe: Any, class_labels: "str | Sequence[int | str]" = "all", guidance_scale: float = 1.5,
                inner_solver: Any = "ddpm", inner_eta: float | None = None, outer_eta: Any = None,
                guided_channels: int | None = 3, grid: str | None = None, decode_batch: int = 8,
                model_id: str | None = None) -> SamplerFactory:
    """Runners on a ``NestedDiTPipeline``; sample i gets class ``labels[i % L]`` ('all': i % num_classes, a
    class-balanced set). Label names are resolved through the pipeline's id2label."""
    _check_pipe(pipe, "NestedDiTPipeline", "transformer")
    check_decode_batch(decode_batch)
    cfg = pipe.transformer.config
    n_classes = int(cfg.num_embeds_ada_norm)
    ids = []
    for label in parse_class_labels(class_labels, n_classes):
        if isinstance(label, str):
            if label not in (pipe.labels or {}):
                raise ValueError(f"class_labels: unknown label name {label!r}; use ids in [0, {n_classes - 1}]")
            label = int(pipe.labels[label])
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_classes:
            raise ValueError(f"class_labels: {label!r} is not a class id in [0, {n_classes - 1}]")
        ids.append(label)
    latent = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))
    options = dict(guidance_scale=guidance_scale, inner_solver=inner_solver, inner_eta=inner_eta,
                   outer_eta=outer_eta, grid=grid, guided_channels=guided_channels)
    info = dict(pipeline="dit", model=model_id or f"{type(pipe).__name__}-"
                f"{sampled_fingerprint(pipe.transformer, pipe.vae)}",
                **{k: _jsonable(v) for k, v in options.items()}, solver=_jsonable(type(pipe).run_defaults.inner_solver if inner_solver is None else inner_solver),
                labels=dict(count=len(ids), sha256=_list_hash(ids), first=ids[:8]),
                conditioning="sample i: seed + i, class labels[i % count]", dtype=str(pipe.transformer.dtype),
                device=pipe._execution_device.type, decode="VAE decode of the x̂0 latent, clamp [-1, 1], uint8")
    return _make(pipe, "class_labels", latent, options, decode_batch, ids, info)


# ----------------------------------------------------------------------------------------------- prompt scores
class PromptScore:
    """A per-sample score of each image against its own prompt, for the runners' ``scores`` argument:
    ``__call__(images (N, C, H, W), indices) -> (N,)``. ``scorer(images, prompts) -> (N,)``, e.g. ``CLIPScorer``
    (CLIP score) or any stand-in; ``prompts_for(indices)``: the factory's prompt assignment."""

    def __init__(self, scorer: Callable, prompts_for: Callable[[Sequence[int]], list], name: str | None = None):
        self.scorer, self.prompts_for = scorer, prompts_for
        self.name = name or getattr(scorer, "name", "prompt_score")
        self.description = getattr(scorer, "description", self.name)

    def __call__(self, images: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        return self.scorer(images, self.prompts_for(list(indices)))


def prompt_score(factory: SamplerFactory, scorer: Callable, name: str | None = None) -> PromptScore:
    """A PromptScore that scores sample i against the prompt ``factory`` gave it (SD factories only)."""
    if factory.info.get("pipeline") not in ("sd", "sdxl", "sd3", "flux") or factory.cond_for is None:
        raise ValueError(f"factory: prompt scores need an sd_factory (prompts), got {factory.info.get('pipeline')!r}")
    return PromptScore(scorer, factory.cond_for, name)
