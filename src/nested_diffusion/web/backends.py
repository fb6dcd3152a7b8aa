"""What a web job runs on: the bundled Fashion-MNIST model or a diffusers pipeline (Nested SD / Nested DiT), each
behind the same two calls, so every front end drives them through one code path:

* ``prepare(request, limits) -> Prepared``: every input check (one clear ``ValueError`` naming the field, the
  value and what is valid) before any model call;
* ``open(prepared, outer, inner, stop, max_nfe, deadline, schedule="uniform") -> Run``: an iterator of
  ``(info, images)`` with ``info`` carrying the ``AnytimeInfo`` fields and ``images`` a (B, H, W, 3) uint8 batch;
  ``run.calls`` counts the model calls it made. ``stop()`` is checked before/after every model call, so a stop
  takes effect within one NFE. ``schedule``: "uniform" runs ``outer`` × ``inner``; a named schedule of
  ``core.schedules`` (e.g. "progressive") spends the same budget, outer × inner NFE, its own way.

Sample i of a job uses seed ``seed + i`` (its own generator), as ``nested-diffusion generate`` and the library.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..core.denoisers import CountingDenoiser
from ..core.nested import NestedSampler
from ..core.registry import solver_names, solver_spec
from ..core.schedules import make_schedule, schedule_names
from .render import model_to_rgb, unit_to_rgb

KINDS = ("bundled", "sd", "dit")


@dataclass(frozen=True)
class Limits:
    """Caps a public deployment needs (``nested-diffusion serve --max-...``)."""

    max_batch: int = 10          # images per job
    max_outer_steps: int = 50
    max_inner_steps: int = 250
    max_nfe: int = 1000          # outer × inner (doubled in effect when the vanilla comparison runs too)
    max_size: int = 768          # pipeline image height / width in pixels
    max_deadline: float = 600.0  # seconds

    def __post_init__(self):
        for name in ("max_batch", "max_outer_steps", "max_inner_steps", "max_nfe", "max_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be an integer ≥ 1, got {v!r}")
        if not self.max_deadline > 0:
            raise ValueError(f"max_deadline: must be a positive number of seconds, got {self.max_deadline!r}")


@dataclass
class JobRequest:
    """One job's settings. ``classes``: bundled/DiT class ids or names ("0,3,7", "sneaker,bag", "all");
    ``prompt``/``negative_prompt``/``height``/``width``: Stable Diffusion. ``guidance``/``solver`` None: the
    backend's default. ``max_nfe``/``deadline`` None or 0: no budget. ``schedule``: "uniform" (the outer/inner
    steps as given) or another name of ``core.schedules`` ("progressive": the budget outer × inner split into
    two short inner runs, then one long one)."""

    seed: int = 0
    outer_steps: int = 5
    inner_steps: int = 20
    solver: str | None = None
    guidance: float | None = None
    max_nfe: int | None = None
    deadline: float | None = None
    vanilla: bool = False
    classes: Any = "0"
    prompt: str = ""
    negative_prompt: str = ""
    height: int | None = None
    width: int | None = None
    schedule: str = "uniform"


@dataclass
class Prepared:
    """A checked request: the numbers a run needs (seeds, conditioning, budgets)."""

    request: JobRequest
    seeds: list[int]
    cond: Any
    solver: str
    guidance: float
    max_nfe: int | None
    deadline: float | None
    extra: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return len(self.seeds)


def _int_in(name: str, v: Any, low: int, high: int) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not low <= v <= high:
        raise ValueError(f"{name}: must be an integer in [{low}, {high}], got {v!r}")
    return int(v)


def _optional(v: Any) -> Any:
    return None if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0) else v


def check_common(req: JobRequest, limits: Limits, default_solver: str, default_guidance: float) -> dict:
    """Checks shared by every backend; returns the resolved numbers."""
    seed = _int_in("seed", req.seed, 0, 2 ** 63 - 1 - limits.max_batch)
    outer = _int_in("outer_steps", req.outer_steps, 1, limits.max_outer_steps)
    inner = _int_in("inner_steps", req.inner_steps, 1, limits.max_inner_steps)
    if outer * inner > limits.max_nfe:
        raise ValueError(f"outer_steps × inner_steps: {outer} × {inner} = {outer * inner} NFE exceeds this "
                         f"server's limit of {limits.max_nfe}")
    schedule = "uniform" if req.schedule in (None, "") else req.schedule
    if schedule not in schedule_names():
        raise ValueError(f"schedule: unknown schedule {schedule!r}; valid: {', '.join(schedule_names())}")
    solver = default_solver if req.solver in (None, "") else req.solver
    if solver not in solver_names():
        raise ValueError(f"solver: unknown inner solver {solver!r}; valid: {', '.join(solver_names())}")
    guidance = default_guidance if req.guidance is None else req.guidance
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
            or not 0 <= guidance <= 50:
        raise ValueError(f"guidance: must be a number in [0, 50], got {req.guidance!r}")
    max_nfe = _optional(req.max_nfe)
    if max_nfe is not None:
        max_nfe = _int_in("max_nfe (NFE budget)", max_nfe, 1, 2 * limits.max_nfe)
    deadline = _optional(req.deadline)
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
                                 or not 0 < deadline <= limits.max_deadline):
        raise ValueError(f"deadline: must be a number of seconds in (0, {limits.max_deadline:g}] (0 = none), "
                         f"got {req.deadline!r}")
    return dict(seed=seed, outer=outer, inner=inner, solver=solver, guidance=float(guidance), max_nfe=max_nfe,
                deadline=None if deadline is None else float(deadline), schedule=schedule)


def _seeds(seed: int, batch: int, limits: Limits, what: str) -> list[int]:
    if not 1 <= batch <= limits.max_batch:
        raise ValueError(f"{what}: {batch} images requested; this server allows 1 to {limits.max_batch} per job")
    return [seed + i for i in range(batch)]


class Run:
    """One sampling run: iterate for ``(info, images)``; ``calls`` = model calls made so far."""

    def __init__(self, pairs: Iterator, counter: Any):
        self._pairs, self._counter = pairs, counter

    def __iter__(self):
        return self._pairs

    @property
    def calls(self) -> int:
        return int(self._counter.nfe)

    def close(self) -> None:
        close = getattr(self._pairs, "close", None)
        if close is not None:
            close()


class BundledBackend:
    """The bundled Fashion-MNIST model (or any ``TinyUNet`` folder). ``model``: a loaded model or anything with
    the same call/``config``/``null_class`` (tests pass a counting wrapper). ``scale``: pixel upscaling of the
    progression strip and the GIF. The live pictures stay at the model's 28 px (``display_scale`` 1): the page
    upscales them in the browser (CSS ``image-rendering: pixelated``), so each update costs the server a 28-px PNG,
    not a 16× larger one (measured: that encoding slowed sampling with the page attached)."""

    kind = "bundled"
    default_solver = "ddpm"
    exclusive = False      # the model is stateless: jobs may run concurrently
    display_scale = 1

    def __init__(self, model: Any = None, scale: int = 4, device: str = "cpu"):
        from ..bundled import DEMO_GUIDANCE, load_unet

        self.model = load_unet(None) if model is None else model
        self.default_guidance, self.scale, self.device = DEMO_GUIDANCE, int(scale), device  # generate's
        self.lock = threading.Lock()

    def prepare(self, req: JobRequest, limits: Limits) -> Prepared:
        from ..bundled import parse_classes

        c = check_common(req, limits, self.default_solver, self.default_guidance)
        classes = req.classes
        if isinstance(classes, (list, tuple)) and not classes:
            raise ValueError("classes: choose at least one class")
        classes = parse_classes(",".join(str(x) for x in classes) if isinstance(classes, (list, tuple))
                                else str(classes))
        seeds = _seeds(c["seed"], len(classes), limits, "classes")
        prep = Prepared(req, seeds, torch.tensor(classes, dtype=torch.long), c["solver"], c["guidance"],
                        c["max_nfe"], c["deadline"], dict(outer=c["outer"], inner=c["inner"],
                                                          schedule=c["schedule"]))
        self.total_nfe(prep, c["outer"], c["inner"], c["schedule"])  # a schedule's budget checks, no model call
        return prep

    def sampler(self, prep: Prepared, outer: int, inner: int, schedule: str = "uniform") -> NestedSampler:
        """The library sampler of this job (what ``nested-diffusion generate`` builds for the same settings);
        a named ``schedule`` other than "uniform" spends outer × inner NFE (``NestedSampler.from_schedule``)."""
        from ..bundled import make_denoiser

        spec = solver_spec(prep.solver)
        eta = spec.inner_eta_default if spec.takes_eta else None
        den = make_denoiser(self.model, prep.guidance)
        if schedule != "uniform":
            return NestedSampler.from_schedule(den, schedule, outer * inner, prep.solver, eta)
        return NestedSampler(den, outer, inner, prep.solver, eta)

    def open(self, prep: Prepared, outer: int, inner: int, stop: Callable[[], bool],
             max_nfe: int | None = None, deadline: float | None = None, schedule: str = "uniform") -> Run:
        sampler, counter = self.sampler(prep, outer, inner, schedule), _Counter()
        stream = sampler.stream(prep.seeds, (prep.batch, 1, 28, 28), prep.cond.to(self.device), max_nfe=max_nfe,
                                deadline=deadline, device=self.device, stop=stop, wrap_denoiser=counter.wrap)
        return Run(((u, model_to_rgb(u.x0)) for u in stream), counter)

    def total_nfe(self, prep: Prepared, outer: int, inner: int, schedule: str = "uniform") -> int:
        return self.sampler(prep, outer, inner, schedule).total_nfe


class _Counter:
    """``wrap`` is a ``wrap_denoiser`` / ``denoiser_hook``: counts this run's model calls (``nfe``)."""

    def __init__(self):
        self.counting: CountingDenoiser | None = None

    def wrap(self, denoiser: Any) -> CountingDenoiser:
        self.counting = CountingDenoiser(denoiser)
        return self.counting

    @property
    def nfe(self) -> int:
        return 0 if self.counting is None else self.counting.nfe


class _StopGuard(_Counter):
    """A ``denoiser_hook`` for the pipelines: counts calls and, once ``stop()`` is true, ends the run before the
    next model call (the pipelines' anytime loop ends cleanly on ``PipelineInterrupted``)."""

    def __init__(self, stop: Callable[[], bool]):
        super().__init__()
        self.stop = stop

    def wrap(self, denoiser: Any) -> Any:
        from ..pipelines.anytime import PipelineInterrupted
        counting = super().wrap(denoiser)
        stop = self.stop

        class Guarded:
            schedule = denoiser.schedule

            def __call__(self, x, t, cond=None):
                if stop():
                    raise PipelineInterrupted()
                return counting(x, t, cond)

        return Guarded()


class PipelineBackend:
    """A ``NestedStableDiffusionPipeline`` (``kind="sd"``) or ``NestedDiTPipeline`` (``kind="dit"``). A pipeline
    object holds per-run state, so its jobs run one at a time (``exclusive``; the others wait in the queue)."""

    exclusive = True

    def __init__(self, pipe: Any, kind: str):
        if kind not in ("sd", "dit"):
            raise ValueError(f"kind: {kind!r} is not a pipeline kind; use 'sd' or 'dit'")
        if not hasattr(pipe, "iter_anytime"):
            raise TypeError(f"pipe: expected a nested pipeline (with iter_anytime), got {type(pipe).__name__}")
        self.pipe, self.kind, self.scale = pipe, kind, 1
        self.default_solver = "ddim" if kind == "sd" else "ddpm"
        self.default_guidance = 7.5 if kind == "sd" else 1.5
        self.lock = threading.Lock()

    def prepare(self, req: JobRequest, limits: Limits) -> Prepared:
        c = check_common(req, limits, self.default_solver, self.default_guidance)
        extra = dict(outer=c["outer"], inner=c["inner"], schedule=c["schedule"])
        if self.kind == "sd":
            if not isinstance(req.prompt, str) or not req.prompt.strip():
                raise ValueError("prompt: describe the image to generate (an empty prompt is not accepted)")
            extra.update(self._size(req, limits), negative_prompt=(req.negative_prompt or None))
            cond = [req.prompt.strip()]
        else:
            from ..pipelines.factories import parse_class_labels
            n = int(self.pipe.transformer.config.num_embeds_ada_norm)
            spec = ",".join(str(x) for x in req.classes) if isinstance(req.classes, (list, tuple)) else req.classes
            cond = [self._label_id(x, n) for x in parse_class_labels(str(spec), n)]
        seeds = _seeds(c["seed"], len(cond), limits, "prompt" if self.kind == "sd" else "classes")
        prep = Prepared(req, seeds, cond, c["solver"], c["guidance"], c["max_nfe"], c["deadline"], extra)
        self.total_nfe(prep, c["outer"], c["inner"], c["schedule"])  # a schedule's budget checks, no model call
        return prep

    def _label_id(self, label: Any, n: int) -> int:
        if isinstance(label, str):
            names = self.pipe.labels or {}
            if label not in names:
                raise ValueError(f"classes: unknown label name {label!r}; use ids in [0, {n - 1}] or names such "
                                 f"as {', '.join(list(names)[:3]) or '(this pipeline has no label names)'}")
            return int(names[label])
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
            raise ValueError(f"classes: {label!r} is not a class id in [0, {n - 1}]")
        return int(label)

    def _size(self, req: JobRequest, limits: Limits) -> dict:
        native = self.pipe.unet.config.sample_size
        native = native if isinstance(native, int) else native[0]
        m = max(8, int(self.pipe.vae_scale_factor))
        out = {}
        for name in ("height", "width"):
            v = getattr(req, name)
            v = native * int(self.pipe.vae_scale_factor) if v in (None, 0) else v
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int) or v < m or v % m or v > limits.max_size:
                raise ValueError(f"{name}: must be a multiple of {m} in [{m}, {limits.max_size}] pixels, got {v!r}")
            out[name] = v
        return out

    def _call_args(self, prep: Prepared) -> dict:
        if self.kind == "sd":
            return dict(prompt=list(prep.cond), negative_prompt=prep.extra["negative_prompt"],
                        height=prep.extra["height"], width=prep.extra["width"])
        return dict(class_labels=list(prep.cond))

    @staticmethod
    def _steps(outer: int, inner: int, schedule: str) -> dict:
        if schedule != "uniform":
            return dict(schedule=schedule, total_nfe=outer * inner)
        return dict(outer_steps=outer, inner_steps=inner)

    def open(self, prep: Prepared, outer: int, inner: int, stop: Callable[[], bool],
             max_nfe: int | None = None, deadline: float | None = None, schedule: str = "uniform") -> Run:
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in prep.seeds]
        guard = _StopGuard(stop)
        outs = self.pipe.iter_anytime(**self._call_args(prep), **self._steps(outer, inner, schedule),
                                      inner_solver=prep.solver, guidance_scale=prep.guidance, generator=gens,
                                      max_nfe=max_nfe, deadline=deadline, output_type="np",
                                      denoiser_hook=guard.wrap)
        return Run(((out, unit_to_rgb(out.images)) for out in outs), guard)

    def total_nfe(self, prep: Prepared, outer: int, inner: int, schedule: str = "uniform") -> int:
        from ..core.registry import get_solver
        solver = get_solver(prep.solver, None, inner=True)
        if schedule != "uniform":  # the schedule's inner runs, from the pipeline's t = T − 1
            t_start = int(self.pipe.scheduler.config.num_train_timesteps) - 1
            return sum(solver.nfe(n) for n in make_schedule(schedule, outer * inner, t_start).inner_steps)
        return outer * solver.nfe(inner)


def load_backend(kind: str = "bundled", model_path: str | os.PathLike | None = None, device: str = "cpu",
                 scale: int | None = None) -> "BundledBackend | PipelineBackend":
    """The backend ``nested-diffusion serve --pipeline KIND --model-path DIR`` runs on (loaded from disk only)."""
    if kind not in KINDS:
        raise ValueError(f"pipeline: {kind!r} is not valid; use one of {KINDS}")
    if kind == "bundled":
        from ..bundled import load_unet
        return BundledBackend(load_unet(model_path, device=device), scale=scale or 4, device=device)
    if model_path is None or not os.path.isdir(model_path):
        raise ValueError(f"model_path: --pipeline {kind} needs --model-path DIR, a saved diffusers pipeline "
                         f"folder (model_index.json); got {model_path!r}")
    from ..pipelines import NestedDiTPipeline, NestedStableDiffusionPipeline
    cls = NestedStableDiffusionPipeline if kind == "sd" else NestedDiTPipeline
    pipe = cls.from_pretrained(str(model_path)).to(device)
    pipe.set_progress_bar_config(disable=True)
    backend = PipelineBackend(pipe, kind)
    backend.scale = scale or 1
    return backend
