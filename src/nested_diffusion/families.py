"""The one table of model families, read by every surface (``generate``, ``sample``, ``eval``, ``calibrate``,
``serve``, the Python helpers): how to load a family, how it is conditioned, its run defaults, its preview
decoders and how its calibrations are found.

A family's *run defaults* live with its code (``bundled.RUN_DEFAULTS``; a pipeline class's ``run_defaults``) and
are read from there, so this table never repeats a number. Adding a family = its pipeline class (a subclass of a
diffusers pipeline with ``iter_anytime`` and ``run_defaults``) and one ``register_family(Family(...))``;
``tests/test_families.py`` registers a toy family and reaches it from every surface.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .core.run import RunDefaults

PROMPT, CLASS_LABELS = "prompt", "class_labels"
SURFACES = ("python", "generate", "sample", "eval", "calibrate", "serve")


@dataclass(frozen=True)
class Family:
    """One model family.

    ``pipeline``: the class name in ``nested_diffusion.pipelines`` (None: the bundled Fashion-MNIST model) or a
    class. ``conditioning``: "prompt" (text, ``--prompt``, negative prompt, size) or "class_labels".
    ``factory``: which evaluation sampler factory drives it ("sd", "dit" or "modern", see ``pipelines.factories``).
    ``previews``: the cheap decoders its pipeline offers besides the full VAE. ``calibrations``: "shipped"
    (calibrations ship with the package and "auto" finds them) or "file" (made by ``nested-diffusion calibrate``,
    passed as a file). ``example``: what a user has to pass (docs and errors). ``generic``: ``pipeline`` names a
    stock diffusers pipeline class run through ``pipelines.NestedScheduler`` / ``nested_diffusion.anytime``; its
    run defaults live in ``pipelines.any_pipeline.GENERIC_FAMILIES``."""

    name: str
    description: str
    conditioning: str
    pipeline: Any = None
    factory: str = "sd"
    previews: tuple[str, ...] = ("vae", "tiny", "latent_rgb")
    calibrations: str = "file"
    example: str = ""
    generic: bool = False

    @property
    def is_bundled(self) -> bool:
        return self.pipeline is None

    @property
    def takes_prompt(self) -> bool:
        return self.conditioning == PROMPT

    @property
    def surfaces(self) -> tuple[str, ...]:
        """Where the family runs: every surface, or — a generic family (a stock diffusers pipeline through
        ``NestedScheduler``) — Python, ``generate``, ``sample`` and ``eval`` (``anytime(..., decode=False)`` under
        the evaluation runners, ``pipelines.factories_generic``), ``calibrate`` (the same runners;
        ``anytime(..., calibration=)`` uses the result) and ``serve`` (the web page and the OpenAI API,
        ``web.generic_backend``); a generic *video* family (Wan) Python only, since the other surfaces show or
        write images."""
        if not self.generic:
            return SURFACES
        from .pipelines.any_pipeline import GENERIC_FAMILIES
        fam = GENERIC_FAMILIES.get(self.name)
        if fam is not None and fam.video:
            return ("python",)
        return SURFACES

    def require(self, surface: str, option: str = "--pipeline") -> "Family":
        """This family, or one clear error when ``surface`` cannot run it (the README lists these)."""
        if surface not in self.surfaces:
            raise ValueError(f"{option}: {self.name} is a generic family (its stock diffusers pipeline through "
                             f"NestedScheduler); it runs in {', '.join(f'`{s}`' for s in self.surfaces)}, not in "
                             f"`{surface}` (families that do: "
                             f"{', '.join(n for n, f in _FAMILIES.items() if surface in f.surfaces)})")
        return self

    def pipeline_class(self) -> type:
        if self.pipeline is None:
            raise ValueError(f"family {self.name!r}: the bundled model has no diffusers pipeline")
        if isinstance(self.pipeline, type):
            return self.pipeline
        if self.generic:
            import diffusers
            return getattr(diffusers, self.pipeline)
        from . import pipelines
        return getattr(pipelines, self.pipeline)

    def run_defaults(self) -> RunDefaults:
        """The family's defaults for every run option (from its code: one place)."""
        if self.is_bundled:
            from .bundled import RUN_DEFAULTS
            return RUN_DEFAULTS
        if self.generic:
            from .pipelines.any_pipeline import run_defaults_of
            return run_defaults_of(self.name)
        return self.pipeline_class().run_defaults

    def guidance_default(self) -> float:
        """The guidance scale a run uses when none is given (bundled: 1.25; a pipeline: its ``guidance_scale``)."""
        d = self.run_defaults()
        if d.guidance is not None:
            return d.guidance
        from .pipelines.anytime import default_guidance
        return default_guidance(self.pipeline_class())

    @property
    def kind(self) -> str:
        return self.run_defaults().kind

    def load(self, path: str | os.PathLike | None, device: str = "cpu", dtype: Any = None,
             option: str = "--model-path") -> Any:
        """The bundled UNet (``path`` None: the shipped weights) or the family's pipeline from a local folder
        (``from_pretrained``, local files only), on ``device`` in ``dtype`` (a name or a torch dtype; None: the
        family's default — the bundled model's ``RUN_DEFAULTS.dtype``, a pipeline's as saved); errors name
        ``option``."""
        if self.is_bundled:
            from .bundled import compute_dtype, load_unet
            return load_unet(path, device=device, dtype=compute_dtype(
                self.run_defaults().dtype if dtype is None else dtype, "--dtype"))
        if isinstance(dtype, str):
            import torch
            dtype = getattr(torch, dtype)
        if path is None:
            raise ValueError(f"{option}: required with --pipeline {self.name} (a local diffusers folder, "
                             f"{self.example or 'saved with save_pretrained'})")
        folder = Path(path)
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"{option}: no diffusers pipeline at {str(folder)!r} (model_index.json missing)")
        extra = dict(safety_checker=None, requires_safety_checker=False) if self.pipeline == \
            "NestedStableDiffusionPipeline" else {}
        try:
            with warnings.catch_warnings():  # newer diffusers renamed torch_dtype to dtype; older ones lack dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
                kw = {} if dtype is None else {"torch_dtype": dtype}
                pipe = self.pipeline_class().from_pretrained(folder, local_files_only=True, **kw, **extra)
        except (OSError, ValueError, TypeError) as e:
            raise FileNotFoundError(f"{option}: could not load a {self.name} pipeline from {str(folder)!r}: "
                                    f"{e}") from e
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family, replace: bool = False) -> Family:
    if family.conditioning not in (PROMPT, CLASS_LABELS):
        raise ValueError(f"conditioning: {family.conditioning!r} is not one of {(PROMPT, CLASS_LABELS)}")
    if family.name in _FAMILIES and not replace:
        raise ValueError(f"family: {family.name!r} is already registered; pass replace=True to override")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    _FAMILIES.pop(name, None)


def family_names() -> tuple[str, ...]:
    """Registered family names in registration order (the choices of every ``--pipeline`` option)."""
    return tuple(_FAMILIES)


def get_family(name: "str | Family", option: str = "--pipeline") -> Family:
    if isinstance(name, Family):
        return name
    if name not in _FAMILIES:
        raise ValueError(f"{option}: unknown model family {name!r}; valid: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def family_of_pipeline(pipe: Any) -> Family | None:
    """The family whose pipeline class ``pipe`` is an instance of (the most derived match)."""
    best = None
    for fam in _FAMILIES.values():
        if fam.pipeline is None:
            continue
        try:
            cls = fam.pipeline_class()
        except (ImportError, AttributeError):
            continue
        if isinstance(pipe, cls) and (best is None or issubclass(cls, best.pipeline_class())):
            best = fam
    return best


for _f in (
    Family("bundled", "the bundled Fashion-MNIST model (class-conditional, 28 × 28, ships with the package)",
           CLASS_LABELS, None, factory="bundled", previews=(), calibrations="shipped"),
    Family("sd", "Stable Diffusion 1.x / 2.x", PROMPT, "NestedStableDiffusionPipeline", "sd",
           example="e.g. a stable-diffusion-v1-5 folder"),
    Family("dit", "DiT (class-conditional ImageNet, learned variance)", CLASS_LABELS, "NestedDiTPipeline", "dit",
           previews=("vae",), example="e.g. a DiT-XL-2-256 folder"),
    Family("sdxl", "Stable Diffusion XL", PROMPT, "NestedStableDiffusionXLPipeline", "modern",
           example="e.g. a stable-diffusion-xl-base-1.0 folder"),
    Family("sd3", "Stable Diffusion 3 / 3.5 (rectified flow)", PROMPT, "NestedStableDiffusion3Pipeline", "modern",
           example="e.g. a stable-diffusion-3.5-medium folder"),
    Family("flux", "FLUX.1 (rectified flow, guidance-distilled)", PROMPT, "NestedFluxPipeline", "modern",
           example="e.g. a FLUX.1-dev folder"),
    # stock diffusers pipelines run through NestedScheduler (Python: nested_diffusion.anytime)
    Family("flux2", "FLUX.2 [dev] (rectified flow, guidance-distilled)", PROMPT, "Flux2Pipeline", "generic",
           previews=("vae", "tiny"), example="e.g. a FLUX.2-dev folder", generic=True),
    Family("flux2-klein", "FLUX.2 [klein] (rectified flow, CFG)", PROMPT, "Flux2KleinPipeline", "generic",
           previews=("vae", "tiny"), example="e.g. a FLUX.2-klein folder", generic=True),
    Family("qwen-image", "Qwen-Image (rectified flow, true CFG)", PROMPT, "QwenImagePipeline", "generic",
           previews=("vae",), example="e.g. a Qwen-Image folder", generic=True),
    Family("z-image", "Z-Image (rectified flow)", PROMPT, "ZImagePipeline", "generic", previews=("vae", "tiny"),
           example="e.g. a Z-Image folder", generic=True),
    Family("chroma", "Chroma (rectified flow, FLUX-based, CFG)", PROMPT, "ChromaPipeline", "generic",
           previews=("vae", "tiny"), example="e.g. a Chroma folder", generic=True),
    Family("hidream", "HiDream-I1 (rectified flow, CFG; with a FlowMatchEulerDiscreteScheduler)", PROMPT,
           "HiDreamImagePipeline", "generic", previews=("vae",),
           example="e.g. a HiDream-I1 folder whose scheduler is FlowMatchEulerDiscreteScheduler", generic=True),
    Family("wan", "Wan 2.x text-to-video (rectified flow)", PROMPT, "WanPipeline", "generic", previews=("vae",),
           example="e.g. a Wan2.1-T2V-1.3B folder", generic=True),
):
    register_family(_f)


def describe_families(lines: Callable[[Family], str] | None = None) -> str:
    """One line per family (help texts)."""
    fmt = lines or (lambda f: f"{f.name}: {f.description}")
    return "; ".join(fmt(f) for f in _FAMILIES.values())
