"""The anytime loop shared by the nested pipelines: core NestedSampler stream → (update, x̂0 latent) pairs with
diffusers conventions (callback_on_step_end, interrupt, progress bar, model offload hooks).

An *update* is one AnytimeUpdate of the core stream: during the first inner run every inner x̂0 prediction
(source "x0_preview"), afterwards the output of each finished inner run ("inner_result"). Decoding is left to
the caller, so only the updates that are consumed are decoded.
"""
from __future__ import annotations

import math
import dataclasses
from typing import Any, Callable, Iterator, Sequence

import torch

from ..core.events import INNER_RESULT, AnytimeInfo, AnytimeUpdate
from ..core.run import check_budget
from ..core.nested import PREVIEW_MODES, NestedSampler
from ..core.noise import NoiseSource

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class PipelineInterrupted(Exception):
    """Raised inside the denoiser when ``pipe._interrupt`` was set; the loop ends with the last finished update."""


def with_anytime_fields(base: type, name: str, doc: str, module: str, extra_fields: tuple = ()) -> type:
    """A dataclass subclass of a diffusers output class with every ``AnytimeInfo`` field (defaults: a finished
    result) plus ``latents``, the x̂0 latent the images were decoded from, and ``extra_fields`` ((name, type,
    dataclasses.field) triples)."""
    defaults = dict(nfe=0, outer_step=0, outer_steps=0, inner_step=0, inner_steps=0, final=True,
                    source=INNER_RESULT, t=0, elapsed=0.0)
    extra = [(f.name, f.type, dataclasses.field(default=defaults.get(f.name)))
             for f in dataclasses.fields(AnytimeInfo)]
    extra.append(("latents", "torch.Tensor | None", dataclasses.field(default=None)))
    extra.extend(extra_fields)
    cls = dataclasses.make_dataclass(name, extra, bases=(base,), namespace={"__doc__": doc, "__module__": module})
    return cls


def anytime_fields(update: AnytimeInfo) -> dict[str, Any]:
    """The AnytimeInfo fields of an update for a pipeline output, ``expected_change`` kept as the
    ``ExpectedChange`` object (per-sample tensors; None without a calibration)."""
    return {f.name: getattr(update, f.name) for f in dataclasses.fields(AnytimeInfo)}


def check_call_args(max_nfe: Any, deadline: Any, previews: Any, output_type: Any,
                    tensor_inputs: Sequence[str] | None, allowed_inputs: Sequence[str], guidance_scale: Any) -> None:
    """Argument checks shared by the pipelines (the run options themselves — steps, solvers, grid — are
    ``core.run``'s); all run before any model call."""
    check_budget(max_nfe, deadline)
    if previews is not None and previews not in PREVIEW_MODES:
        raise ValueError(f"previews: {previews!r} is not valid; use one of {PREVIEW_MODES} (or None: the "
                         f"schedule's default)")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type: {output_type!r} is not valid; use one of {OUTPUT_TYPES}")
    bad = [k for k in (tensor_inputs or []) if k not in allowed_inputs]
    if bad:
        raise ValueError(f"callback_on_step_end_tensor_inputs: {bad} not allowed; valid: {list(allowed_inputs)}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale: must be a finite number ≥ 0, got {guidance_scale!r}")


def callback_inputs(callback: Any, tensor_inputs: Sequence[str] | None) -> list[str]:
    """diffusers' PipelineCallback / MultiPipelineCallbacks carry their own tensor_inputs."""
    own = getattr(callback, "tensor_inputs", None)
    if callback is not None and own is not None and not callable(own):
        return list(own)
    return list(tensor_inputs or [])


def anytime_pairs(pipe: Any, sampler: NestedSampler, noise: NoiseSource, x_T: torch.Tensor, cond: Any,
                  max_nfe: int | None, deadline: float | None, previews: str, callback: Callable | None,
                  tensor_inputs: Sequence[str], callback_tensors: Callable[[], dict],
                  apply_callback_output: Callable[[dict], None], denoiser_hook: Callable | None = None,
                  calibration: Any = None) -> Iterator[tuple[AnytimeUpdate, torch.Tensor]]:
    """Drive ``sampler.stream`` and yield (update, x̂0 latent) per anytime update.

    ``callback_on_step_end(pipe, i, t, kwargs)`` fires once per update: i = update index, t = outer time the
    update's inner run started from, kwargs["latents"] = the update's x̂0 latent (plus the pipeline tensors in
    ``tensor_inputs``). A returned "latents" replaces the reported x̂0 of this update (the sampler state is not
    changed); other returned tensors go to ``apply_callback_output`` (e.g. new prompt embeddings, used from the
    next denoiser call on). Setting ``pipe._interrupt = True`` stops at the next denoiser call; the last finished
    update is the result. ``denoiser_hook(denoiser) -> denoiser`` wraps the model denoiser of this call only
    (e.g. to time or count model calls). ``calibration`` (a checked ``Calibration``, see
    ``pipelines.expected_change.resolve_calibration``) attaches ``expected_change`` to every update.
    """
    pipe._num_timesteps = sampler.total_nfe
    budget = sampler.total_nfe if max_nfe is None else min(max_nfe, sampler.total_nfe)
    stream = sampler.stream(noise, tuple(x_T.shape), cond=cond, max_nfe=max_nfe, deadline=deadline,
                            previews=previews, x_T=x_T, device=x_T.device, dtype=x_T.dtype,
                            wrap_denoiser=denoiser_hook, calibration=calibration)
    done = 0
    try:
        with pipe.progress_bar(total=budget) as bar:
            for i, update in enumerate(stream):
                bar.update(update.nfe - done)
                done = update.nfe
                x0 = update.x0
                if callback is not None:
                    kwargs = {k: v for k, v in callback_tensors().items() if k in tensor_inputs}
                    if "latents" in tensor_inputs:
                        kwargs["latents"] = x0
                    returned = dict(callback(pipe, i, update.t, kwargs) or {})
                    x0 = returned.pop("latents", x0)
                    apply_callback_output(returned)
                yield update, x0
                if pipe._interrupt:
                    break
    except PipelineInterrupted:
        pass
    finally:
        stream.close()
        pipe.maybe_free_model_hooks()


def bind_call(pipe: Any, args: tuple, kwargs: dict) -> dict:
    """Map iter_anytime(*args, **kwargs) onto __call__'s signature (same arguments, same defaults)."""
    import inspect

    bound = inspect.signature(type(pipe).__call__).bind(pipe, *args, **kwargs)
    bound.apply_defaults()
    params = dict(bound.arguments)
    params.pop("self", None)
    return params


class AnytimeIterMixin:
    """``iter_anytime`` shared by the nested pipelines: argument checks (and prompt encoding) run at the call,
    sampling and decoding only as updates are consumed."""

    def iter_anytime(self, *args, **kwargs) -> Iterator[Any]:
        """Same arguments as ``__call__``; yields one decoded output per anytime update, each with its NFE count.
        Stop iterating at any time: nothing beyond the consumed updates is computed or decoded."""
        with torch.no_grad():
            pairs, ctx = self._prepare(**bind_call(self, args, kwargs))
        return self._decoded(pairs, ctx)

    def _final_output(self, call_locals: dict):
        """``__call__``'s body: run the anytime loop to its end and decode only the last update."""
        pairs, ctx = self._prepare(**{k: v for k, v in call_locals.items() if k not in ("self", "__class__")})
        last = None
        for last in pairs:  # final-only: nothing but the last update is decoded
            pass
        if last is None:
            raise RuntimeError("interrupted or past the deadline before the first model call finished; no result")
        return self._output(*last, ctx)

    @torch.no_grad()
    def _decoded(self, pairs, ctx):
        for update, x0 in pairs:
            yield self._output(update, x0, ctx)


def default_guidance(pipeline_class: type) -> float:
    """The guidance scale a pipeline call uses when none is given: its ``guidance_scale`` default (Qwen-Image,
    whose ``guidance_scale`` defaults to None, guides with ``true_cfg_scale``)."""
    import inspect
    params = inspect.signature(pipeline_class.__call__).parameters
    for name in ("guidance_scale", "true_cfg_scale"):
        if name in params and params[name].default is not None:
            return float(params[name].default)
    raise ValueError(f"pipeline: {pipeline_class.__name__} has no guidance scale default")
