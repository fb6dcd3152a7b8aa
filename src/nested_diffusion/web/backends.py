"""What a web job runs on: any family of the model-family table (``nested_diffusion.families``) — the bundled
Fashion-MNIST model (``BundledBackend``) or the family's diffusers pipeline (``PipelineBackend``, one class for
every pipeline family: conditioned by prompt + negative prompt + size, or by class labels, as the family says) —
each behind the same two calls, so every front end drives them through one code path:

* ``prepare(request, limits) -> Prepared``: every input check (one clear ``ValueError`` naming the field, the
  value and what is valid) before any model call. The run fields of a ``JobRequest`` (schedule, nfe, first,
  outer/inner steps, solver, guidance, budget, deadline) go to ``core.run.resolve_run`` with the family's
  ``run_defaults()``: fields left empty mean the family's default, and every run check and default is the
  resolver's (errors name the web field, ``FIELD_NAMES``). The server's ``Limits`` are this module's own checks,
  applied to the resolved ``RunConfig``. A calibration that matches the job's configuration is attached to the
  run (``run.replace(calibration=...)``), so every update carries its expected change;
* ``open(prepared, stop, vanilla=False) -> Run``: an iterator of ``(info, images)`` with ``info`` carrying the
  ``AnytimeInfo`` fields and ``images`` a (B, H, W, 3) uint8 batch; ``run.calls`` counts the model calls it made.
  ``stop()`` is checked before/after every model call, so a stop takes effect within one NFE. ``vanilla=True``
  runs the baseline at the same NFE (``RunConfig.vanilla``: one outer step of all the inner steps).

Sample i of a job uses seed ``seed + i`` (its own generator), as ``nested-diffusion generate`` and the library.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..core.denoisers import CountingDenoiser
from ..core.nested import NestedSampler, calibration_settings
from ..core.registry import FLOW
from ..core.run import RunConfig, option_error, resolve_run
from ..core.schedules import Schedule
from ..families import Family, family_names, family_of_pipeline, get_family
from .render import model_to_rgb, unit_to_rgb

# canonical run option → the JobRequest field (errors of the resolver and of the sampler name these)
FIELD_NAMES = {"schedule": "schedule", "nfe": "nfe", "first": "first", "schedule_options": "first",
               "outer_steps": "outer_steps", "inner_steps": "inner_steps", "inner_solver": "solver",
               "inner_eta": None, "outer_eta": None, "grid": None, "outer_times": None, "t_start": None,
               "guidance": "guidance", "max_nfe": "max_nfe", "deadline": "deadline", "calibration": "calibration"}
NO_CALIBRATION = "no calibration for this configuration"


@dataclass(frozen=True)
class Limits:
    """Caps a public deployment needs (``nested-diffusion serve --max-...``), checked on the resolved run."""

    max_batch: int = 10          # images per job
    max_outer_steps: int = 50
    max_inner_steps: int = 250   # steps of any one inner run
    max_nfe: int = 1000          # model calls of the whole run (doubled in effect when the vanilla comparison runs)
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
    """One job's settings. Run fields left None (or empty / 0 from a form) mean the family's default
    (``Family.run_defaults()``): ``schedule`` ("uniform", "progressive", …), ``nfe`` (the budget a named schedule
    splits), ``first`` (progressive: steps of each quick run), ``outer_steps`` × ``inner_steps`` (the uniform
    split; giving them implies "uniform"), ``solver``, ``guidance``. ``max_nfe``/``deadline``: stop early (None
    or 0: no budget). ``classes``: class ids or names ("0,3,7", "sneaker,bag", "all") for class-conditioned
    families; ``prompt``/``negative_prompt``/``height``/``width`` for prompt-conditioned ones."""

    seed: int = 0
    schedule: str | None = None
    nfe: int | None = None
    first: int | None = None
    outer_steps: int | None = None
    inner_steps: int | None = None
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


@dataclass
class Prepared:
    """A checked request: the resolved run (its calibration attached when one matches), the seeds, the
    conditioning and the model calls of the whole run (``total_nfe``)."""

    request: JobRequest
    seeds: list[int]
    cond: Any
    run: RunConfig
    guidance: float                     # the guidance the model runs with (the family's when the run leaves it)
    total_nfe: int
    calibrated: bool = False            # whether a calibration matches (the page says so when none does)
    extra: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return len(self.seeds)

    @property
    def max_nfe(self) -> int | None:
        return self.run.max_nfe

    @property
    def deadline(self) -> float | None:
        return self.run.deadline

    @property
    def solver(self) -> str:
        return self.run.solver_name


def _int_in(name: str, v: Any, low: int, high: int) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not low <= v <= high:
        raise ValueError(f"{name}: must be an integer in [{low}, {high}], got {v!r}")
    return int(v)


def _given(v: Any) -> Any:
    """A form's "left empty": None, "" and 0 (number boxes) mean the field was not given."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and v == 0:
        return None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def resolve_job_run(req: JobRequest, family: Family, num_train_timesteps: int = 1000) -> RunConfig:
    """The request's run: its run fields resolved by ``core.run.resolve_run`` with the family's defaults; errors
    name the request's field (``FIELD_NAMES``). Guidance 0 is a value (no guidance), not "left empty"."""
    guidance = None if req.guidance is None or (isinstance(req.guidance, str) and not req.guidance.strip()) \
        else req.guidance
    try:
        return resolve_run(defaults=family.run_defaults(), names=FIELD_NAMES,
                           num_train_timesteps=num_train_timesteps, schedule=_given(req.schedule),
                           nfe=_given(req.nfe), first=_given(req.first), outer_steps=_given(req.outer_steps),
                           inner_steps=_given(req.inner_steps), inner_solver=_given(req.solver), guidance=guidance,
                           max_nfe=_given(req.max_nfe), deadline=_given(req.deadline))
    except TypeError as e:  # a form value of the wrong type is bad input like any other
        raise ValueError(str(e)) from None


def run_nfe(run: RunConfig) -> int:
    """Model calls of the whole run (the inner solver's NFE of each inner run, summed)."""
    inner = run.build_inner()
    return sum(inner.nfe(n) for n in run.inner_steps)


def check_job(req: JobRequest, run: RunConfig, limits: Limits) -> int:
    """The server's own caps on a resolved run (``Limits``) and the seed; returns the seed."""
    total_nfe = run_nfe(run)
    if isinstance(req.seed, (float, np.floating)) and not float(req.seed).is_integer():
        raise ValueError(f"seed: {req.seed!r} is not a whole number; enter a whole number ≥ 0")
    seed = _int_in("seed", req.seed, 0, 2 ** 63 - 1 - limits.max_batch)
    if run.outer_steps > limits.max_outer_steps:
        raise ValueError(f"outer_steps: {run.describe()} has {run.outer_steps} outer steps; this server allows 1 "
                         f"to {limits.max_outer_steps}")
    if max(run.inner_steps) > limits.max_inner_steps and run.schedule not in ("uniform", "custom"):
        longest = max(run.inner_steps)     # a named schedule's longest run grows with the budget: blame the budget
        raise ValueError(f"nfe: {run.schedule} at {run.inner_total} NFE makes an inner run of {longest} steps; this "
                         f"server allows at most {limits.max_inner_steps} per inner run, so give an NFE budget of "
                         f"at most {run.inner_total - longest + limits.max_inner_steps}")
    if max(run.inner_steps) > limits.max_inner_steps:
        raise ValueError(f"inner_steps: {run.describe()} has an inner run of {max(run.inner_steps)} steps; this "
                         f"server allows 1 to {limits.max_inner_steps} per inner run")
    if total_nfe > limits.max_nfe:
        what = (f"outer_steps × inner_steps: {run.outer_steps} × {run.inner_steps[0]} = {total_nfe} NFE"
                if run.schedule == "uniform" else f"nfe: {run.schedule} {run.describe()} = {total_nfe} NFE")
        raise ValueError(f"{what} exceeds this server's limit of {limits.max_nfe}")
    if run.deadline is not None and run.deadline > limits.max_deadline:
        raise ValueError(f"deadline: {run.deadline:g} s exceeds this server's limit of {limits.max_deadline:g} s "
                         f"(0 = none)")
    return seed


def job_seeds(seed: int, batch: int, limits: Limits, what: str) -> list[int]:
    """The seeds of a job's images (image i: seed + i), within the server's batch limit."""
    if not 1 <= batch <= limits.max_batch:
        raise ValueError(f"{what}: {batch} images requested; this server allows 1 to {limits.max_batch} per job")
    return [seed + i for i in range(batch)]


def _class_spec(classes: Any) -> str:
    if isinstance(classes, (list, tuple)):
        if not classes:
            raise ValueError("classes: choose at least one class")
        return ",".join(str(x) for x in classes)
    return str(classes)


def run_steps(run: RunConfig) -> dict:
    """A resolved run as the keyword arguments of a nested pipeline call (its ``Schedule``, solver, η, grid)."""
    schedule = Schedule(run.schedule, tuple(run.inner_steps), run.outer_times)
    return dict(schedule=schedule, inner_solver=run.inner_solver, inner_eta=run.inner_eta, outer_eta=run.outer_eta,
                grid=run.grid)


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


class BundledBackend:
    """The bundled Fashion-MNIST model (or any ``TinyUNet`` folder). ``model``: a loaded model or anything with
    the same call/``config``/``null_class`` (tests pass a counting wrapper). ``calibration``: "auto" (the shipped
    calibration of the job's configuration, when there is one), "feature", "none" or a calibration file (used
    where it matches). ``scale``: pixel upscaling of the progression strip and the GIF. The live pictures stay at
    the model's 28 px (``display_scale`` 1): the page upscales them in the browser (CSS ``image-rendering:
    pixelated``), so each update costs the server a 28-px PNG, not a 16× larger one (measured: that encoding
    slowed sampling with the page attached)."""

    exclusive = False      # the model is stateless: jobs may run concurrently
    display_scale = 1

    def __init__(self, model: Any = None, scale: int = 4, device: str = "cpu", calibration: str | None = "auto",
                 family: "str | Family" = "bundled"):
        from ..bundled import load_unet

        self.family = get_family(family)
        self.kind = self.family.name
        self.model = load_unet(None) if model is None else model
        self.scale, self.device, self.calibration = int(scale), device, calibration or "none"
        if self.calibration not in ("auto", "feature", "none") and not os.path.isfile(self.calibration):
            raise ValueError(f"--calibration: no such file {self.calibration!r}; give a file written by "
                             f"`nested-diffusion calibrate`, 'auto', 'feature' or 'none'")
        self.lock = threading.Lock()
        self._calibrations: dict[str, Any] = {}    # configuration hash → calibration or None (found once)

    @property
    def num_train_timesteps(self) -> int:
        return int(getattr(self.model.config, "num_train_timesteps", 1000))

    def prepare(self, req: JobRequest, limits: Limits) -> Prepared:
        from ..bundled import parse_classes

        run = resolve_job_run(req, self.family, self.num_train_timesteps)
        run = run.replace(dtype=str(getattr(self.model, "compute_dtype", None) or "float32").replace("torch.", ""))
        seed = check_job(req, run, limits)
        sampler = self.sampler(run)            # model-dependent checks (steps that fit below t), no model call
        classes = parse_classes(_class_spec(req.classes))
        seeds = job_seeds(seed, len(classes), limits, "classes")
        cal = self._calibration(run)
        return Prepared(req, seeds, torch.tensor(classes, dtype=torch.long), run.replace(calibration=cal),
                        float(run.guidance), sampler.total_nfe, cal is not None)

    def _calibration(self, run: RunConfig) -> Any:
        """The calibration of this run's configuration (``bundled.expected_change.resolve_calibration``) or None."""
        from ..bundled.expected_change import resolve_calibration
        if self.calibration == "none" or not isinstance(self.model, torch.nn.Module):
            return None            # a stand-in model has no weights to identify it by
        from ..core.expected_change import config_hash
        settings = calibration_settings(run, self.num_train_timesteps)
        key = config_hash({"sampler": settings, "guidance": run.guidance})
        if key not in self._calibrations:
            try:
                self._calibrations[key] = resolve_calibration(self.calibration, settings, self.model, run.guidance)
            except ValueError:
                if self.calibration in ("auto", "feature"):
                    raise
                self._calibrations[key] = None   # a file made for another configuration: this job has none
        return self._calibrations[key]

    def sampler(self, run: RunConfig) -> NestedSampler:
        """The library sampler of this run (what ``nested-diffusion generate`` builds for the same settings)."""
        from ..bundled import make_denoiser
        try:
            return NestedSampler.from_run(make_denoiser(self.model, run.guidance), run)
        except ValueError as e:
            raise option_error(e, FIELD_NAMES) from None

    def open(self, prep: Prepared, stop: Callable[[], bool], vanilla: bool = False) -> Run:
        run = prep.run.vanilla() if vanilla else prep.run
        sampler, counter = self.sampler(run), _Counter()
        stream = sampler.stream(prep.seeds, (prep.batch, 1, 28, 28), prep.cond.to(self.device), max_nfe=run.max_nfe,
                                deadline=run.deadline, device=self.device, stop=stop, wrap_denoiser=counter.wrap)
        return Run(((u, model_to_rgb(u.x0)) for u in stream), counter)


class PipelineBackend:
    """Any pipeline family of the table (sd, dit, sdxl, sd3, flux and families registered later): the family's
    nested pipeline driven through ``iter_anytime``, conditioned as the family says (``Family.conditioning``).
    ``calibration``: a calibration (or file) made by ``nested-diffusion calibrate --pipeline FAMILY``; it is
    attached to the jobs whose configuration it matches. A pipeline object holds per-run state, so its jobs run
    one at a time (``exclusive``; the others wait in the queue)."""

    exclusive = True
    display_scale = 1

    def __init__(self, pipe: Any, family: "str | Family | None" = None, calibration: Any = None):
        if not hasattr(pipe, "iter_anytime"):
            raise TypeError(f"pipe: expected a nested pipeline (with iter_anytime), got {type(pipe).__name__}")
        fam = family_of_pipeline(pipe) if family is None else get_family(family, "family")
        if fam is None or fam.is_bundled:
            raise ValueError(f"family: {type(pipe).__name__} is not the pipeline of a registered pipeline family "
                             f"({', '.join(n for n in family_names() if not get_family(n).is_bundled)})")
        self.pipe, self.family, self.kind, self.scale = pipe, fam, fam.name, 1
        self.calibration = self._load_calibration(calibration)
        self.lock = threading.Lock()

    @staticmethod
    def _load_calibration(calibration: Any) -> Any:
        from ..core.expected_change import Calibration, load_calibration
        if calibration in (None, "none", "auto"):  # "auto": the calibrations shipped for the family — none for
            return None                            # the pipeline families (core.expected_change.resolve_calibration)
        if isinstance(calibration, Calibration):
            return calibration
        path = os.fspath(calibration)
        if not os.path.isfile(path):
            raise ValueError(f"--calibration: no such file {path!r}; give a file written by `nested-diffusion "
                             f"calibrate --pipeline FAMILY` or none")
        return load_calibration(path)

    @property
    def takes_prompt(self) -> bool:
        return self.family.takes_prompt

    @property
    def num_train_timesteps(self) -> int:
        return int(self.pipe.scheduler.config.get("num_train_timesteps", 1000))

    def prepare(self, req: JobRequest, limits: Limits) -> Prepared:
        run = resolve_job_run(req, self.family, self.num_train_timesteps)
        seed = check_job(req, run, limits)
        if self.family.takes_prompt:
            if not isinstance(req.prompt, str) or not req.prompt.strip():
                raise ValueError("prompt: describe the image to generate (an empty prompt is not accepted)")
            extra = dict(self._size(req, limits), negative_prompt=(req.negative_prompt or None))
            cond = [req.prompt.strip()]
        else:
            from ..pipelines.factories import parse_class_labels
            n = self._num_classes()
            cond = [self._label_id(x, n) for x in parse_class_labels(_class_spec(req.classes), n)]
            extra = {}
        guidance = float(run.guidance if run.guidance is not None else self.family.guidance_default())
        prep = Prepared(req, [], cond, run, guidance, 0, extra=extra)
        sampler = self._sampler(prep, run)     # model-dependent checks, no model call
        prep.total_nfe = sampler.total_nfe
        prep.seeds = job_seeds(seed, len(cond), limits, "prompt" if self.family.takes_prompt else "classes")
        cal = self._calibration(prep, sampler)
        prep.run, prep.calibrated = run.replace(calibration=cal), cal is not None
        return prep

    def _num_classes(self) -> int:
        model = getattr(self.pipe, "transformer", None) or getattr(self.pipe, "unet", None)
        cfg = getattr(model, "config", {})
        n = cfg.get("num_embeds_ada_norm") or cfg.get("num_class_embeds")
        if not n:
            raise ValueError(f"classes: the {self.kind} pipeline's model does not say how many classes it has")
        return int(n)

    def _label_id(self, label: Any, n: int) -> int:
        if isinstance(label, str):
            names = getattr(self.pipe, "labels", None) or {}
            if label not in names:
                raise ValueError(f"classes: unknown label name {label!r}; use ids in [0, {n - 1}] or names such "
                                 f"as {', '.join(list(names)[:3]) or '(this pipeline has no label names)'}")
            return int(names[label])
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n:
            raise ValueError(f"classes: {label!r} is not a class id in [0, {n - 1}]")
        return int(label)

    def size_multiple(self) -> int:
        """Image sizes must be multiples of this (the VAE factor, × 2 for the flow families' 2×2 latent patches;
        at least 8)."""
        f = int(self.pipe.vae_scale_factor)
        return max(8, f * (int(getattr(self.pipe, "patch_size", 2)) if self.family.kind == FLOW else 1))

    def native_size(self) -> int:
        size = getattr(self.pipe, "default_sample_size", None)
        if size is None:
            size = self.pipe.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return int(size) * int(self.pipe.vae_scale_factor)

    def _size(self, req: JobRequest, limits: Limits) -> dict:
        m, out = self.size_multiple(), {}
        for name in ("height", "width"):
            v = getattr(req, name)
            v = self.native_size() if v in (None, 0) else v
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int) or v < m or v % m or v > limits.max_size:
                raise ValueError(f"{name}: must be a multiple of {m} in [{m}, {limits.max_size}] pixels, got {v!r}")
            out[name] = v
        return out

    def _call_args(self, prep: Prepared) -> dict:
        if self.family.takes_prompt:
            return dict(prompt=list(prep.cond), negative_prompt=prep.extra["negative_prompt"],
                        height=prep.extra["height"], width=prep.extra["width"])
        return dict(class_labels=list(prep.cond))

    def _sampler(self, prep: Prepared, run: RunConfig) -> Any:
        """The core sampler a call with this run runs (grids, NFE schedule), built without any model call."""
        try:
            if hasattr(self.pipe, "core_sampler"):
                size = {k: prep.extra[k] for k in ("height", "width") if k in prep.extra}
                return self.pipe.core_sampler(**run_steps(run), **size)
            from ..core.noise_schedule import NoiseSchedule
            from ..pipelines.adapters import checked_solver
            from ..pipelines.factories_modern import ScheduleCarrier
            schedule = NoiseSchedule.from_diffusers_config(dict(self.pipe.scheduler.config))
            return NestedSampler.from_run(ScheduleCarrier(schedule), checked_solver(run, schedule))
        except ValueError as e:
            raise option_error(e, FIELD_NAMES) from None

    def configuration(self, prep: Prepared, sampler: Any = None) -> dict:
        """The job's configuration as a calibration identifies it: {"sampler": the run's calibration settings,
        "model": the pipeline call's identity} (``pipelines.expected_change.call_identity``)."""
        from ..pipelines.expected_change import call_identity
        sampler = self._sampler(prep, prep.run) if sampler is None else sampler
        size = {k: prep.extra[k] for k in ("height", "width") if k in prep.extra}
        return {"sampler": sampler.calibration_settings(), "model": call_identity(self.pipe, prep.guidance,
                                                                                         **size)}

    def _calibration(self, prep: Prepared, sampler: Any) -> Any:
        """The backend's calibration if it was made for this job's configuration, else None (checked by the one
        resolver, ``core.expected_change.resolve_calibration``)."""
        from ..core.expected_change import resolve_calibration
        if self.calibration is None:
            return None
        config = self.configuration(prep, sampler)
        try:
            return resolve_calibration(self.calibration, config["sampler"], lambda: config["model"])
        except ValueError:
            return None

    def open(self, prep: Prepared, stop: Callable[[], bool], vanilla: bool = False) -> Run:
        run = prep.run.vanilla() if vanilla else prep.run
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in prep.seeds]
        guard = _StopGuard(stop)
        extra = {} if run.calibration is None else {"calibration": run.calibration}
        guidance = {} if run.guidance is None else {"guidance_scale": run.guidance}
        outs = self.pipe.iter_anytime(**self._call_args(prep), **run_steps(run), **guidance, generator=gens,
                                      max_nfe=run.max_nfe, deadline=run.deadline, output_type="np",
                                      denoiser_hook=guard.wrap, **extra)
        return Run(((out, unit_to_rgb(out.images)) for out in outs), guard)


def load_backend(family: str = "bundled", model_path: str | os.PathLike | None = None, device: str = "cpu",
                 scale: int | None = None, calibration: Any = None, dtype: Any = None,
                 option: str = "--model-path") -> "BundledBackend | PipelineBackend":
    """The backend ``nested-diffusion serve --pipeline FAMILY --model-path DIR [--calibration ...]`` runs on,
    loaded from disk only through the family table (``Family.load``). ``calibration``: "auto" (the default for
    the bundled model: its shipped calibrations; the pipeline families ship none), "feature" (bundled), "none" or
    a file."""
    fam = get_family(family).require("serve")
    if fam.is_bundled:
        return BundledBackend(fam.load(model_path, device, dtype, option), scale=scale or 4, device=device,
                              calibration=calibration or "auto", family=fam)
    pipe = fam.load(model_path, device, dtype, option)
    if fam.generic:
        from .generic_backend import GenericBackend
        backend = GenericBackend(pipe, fam, calibration)
    else:
        backend = PipelineBackend(pipe, fam, calibration)
    backend.scale = scale or 1
    return backend
