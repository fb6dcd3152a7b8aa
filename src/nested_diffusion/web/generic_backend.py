"""The web / API backend of a generic family (``Family.generic``: a stock diffusers pipeline made nested by
``pipelines.NestedScheduler``): the same two calls as every backend (``web.backends``), over
``pipelines.any_pipeline.anytime``.

* ``prepare``: the request's run fields resolved by ``core.run.resolve_run`` with the family's defaults (as every
  backend, ``web.backends.resolve_job_run``), the server's ``Limits``, the prompt and size checks of
  ``PipelineBackend``, and the generic family's own refusals (the inner solver is the pipeline's own scheduler; a
  negative prompt only where the stock pipeline takes one); then ``anytime`` checks the whole call — all before
  any model call. A calibration made for the job's configuration (``nested-diffusion calibrate --pipeline
  FAMILY``) is attached, so every update carries its expected change.
* ``open``: one ``anytime`` stream; image i uses seed ``seed + i`` (its own generator, and its outer noise when
  ``outer_eta`` > 0), as ``generate`` and the library. ``stop()`` is checked after every model call (``anytime``
  calls it once per call, which is also how this backend counts the calls). Each run calls its own shallow copy
  of the pipeline (the model components are shared; the per-call state — its scheduler, interrupt flag — is not), so the
  vanilla comparison can run interleaved with the nested run.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Iterator

import torch

from ..core.run import RunConfig
from ..core.schedules import Schedule
from ..families import Family, get_family
from .backends import JobRequest, Limits, PipelineBackend, Prepared, Run, check_job, job_seeds, resolve_job_run
from .render import model_to_rgb


class _CallCounter:
    """The ``stop`` of one ``anytime`` run: counts its model calls (``nfe``; ``anytime`` calls ``stop`` exactly once
    after each) and answers the job's ``stop()``."""

    def __init__(self, stop: Callable[[], bool]):
        self.stop, self.nfe = stop, 0

    def __call__(self) -> bool:
        self.nfe += 1
        return bool(self.stop())


class GenericBackend(PipelineBackend):
    """A generic image family's stock pipeline behind the web page and the OpenAI API (prompt-conditioned; run
    options resolved with the family's defaults, ``Family.run_defaults``). ``calibration``: None, "none", "auto"
    (generic families ship none) or a calibration (file) from ``nested-diffusion calibrate --pipeline FAMILY``;
    attached to the jobs whose configuration it matches. Jobs run one at a time (``exclusive``)."""

    exclusive = True
    display_scale = 1

    def __init__(self, pipe: Any, family: "str | Family", calibration: Any = None):
        from ..pipelines.any_pipeline import GENERIC_FAMILIES
        fam = get_family(family, "family")
        gen = GENERIC_FAMILIES.get(fam.name)
        if not fam.generic or gen is None:
            raise ValueError(f"family: {fam.name!r} is not a generic family (valid: {', '.join(GENERIC_FAMILIES)})")
        if gen.video:
            raise ValueError(f"family: {fam.name} is a video family; the web page and the API show images")
        if not any(c.__name__ in gen.pipelines for c in type(pipe).__mro__):
            raise TypeError(f"pipe: {type(pipe).__name__} is not the stock pipeline of {fam.name} "
                            f"({', '.join(gen.pipelines)})")
        if not fam.takes_prompt:
            raise ValueError(f"family: {fam.name} is not prompt-conditioned; generic families take a prompt")
        self.pipe, self.family, self.kind, self.scale = pipe, fam, fam.name, 1
        self.generic = gen
        self.calibration = self._load_calibration(calibration)
        import threading
        self.lock = threading.Lock()

    def _parameters(self) -> set:
        return set(inspect.signature(type(self.pipe).__call__).parameters)

    def prepare(self, req: JobRequest, limits: Limits) -> Prepared:
        run = resolve_job_run(req, self.family, self.num_train_timesteps)
        if run.inner_solver is not None and _given_solver(req):
            raise ValueError(f"solver: {req.solver!r}; the {self.kind} family runs its pipeline's own scheduler "
                             f"({type(self.pipe.scheduler).__name__}) as the inner solver — leave solver empty")
        seed = check_job(req, run, limits)
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise ValueError("prompt: describe the image to generate (an empty prompt is not accepted)")
        negative = req.negative_prompt.strip() if isinstance(req.negative_prompt, str) else req.negative_prompt
        if negative and "negative_prompt" not in self._parameters():
            raise ValueError(f"negative_prompt: the {self.kind} pipeline ({type(self.pipe).__name__}) takes no "
                             f"negative prompt; leave it empty")
        extra = dict(self._size(req, limits), negative_prompt=negative or None)
        guidance = float(run.guidance if run.guidance is not None else self.family.guidance_default())
        prep = Prepared(req, [], [req.prompt.strip()], run, guidance, run.inner_total, extra=extra)
        prep.seeds = job_seeds(seed, 1, limits, "prompt")
        self._stream(prep, run, lambda: False).close()     # anytime's own checks of the whole call, no model call
        cal = self._calibration(prep, None)
        prep.run, prep.calibrated = run.replace(calibration=cal), cal is not None
        return prep

    def _call(self, prep: Prepared, run: RunConfig) -> dict:
        """The ``anytime`` keyword arguments of this job's run (the pipeline's own arguments and the run)."""
        call = dict(prompt=list(prep.cond), height=prep.extra["height"], width=prep.extra["width"])
        if prep.extra.get("negative_prompt"):
            call["negative_prompt"] = [prep.extra["negative_prompt"]] * len(prep.cond)
        if run.guidance is not None:
            call["guidance_scale"] = float(run.guidance)
        return dict(call, schedule=Schedule(run.schedule, tuple(run.inner_steps), run.outer_times),
                    outer_eta=run.outer_eta, grid=run.grid, t_start=run.t_start, max_nfe=run.max_nfe,
                    deadline=run.deadline)

    def _stream(self, prep: Prepared, run: RunConfig, stop: Callable[[], bool], pipe: Any = None) -> Iterator:
        from ..pipelines.any_pipeline import anytime
        extra = {} if run.calibration is None else {"calibration": run.calibration}
        return anytime(self.pipe if pipe is None else pipe, **self._call(prep, run), seed=list(prep.seeds),
                       generator=[torch.Generator().manual_seed(s) for s in prep.seeds], stop=stop, **extra)

    def configuration(self, prep: Prepared, sampler: Any = None) -> dict:
        """The job's configuration as a calibration identifies it (``pipelines.any_pipeline.generic_configuration``:
        the same dict ``anytime(..., calibration=)`` checks)."""
        from ..pipelines.any_pipeline import generic_configuration
        return generic_configuration(self.pipe, prep.run, prep.guidance, prep.extra["height"],
                                     prep.extra["width"])

    def open(self, prep: Prepared, stop: Callable[[], bool], vanilla: bool = False) -> Run:
        run = prep.run.vanilla() if vanilla else prep.run
        counter = _CallCounter(stop)
        pipe = copy.copy(self.pipe)
        pipe.scheduler = copy.deepcopy(self.pipe.scheduler)     # a scheduler holds its run's step state
        stream = self._stream(prep, run, counter, pipe)

        def pairs():
            try:
                for u in stream:
                    yield u, model_to_rgb(u.x0)
            finally:
                stream.close()
        return Run(pairs(), counter)


def _given_solver(req: JobRequest) -> bool:
    return req.solver is not None and not (isinstance(req.solver, str) and not req.solver.strip())
