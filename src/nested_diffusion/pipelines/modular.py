"""Nested Diffusion in Modular Diffusers: ``nested_blocks(blocks)`` + ``update_components(scheduler=NestedScheduler(...))``.

A modular pipeline's denoising loop is a ``LoopSequentialPipelineBlocks`` whose ``__call__`` walks
``block_state.timesteps`` and calls ``self.loop_step(components, block_state, i=i, t=t)``; its sub-blocks move the
latents only through ``components.scheduler.step``. With a ``NestedScheduler`` as the scheduler component the
stock loop already samples the nested run (the scheduler lays the K inner runs back to back, see
``nested_scheduler``), but every step-indexed part of the loop sees the *global* index: a guider's
``set_state(step=i, num_inference_steps=…)`` gets i = 0 … K·N − 1 of K·N steps, so its ``start`` / ``stop``
fractions cut the whole back-to-back list (CFG is on in the first runs and off in the last ones) and adaptive
projected guidance resets its momentum once.

``nested_blocks`` returns a copy of the blocks whose denoising loops walk the runs themselves
(``NestedDenoiseLoop``): in run k the sub-blocks get ``i`` = the index in the run (0 … N_k − 1) and
``block_state.num_inference_steps`` = N_k, so step-indexed guiders act per inner run (their start / stop fractions
apply to every run; APG's momentum restarts with every run, as its history is a trajectory's). The timestep ``t``
is the global list's (the run's own). The maths stays in the scheduler, so the nested loop needs the
``NestedScheduler``; with a stock scheduler it is the stock loop (one run of the pipeline's own steps).

Only loops checked here are nested (``NESTABLE_LOOPS``: the FLUX.2 — dev, klein, klein base — and Qwen-Image
loops): their sub-blocks read ``i`` only as the guider's step and ``t`` as the timestep. Other families' sub-blocks
read lists by position (Cosmos ``scheduler.sigmas[i]``, FLUX.3 / HunyuanVideo 1.5 ``timesteps[i + 1]``, …), which an
inner-run index would misplace, so ``nested_blocks`` refuses them. Image-to-image and inpainting set a begin
index in the step list, which the ``NestedScheduler`` refuses.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from .nested_scheduler import NestedScheduler, NestedSchedulerError


# denoise-loop base classes (diffusers class names) whose sub-blocks use the loop index only as the guider's step
NESTABLE_LOOPS = ("Flux2DenoiseLoopWrapper", "QwenImageDenoiseLoopWrapper")


class NestedDenoiseLoop:
    """Mixin placed before a family's denoise-loop class. The family's own ``__call__`` (its set-up and its walk over
    ``timesteps``) is kept; every ``loop_step`` it makes at global index i is handed on with i's index in its
    inner run, and ``block_state.num_inference_steps`` = that run's length while the sub-blocks run."""

    nested = True

    def loop_step(self, components: Any, state: Any, **kwargs):
        if "i" not in kwargs:
            raise NestedSchedulerError(f"{type(self).__name__}: the loop called loop_step without i; it cannot be "
                                       f"nested")
        i = int(kwargs["i"])
        start, end = next((a, b) for a, b in run_bounds(components.scheduler, state.timesteps) if a <= i < b)
        given = state.num_inference_steps
        state.num_inference_steps = end - start           # what guiders read as the step count
        try:
            return super().loop_step(components, state, **{**kwargs, "i": i - start})
        finally:
            state.num_inference_steps = given


def run_bounds(scheduler: Any, timesteps: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of every inner run in the loop's ``timesteps`` (one run with a stock scheduler); refuses a step
    list that is not the nested scheduler's (a sliced or re-set list would put guiders on the wrong runs)."""
    n = len(timesteps)
    if not isinstance(scheduler, NestedScheduler):
        return [(0, n)]
    if scheduler.timesteps is None:
        raise NestedSchedulerError("scheduler: the NestedScheduler's set_timesteps was not called before the denoise "
                                   "loop (the pipeline's set-timesteps block must run first)")
    ends = scheduler.run_ends
    if n != ends[-1] or not torch.equal(torch.as_tensor(timesteps).cpu().float(),
                                        scheduler.timesteps.cpu().float()):
        raise NestedSchedulerError(
            f"timesteps: the denoise loop got {n} timesteps, not the NestedScheduler's {ends[-1]} (its K inner runs "
            f"back to back); a block between set-timesteps and the loop sliced or replaced them (e.g. image-to-image "
            f"strength), which nested runs do not support")
    return list(zip([0] + ends[:-1], ends))


def _nested_class(cls: type) -> type:
    if issubclass(cls, NestedDenoiseLoop):
        return cls
    return type("Nested" + cls.__name__, (NestedDenoiseLoop, cls), {"__module__": __name__})


def nested_blocks(blocks: Any) -> Any:
    """A copy of modular ``blocks`` (a diffusers ``ModularPipelineBlocks`` tree, e.g. ``Flux2AutoBlocks()``) whose
    denoising loops hand the loop's sub-blocks inner-run indices (``NestedDenoiseLoop``). Use it with a
    ``NestedScheduler``: ``pipe = nested_blocks(blocks).init_pipeline(); pipe.update_components(...,
    scheduler=NestedScheduler(scheduler, outer_steps=K))``. Raises when ``blocks`` has no denoising loop."""
    from diffusers.modular_pipelines.modular_pipeline import LoopSequentialPipelineBlocks, ModularPipelineBlocks

    if not isinstance(blocks, ModularPipelineBlocks):
        raise TypeError(f"blocks: expected Modular Diffusers blocks (e.g. Flux2AutoBlocks()), got "
                        f"{type(blocks).__name__}")
    out = copy.deepcopy(blocks)
    found = []

    def walk(block):
        if isinstance(block, LoopSequentialPipelineBlocks):
            if not any(c.__name__ in NESTABLE_LOOPS for c in type(block).__mro__):
                raise ValueError(f"blocks: the denoising loop {type(block).__name__} is not one nested_blocks knows "
                                 f"to read the loop index only as the guider's step; valid loops: subclasses of "
                                 f"{', '.join(NESTABLE_LOOPS)} (other families: set the NestedScheduler with the "
                                 f"stock blocks, where guiders see the global step index)")
            block.__class__ = _nested_class(type(block))
            found.append(type(block).__name__)
            return
        for sub in (getattr(block, "sub_blocks", None) or {}).values():
            walk(sub)

    walk(out)
    if not found:
        raise ValueError(f"blocks: {type(blocks).__name__} has no denoising loop (LoopSequentialPipelineBlocks) "
                         f"to nest")
    return out
