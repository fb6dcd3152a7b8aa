"""Pieces shared by the SDXL, SD3 and FLUX nested pipelines: argument resolution for the flow samplers, the
flow schedule of a diffusers FlowMatch scheduler, and decoding an update with the full VAE or a cheap preview."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..core.eta import validate_eta
from ..core.flow_registry import get_flow_solver
from ..core.flow_schedule import FlowSchedule
from ..core.flow_steps import FRESH_NOISE
from .adapters import NestedArgs, is_diffusers_scheduler, merge_names, step_counts
from .anytime import with_anytime_fields
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


def merged(a: dict, ours: str, theirs: str) -> Any:
    return merge_names(a.get(ours), ours, a.get(theirs), theirs)


def resolve_flow_args(a: dict, default_outer: int, default_inner: int, default_outer_eta: Any) -> NestedArgs:
    """outer_steps/num_inference_steps, inner_steps/num_inner_steps, inner_solver/inner_scheduler (a flow
    solver name: "euler", "heun", or a core FlowSolver), inner_eta, outer_eta/eta ("fresh" allowed).

    Named schedules (``schedule=``, ``total_nfe=``) are VP-only for now: the flow outer grid has no explicit outer
    times (``FlowNestedSolver`` always spaces them evenly in u ∈ (0, 1]), and a ``Schedule``'s outer times are
    integer VP timesteps; a ValueError says so. A per-outer-step ``inner_steps`` list works."""
    if a.get("schedule") is not None or a.get("total_nfe") is not None:
        raise ValueError("schedule/total_nfe: named nested schedules are VP-only for now (Nested SD, SDXL, DiT); "
                         "for SD3/FLUX pass outer_steps and inner_steps (a list gives one count per outer step)")
    outer, inner = step_counts(merged(a, "outer_steps", "num_inference_steps"),
                               merged(a, "inner_steps", "num_inner_steps"), default_outer, default_inner)
    solver = merged(a, "inner_solver", "inner_scheduler")
    o_eta = merged(a, "outer_eta", "eta")
    if is_diffusers_scheduler(solver):
        raise ValueError(f"inner_solver: diffusers scheduler instances ({type(solver).__name__}) are not supported "
                         f"by the flow pipelines; use 'euler' or 'heun'")
    solver = get_flow_solver("euler" if solver is None else solver, a.get("inner_eta"))
    o_eta = default_outer_eta if o_eta is None else o_eta
    if o_eta != FRESH_NOISE:
        validate_eta(o_eta, "outer_eta")
    return NestedArgs(int(outer), inner, solver, o_eta)


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
    return ctx["output_cls"](images=image, latents=x0, decoder=decoder, **update.info())


def preview_decoder(pipe: Any, a: dict, preview: str, shift: float | None) -> PreviewDecoder:
    """The call's preview decoder; latent_rgb factors are fitted on ``pipe.vae`` (latent shift ``shift``)."""
    encode = kl_encoder(pipe.vae, pipe.vae.config.scaling_factor, shift, execution_device(pipe.vae))
    return PreviewDecoder(pipe, preview, a.get("preview_vae"), bool(a.get("preview_results")), encode,
                          pipe.vae_scale_factor)


def check_generators(generator: Any, batch: int) -> None:
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"generator: a list of {len(generator)} generators for {batch} images; pass one or one "
                         f"per image")
