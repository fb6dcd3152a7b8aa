"""Anytime generation on any stock diffusers pipeline: ``nested_diffusion.anytime(pipe, prompt, ...)``.

The pipeline is called unmodified, with its scheduler wrapped in a ``NestedScheduler`` for the call and
``callback_on_step_end`` / ``interrupt`` (its own API) to report and to stop. The call runs in a worker thread
that hands over after every model call and waits, so nothing runs ahead of the consumer: breaking out of the loop,
``stop``, ``max_nfe`` or ``deadline`` end the run within one model call (the pipeline is interrupted; its
remaining loop iterations call no model). Updates are decoded in the caller's thread, only as they are consumed.

``GENERIC_FAMILIES``: the stock pipeline classes of each family run this way, with the family's run defaults
(the one place they live; ``families.py`` reads them) and how its latents decode (packing, VAE normalisation).
"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..core.events import INNER_RESULT, X0_PREVIEW, AnytimeUpdate
from ..core.nested import PREVIEW_MODES, default_previews, preview_shown, stop_check
from ..core.registry import FLOW
from ..core.run import RunConfig, RunDefaults, resolve_run
from .nested_scheduler import GENERIC_DEFAULTS, NestedScheduler, NestedSchedulerError, scheduler_kind
from .previews import tiny_decode, use_cheap

_FLOW_DEFAULTS = dict(kind=FLOW, inner_solver="euler", outer_eta=0.0)


@dataclass(frozen=True)
class GenericFamily:
    """A family run through ``NestedScheduler``: its stock diffusers ``pipelines`` (class names), its
    ``run_defaults`` (a ``RunDefaults``, or the name of this project's nested pipeline class whose defaults it
    shares), and its latent ``layout`` (how x̂0 latents become images, see ``spatial_latents`` / ``vae_decode``)."""

    name: str
    pipelines: tuple[str, ...]
    run_defaults: Any
    layout: str
    video: bool = False

    def defaults(self) -> RunDefaults:
        if isinstance(self.run_defaults, RunDefaults):
            return self.run_defaults
        import importlib
        return getattr(importlib.import_module(__package__), self.run_defaults).run_defaults


# grid: the convention of the stock pipeline's own call ("clean": sigmas linspace(1, 1/n, n); "sigma_min": the
# scheduler's default grid), so that one outer step of the stock step count is the stock run.
GENERIC_FAMILIES: dict[str, GenericFamily] = {f.name: f for f in (
    GenericFamily("flux", ("FluxPipeline",), "NestedFluxPipeline", "flux"),
    GenericFamily("sd3", ("StableDiffusion3Pipeline",), "NestedStableDiffusion3Pipeline", "kl"),
    GenericFamily("sdxl", ("StableDiffusionXLPipeline",), "NestedStableDiffusionXLPipeline", "sdxl"),
    GenericFamily("flux2", ("Flux2Pipeline",),
                  RunDefaults(**_FLOW_DEFAULTS, outer_steps=4, inner_steps=7, nfe=28, grid="clean"), "flux2"),
    GenericFamily("flux2-klein", ("Flux2KleinPipeline",),
                  RunDefaults(**_FLOW_DEFAULTS, outer_steps=2, inner_steps=4, nfe=8, grid="clean"), "flux2"),
    GenericFamily("qwen-image", ("QwenImagePipeline",),
                  RunDefaults(**_FLOW_DEFAULTS, outer_steps=5, inner_steps=10, nfe=50, grid="clean"), "qwen"),
    GenericFamily("z-image", ("ZImagePipeline",),
                  RunDefaults(**_FLOW_DEFAULTS, outer_steps=2, inner_steps=4, nfe=8, grid="clean"), "kl"),
    GenericFamily("chroma", ("ChromaPipeline",),
                  RunDefaults(**_FLOW_DEFAULTS, outer_steps=4, inner_steps=7, nfe=28, grid="clean"), "flux"),
    GenericFamily("hidream", ("HiDreamImagePipeline",),         # with a FlowMatchEulerDiscreteScheduler (its
                  RunDefaults(**_FLOW_DEFAULTS, outer_steps=5, inner_steps=10, nfe=50, grid="sigma_min"), "kl"),
    # UniPC default is refused: the stock call branches on isinstance(scheduler, UniPCMultistepScheduler))
    GenericFamily("wan", ("WanPipeline",),
                  RunDefaults(**_FLOW_DEFAULTS, outer_steps=5, inner_steps=10, nfe=50, grid="sigma_min"), "wan",
                  video=True),
)}


def generic_family_of(pipe: Any) -> GenericFamily | None:
    """The family whose stock pipeline class ``pipe`` is (by class name, most derived first)."""
    for cls in type(pipe).__mro__:
        for fam in GENERIC_FAMILIES.values():
            if cls.__name__ in fam.pipelines:
                return fam
    return None


def run_defaults_of(name: str) -> RunDefaults:
    """A generic family's run defaults (read by ``families.Family.run_defaults``)."""
    return GENERIC_FAMILIES[name].defaults()


# ------------------------------------------------------------------------------------------------ decoding
def spatial_latents(layout: str, pipe: Any, x: torch.Tensor, call: dict) -> torch.Tensor:
    """The latents in the step's layout (packed tokens for FLUX-type models) → the VAE's latent layout (still in
    the denoiser's normalisation). ``call``: the pipeline call's local variables (height, width, latent ids)."""
    if layout == "flux":
        return pipe._unpack_latents(x, call["height"], call["width"], pipe.vae_scale_factor)
    if layout == "qwen":
        return pipe._unpack_latents(x, call["height"], call["width"], pipe.vae_scale_factor)
    if layout == "flux2":
        z = pipe._unpack_latents_with_ids(x, call["latent_ids"])
        bn = pipe.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(z.device, z.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(z.device, z.dtype)
        return pipe._unpatchify_latents(z * std + mean)
    return x


def vae_decode(layout: str, pipe: Any, z: torch.Tensor) -> torch.Tensor:
    """VAE-layout latents → pixels in [−1, 1] ((B, 3, H, W); video (B, 3, F, H, W)), as the stock pipeline
    decodes its final latents."""
    vae = pipe.vae
    dtype = next(vae.parameters()).dtype
    cfg = vae.config
    if layout in ("qwen", "wan"):
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean).view(shape).to(z.device, dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(shape).to(z.device, dtype)
        out = vae.decode(z.to(dtype) / inv_std + mean, return_dict=False)[0]
        return out[:, :, 0] if layout == "qwen" else out
    if layout == "flux2":
        return vae.decode(z.to(dtype), return_dict=False)[0]
    if layout == "sdxl":
        from .modern import decode_sdxl_latents
        return decode_sdxl_latents(vae, z)
    z = z.to(dtype) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
    return vae.decode(z, return_dict=False)[0]


# ------------------------------------------------------------------------------------------------ the stream
@dataclass
class PipelineUpdate(AnytimeUpdate):
    """An anytime update of a pipeline run: ``x0`` decoded (pixels in [−1, 1]; ``decode=False``: the latents),
    plus ``latents`` (the x̂0 in the pipeline's step layout) and ``decoder`` ("vae", "tiny" or "none")."""

    latents: torch.Tensor | None = None
    decoder: str = "vae"


# call arguments anytime() owns (it drives the pipeline's loop through them)
OWNED = {"callback_on_step_end": "anytime() reports through the pipeline's callback itself; iterate the updates",
         "callback_on_step_end_tensor_inputs": "anytime() reports through the pipeline's callback itself",
         "output_type": "updates carry decoded pixels (decode=True) or the latents (decode=False)",
         "num_inference_steps": "the run's inner_steps / nfe / schedule set the steps (the pipeline is called "
                                "with the first inner run's step count)",
         "sigmas": "nested runs build every grid from grid=", "timesteps": "nested runs build every grid from grid="}


def anytime(pipe: Any, *args, outer_steps: int | None = None, inner_steps: Any = None, schedule: Any = None,
            nfe: int | None = None, first: int | None = None, outer_times: Any = None, outer_eta: Any = None,
            inner_eta: Any = None, grid: str | None = None, t_start: Any = None, seed: Any = None,
            max_nfe: int | None = None, deadline: float | None = None, stop: Any = None, previews: str | None = None,
            preview_vae: Any = None, preview_results: bool = False, decode: bool = True, calibration: Any = None,
            **call_kwargs) -> Iterator[PipelineUpdate]:
    """Anytime generation with Nested Diffusion on a stock diffusers text-to-image / text-to-video pipeline.

    ``args`` / ``call_kwargs`` go to the pipeline as they are (prompt, size, guidance, generator, embeddings …).
    The run: ``outer_steps`` × ``inner_steps``, or ``schedule`` ("uniform", "progressive") with ``nfe`` (and
    ``first``), ``outer_times``, ``outer_eta`` (stochastic: per-sample noise from ``seed``), ``inner_eta``,
    ``grid``, ``t_start`` — resolved by ``core.run.resolve_run`` with the family's defaults. Yields
    ``PipelineUpdate`` s: the x̂0 previews of the first inner run (``previews``: "first", "fill", "all", "none";
    None: ``core.nested.default_previews``, "fill" for a schedule with a long last run) and the
    result of every finished inner run, each decoded with the pipeline's VAE (``preview_vae``: an
    ``AutoencoderTiny`` for the previews, and with ``preview_results`` for intermediate results too; the final
    result always uses the VAE). Stops within one model call when the loop is left, when ``stop`` (a callable
    or a ``threading.Event``; a callable is called exactly once after every model call) is set, at ``max_nfe`` model calls (never starting an inner run that cannot
    finish) or after ``deadline`` seconds; the last update is then the latest finished result (or, within the
    first inner run, its latest x̂0 — never a noisy latent). ``calibration``: a calibration (or its file) made by
    ``nested-diffusion calibrate --pipeline FAMILY`` for this configuration (``generic_configuration``; "auto" /
    None / "none": none — generic families ship none): every update then carries ``expected_change``, from
    signals on the x̂0 latents the run already has (no extra model call, no decode). Every argument is checked
    here, before any model call; the pipeline's scheduler is restored when the stream ends."""
    fam = generic_family_of(pipe)
    scheduler = pipe.scheduler.wrapped if isinstance(pipe.scheduler, NestedScheduler) else pipe.scheduler
    kind = scheduler_kind(scheduler)
    if kind is None:
        raise NestedSchedulerError(f"scheduler: {type(scheduler).__name__} is neither a flow-matching nor a VP "
                                   f"scheduler; anytime() needs one of them")
    defaults = fam.defaults() if fam is not None else GENERIC_DEFAULTS[kind]
    if defaults.kind != kind:
        raise NestedSchedulerError(f"scheduler: the {fam.name} family is {defaults.kind}, but the pipeline's "
                                   f"scheduler {type(scheduler).__name__} is {kind}")
    for name, why in OWNED.items():
        if call_kwargs.get(name) is not None:
            raise ValueError(f"{name}: not an argument of anytime() ({why})")
    call_kwargs = {k: v for k, v in call_kwargs.items() if k not in OWNED and k != "return_dict"}
    if previews is not None and previews not in PREVIEW_MODES:
        raise ValueError(f"previews: {previews!r} is not valid; use one of {PREVIEW_MODES} (or None: the "
                         f"schedule's default)")
    if decode and fam is None:
        raise ValueError(f"decode: the latent layout of {type(pipe).__name__} is not in the family table "
                         f"(pipelines.any_pipeline.GENERIC_FAMILIES); pass decode=False for x̂0 latents")
    if preview_vae is not None:
        if not decode or fam.video:
            raise ValueError(f"preview_vae: only for decoded image families "
                             f"({'decode=False' if not decode else 'a video family'} given)")
        if not hasattr(preview_vae, "decode"):
            raise TypeError(f"preview_vae: expected a diffusers AutoencoderTiny, got {type(preview_vae).__name__}")
    should_stop = stop_check(stop)
    options = dict(outer_steps=outer_steps, inner_steps=inner_steps, schedule=schedule, nfe=nfe, first=first,
                   outer_times=outer_times, outer_eta=outer_eta, grid=grid, t_start=t_start, max_nfe=max_nfe,
                   deadline=deadline)
    run = resolve_run(defaults=defaults, names={"schedule_options": None},
                      num_train_timesteps=int(scheduler.config.get("num_train_timesteps", 1000)),
                      **{k: v for k, v in options.items() if v is not None})
    nested = NestedScheduler(scheduler, inner_eta=inner_eta, seed=seed, run=run.replace(max_nfe=None, deadline=None))
    previews = default_previews(list(run.inner_steps)) if previews is None else previews
    cal = _calibration(calibration, pipe, scheduler, run, previews, inner_eta, call_kwargs)
    return _stream(pipe, scheduler, nested, run, fam, args, call_kwargs, should_stop, previews, preview_vae,
                   bool(preview_results), decode, cal)


def generic_configuration(pipe: Any, run: RunConfig, guidance_scale: float, height: int | None = None,
                          width: int | None = None, previews: str | None = None) -> dict:
    """What identifies an ``anytime`` run of ``pipe`` in a calibration: {"sampler": the run's calibration settings
    (``core.nested.calibration_settings``, as the calibrate runner's sampler computes them), "model": the call's
    identity (``pipelines.expected_change.call_identity``: pipeline class, weights, guidance, size)}."""
    from ..core.nested import calibration_settings
    from .expected_change import call_identity
    scheduler = pipe.scheduler.wrapped if isinstance(pipe.scheduler, NestedScheduler) else pipe.scheduler
    T = int(scheduler.config.get("num_train_timesteps", 1000))
    return {"sampler": calibration_settings(run, T, previews),
            "model": call_identity(pipe, guidance_scale, height, width)}


def _calibration(calibration, pipe, scheduler, run: RunConfig, previews, inner_eta, call_kwargs):
    """``anytime``'s ``calibration=`` checked against this call's configuration (one resolver:
    ``pipelines.expected_change.resolve_calibration``), or None."""
    from ..core.nested import calibration_settings
    from .anytime import default_guidance
    from .expected_change import call_identity, resolve_calibration
    if calibration is None or (isinstance(calibration, str) and calibration in ("none", "auto")):
        return None
    if inner_eta not in (None, 0, 0.0):
        raise ValueError(f"calibration: calibrations of generic families are made with the pipeline's own "
                         f"(deterministic) inner steps; inner_eta={inner_eta!r} is another configuration")
    guidance = call_kwargs.get("guidance_scale")
    guidance = default_guidance(type(pipe)) if guidance is None else guidance
    settings = calibration_settings(run, int(scheduler.config.get("num_train_timesteps", 1000)), previews)
    return resolve_calibration(calibration, settings, lambda: call_identity(
        pipe, guidance, call_kwargs.get("height"), call_kwargs.get("width")))


class _Stopped(Exception):
    """Ends a pipeline call that has no ``interrupt`` flag."""


def _stream(pipe, scheduler, nested: NestedScheduler, run: RunConfig, fam, args, call_kwargs, should_stop,
            previews, preview_vae, preview_results, decode, calibration=None) -> Iterator[PipelineUpdate]:
    K, steps = run.outer_steps, list(run.inner_steps)
    ends = [sum(steps[:k + 1]) for k in range(K)]
    budget = ends[-1] if run.max_nfe is None else min(run.max_nfe, ends[-1])
    messages: queue.Queue = queue.Queue()
    go = threading.Semaphore(0)
    state = {"closing": False, "call": None}
    start = [0.0]
    tracker = None if calibration is None else calibration.tracker()

    def halt(p):
        if hasattr(p, "_interrupt"):
            p._interrupt = True
        else:
            raise _Stopped()

    def callback(p, i, t, kwargs):
        info = nested.last
        if state["call"] is None:   # the call's locals (size, latent ids), read once for decoding
            import sys
            state["call"] = dict(sys._getframe(1).f_locals)
        nfe, k = info.i + 1, info.run
        if run.deadline is not None and time.perf_counter() - start[0] > run.deadline:
            should_stop()           # ``stop`` is called exactly once per model call (a caller may count with it)
            halt(p)
            return {}
        shown = info.run_end or preview_shown(previews, k, info.j + 1, info.run_steps)
        change = None if tracker is None else _track(tracker, calibration, info, shown)
        if shown:
            messages.put(("update", (info, change), time.perf_counter() - start[0]))
            go.acquire()
            if state["closing"]:
                should_stop()
                halt(p)
                return {}
        stopped = should_stop()     # after the consumer had the update: a stop it set then counts now
        if stopped or nfe >= budget or (info.run_end and k + 1 < K and ends[k + 1] > budget):
            halt(p)
        return {}

    def work():
        try:
            pipe(*args, **call_kwargs, num_inference_steps=steps[0], output_type="latent",
                 callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"])
            messages.put(("done", None, None))
        except _Stopped:
            messages.put(("done", None, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            messages.put(("error", e, None))

    pipe.scheduler = nested
    worker = threading.Thread(target=work, name="nested-anytime", daemon=True)
    start[0] = time.perf_counter()
    worker.start()
    try:
        while True:
            kind, info, elapsed = messages.get()
            if kind == "done":
                return
            if kind == "error":
                raise info
            with torch.no_grad():
                u = _update(pipe, fam, info[0], run, elapsed, state["call"], decode, preview_vae, preview_results)
            u.expected_change = info[1]
            yield u
            go.release()
    finally:
        state["closing"] = True
        go.release()
        worker.join()
        pipe.scheduler = scheduler


def _track(tracker, calibration, info, shown: bool):
    """Feed one model call to the run's ``SignalTracker`` in the order the calibration replay does
    (``evaluation.expected_change.replay_signals``): the call (no learned variance), the inner run's first x̂0, its
    result; for a shown update its ``ExpectedChange``. Signals are on the x̂0 latents (the pipelines' "pixel"
    signals: latent RMSEs and grey levels)."""
    from ..core.expected_change import mean_var
    x0 = info.x0.detach()
    tracker.call(mean_var(None, x0.shape[0]))
    if info.j == 0:
        tracker.run_started(x0)
    if info.run_end:
        tracker.run_finished(x0)
    return calibration.predict(info.i + 1, tracker.update(x0)) if shown else None


def _update(pipe, fam, info, run: RunConfig, elapsed, call, decode, preview_vae, preview_results) -> PipelineUpdate:
    fields = dict(nfe=info.i + 1, outer_step=info.run + 1, outer_steps=run.outer_steps, inner_step=info.j + 1,
                  inner_steps=info.run_steps, final=info.final, source=INNER_RESULT if info.run_end else X0_PREVIEW,
                  t=info.t, elapsed=elapsed)
    x0 = info.x0
    if not decode:
        return PipelineUpdate(x0=x0, latents=x0, decoder="none", **fields)
    probe = PipelineUpdate(x0=x0, **fields)
    z = spatial_latents(fam.layout, pipe, x0, call)
    if preview_vae is not None and use_cheap(probe, "tiny", preview_results):
        return dataclasses.replace(probe, x0=tiny_decode(preview_vae, z).float(), latents=x0, decoder="tiny")
    return dataclasses.replace(probe, x0=vae_decode(fam.layout, pipe, z).float(), latents=x0, decoder="vae")
