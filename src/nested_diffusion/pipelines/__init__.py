"""diffusers pipelines for Nested Diffusion (needs the optional ``diffusers`` and ``transformers`` packages).

    from nested_diffusion.pipelines import NestedStableDiffusionPipeline, NestedDiTPipeline
    # also NestedStableDiffusionXLPipeline, NestedStableDiffusion3Pipeline, NestedFluxPipeline (flow matching)
    pipe = NestedStableDiffusionPipeline.from_pretrained("path/to/sd-1.5")
    image = pipe("a photo of a cat", outer_steps=5, inner_steps=20).images[0]
    for out in pipe.iter_anytime("a photo of a cat", outer_steps=5, inner_steps=20):
        print(out.nfe, out.source)          # one decoded output per anytime update

diffusers is imported only when a pipeline class is first accessed; ``noise`` and ``adapters`` need torch only.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "NestedStableDiffusionPipeline": "stable_diffusion",
    "NestedStableDiffusionPipelineOutput": "stable_diffusion",
    "NestedDiTPipeline": "dit",
    "NestedImagePipelineOutput": "dit",
    "NestedStableDiffusionXLPipeline": "sdxl",
    "NestedStableDiffusionXLPipelineOutput": "sdxl",
    "NestedStableDiffusion3Pipeline": "sd3",
    "NestedStableDiffusion3PipelineOutput": "sd3",
    "NestedFluxPipeline": "flux",
    "NestedFluxPipelineOutput": "flux",
    "NestedScheduler": "nested_scheduler",
    "NestedSchedulerError": "nested_scheduler",
    "anytime": "any_pipeline",
    "GENERIC_FAMILIES": "any_pipeline",
    "nested_blocks": "modular",
    "SchedulerSolver": "adapters",
    "resolve_inner_solver": "adapters",
    "GeneratorNoise": "noise",
    "PipelineInterrupted": "anytime",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nested_diffusion.pipelines' has no attribute {name!r}")
    if module in ("stable_diffusion", "dit", "sdxl", "sd3", "flux"):
        try:
            import diffusers  # noqa: F401
        except ImportError as e:  # pragma: no cover - exercised only without diffusers
            raise ImportError(f"{name} needs the optional packages diffusers and transformers: "
                              f"pip install diffusers transformers accelerate") from e
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
