"""The anytime stream for front ends, with no web framework in it.

``stream_updates(backend, request, stop)`` is a plain generator of render-ready ``WebUpdate``s (uint8 RGB
pictures, NFE spent / total, elapsed time, source, the vanilla image at the same NFE, the expected-change words),
one per anytime update of the library's stream, then one closing update whose ``state`` says how the run ended.
It runs in the caller's thread; ``stop`` (a callable or ``threading.Event``) is checked after every model call.

``Job`` runs that generator in a worker thread for servers: ``stop()`` (soft: the current image is the result,
within one model call), ``cancel()`` (hard: the result is discarded), and ``next_update`` / ``updates()`` for
consumers that may be slower than the sampler (they always get the newest update; stale previews are skipped).
``JobBoard`` keeps one job per client (a Gradio session hash, an SSE client id).

    for u in stream_updates(BundledBackend(), JobRequest(classes="sneaker,bag", seed=3)):
        show(u.image, u.status())
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import numpy as np

from ..core.events import in_strip
from ..core.nested import stop_check
from .backends import JobRequest, Limits, Prepared
from .render import SOURCE_WORDS, batch_tile, expected_change_words

STATES = ("running", "done", "stopped", "budget", "deadline", "cancelled", "failed")


@dataclass
class WebUpdate:
    """One render-ready update. ``images``: the batch (B, H, W, 3) uint8 at model resolution; ``image``: the
    batch as one upscaled row; ``vanilla``: vanilla sampling's x̂0 at the same NFE (same layout) or None."""

    images: np.ndarray
    image: np.ndarray
    nfe: int                   # NFEs spent when this result was produced
    spent: int                 # model calls of the nested run so far (≥ nfe)
    total_nfe: int
    budget: int
    outer_step: int
    outer_steps: int
    inner_step: int
    inner_steps: int
    source: str
    final: bool
    elapsed: float
    vanilla: np.ndarray | None = None
    vanilla_nfe: int | None = None
    expected_change: str | None = None
    state: str = "running"

    def status(self) -> str:
        """One line for a status bar."""
        where = (f"result of NFE {self.nfe} (outer step {self.outer_step}/{self.outer_steps}, "
                 f"{SOURCE_WORDS.get(self.source, self.source)})")
        head = {"running": f"NFE {self.spent}/{self.budget}",
                "done": f"Done at NFE {self.spent}/{self.budget}",
                "stopped": f"Stopped at NFE {self.spent}/{self.budget}",
                "budget": f"NFE budget reached: NFE {self.spent}/{self.total_nfe}",
                "deadline": f"Deadline reached at NFE {self.spent}/{self.budget}",
                "cancelled": f"Cancelled at NFE {self.spent}/{self.budget}; result discarded",
                "failed": "Failed"}[self.state]
        return f"{head} · {where} · {self.elapsed:.2f} s"


def _advance(vanilla: Iterator | None, last: tuple | None, nfe: int) -> tuple | None:
    """Step the vanilla run until its NFE reaches ``nfe``; returns its latest (info, images)."""
    if vanilla is None:
        return None
    while last is None or last[0].nfe < nfe:
        nxt = next(vanilla, None)
        if nxt is None:
            break
        last = nxt
    return last


def _update(backend: Any, info: Any, images: np.ndarray, run: Any, prep: Prepared, budget: int,
            van: tuple | None, start: float) -> WebUpdate:
    scale = getattr(backend, "display_scale", backend.scale)
    return WebUpdate(images=images, image=batch_tile(images, scale), nfe=int(info.nfe), spent=run.calls,
                     total_nfe=prep.total_nfe, budget=budget, outer_step=int(info.outer_step),
                     outer_steps=int(info.outer_steps), inner_step=int(info.inner_step),
                     inner_steps=int(info.inner_steps), source=str(info.source), final=bool(info.final),
                     elapsed=time.perf_counter() - start,
                     vanilla=None if van is None else batch_tile(van[1], scale),
                     vanilla_nfe=None if van is None else int(van[0].nfe),
                     expected_change=expected_change_words(info, images.shape[0], prep.calibrated))


def _end_state(last: WebUpdate, prep: Prepared, stopped: bool, elapsed: float) -> str:
    if last.final:
        return "done"
    if stopped:
        return "stopped"
    if prep.deadline is not None and elapsed >= prep.deadline:
        return "deadline"
    return "budget"


def stream_updates(backend: Any, request: JobRequest | Prepared, stop: Any = None,
                   limits: Limits | None = None) -> Iterator[WebUpdate]:
    """Render-ready updates of one job (see the module docstring). Bad input raises ``ValueError`` at the first
    ``next()``; nothing is computed before that."""
    prep = request if isinstance(request, Prepared) else backend.prepare(request, limits or Limits())
    should_stop = stop_check(stop)
    total = prep.total_nfe
    budget = total if prep.max_nfe is None else min(prep.max_nfe, total)
    start = time.perf_counter()
    nested = backend.open(prep, should_stop)
    vanilla = backend.open(prep, should_stop, vanilla=True) if prep.request.vanilla else None
    van_iter, van, last = (None if vanilla is None else iter(vanilla)), None, None
    try:
        for info, images in nested:
            van = _advance(van_iter, van, int(info.nfe))
            last = _update(backend, info, images, nested, prep, budget, van, start)
            yield last
        if last is None:
            raise TimeoutError("deadline: passed before the first model call finished; no result (raise it)")
        elapsed = time.perf_counter() - start
        yield replace(last, spent=nested.calls, elapsed=elapsed, state=_end_state(last, prep, should_stop(), elapsed))
    finally:
        nested.close()
        if vanilla is not None:
            vanilla.close()


def keep_frame(u: WebUpdate) -> bool:
    """Frames kept for the progression strip / GIF (``core.events.in_strip``: memory stays small even for large
    images)."""
    return in_strip(u.source, u.inner_step)


@dataclass
class _Shared:
    seq: int = 0
    latest: WebUpdate | None = None
    frames: list = field(default_factory=list)


class Job:
    """One generation in a worker thread (see the module docstring). ``state``: one of ``STATES``;
    ``error``: a one-line message when it failed; ``result``: the last update (None when cancelled)."""

    def __init__(self, backend: Any, request: JobRequest, limits: Limits | None = None):
        self.backend, self.limits = backend, limits or Limits()
        self.prepared = backend.prepare(request, self.limits)    # bad input raises here, before any thread
        self._soft, self._hard = threading.Event(), threading.Event()
        self._cv = threading.Condition()
        self._shared = _Shared()
        self.state, self.error = "running", None
        self._thread = threading.Thread(target=self._work, name="nested-diffusion-job", daemon=True)

    def start(self) -> "Job":
        """Run in the worker thread — unless cancelled already (then it ends "cancelled" without a model call)."""
        if self._hard.is_set():
            self._finish("cancelled", None)
            return self
        self._thread.start()
        return self

    def stop(self) -> None:
        """Soft stop: end within one model call; the current image is the result."""
        self._soft.set()

    def cancel(self) -> None:
        """Hard stop: end within one model call and discard the result (no effect on a finished job)."""
        if self.done:
            return
        self._hard.set()
        with self._cv:
            self._cv.notify_all()

    @property
    def cancelled(self) -> bool:
        return self._hard.is_set()

    @property
    def done(self) -> bool:
        return self.state != "running"

    def _work(self) -> None:
        stop = lambda: self._soft.is_set() or self._hard.is_set()  # noqa: E731
        state, error = "failed", None
        try:
            lock = self.backend.lock if self.backend.exclusive else None
            if lock is not None:
                lock.acquire()
            try:
                for u in stream_updates(self.backend, self.prepared, stop):
                    self._publish(u)
                    state = u.state
            finally:
                if lock is not None:
                    lock.release()
        except Exception as e:  # a failed job is a message for the page, not a traceback
            error = f"{type(e).__name__}: {e}"
        self._finish(state if error is None else "failed", error)

    def _finish(self, state: str, error: str | None) -> None:
        with self._cv:
            self.state = "cancelled" if self._hard.is_set() else state
            self.error = None if self.state == "cancelled" else error
            if self.state == "cancelled":
                self._shared.latest, self._shared.frames = None, []
            self._shared.seq += 1
            self._cv.notify_all()

    def _publish(self, u: WebUpdate) -> None:
        with self._cv:
            if keep_frame(u) and u.state == "running":
                self._shared.frames.append(u.images)
            self._shared.latest = u
            self._shared.seq += 1
            self._cv.notify_all()

    def next_update(self, after: int = 0, timeout: float | None = None) -> tuple[int, WebUpdate | None]:
        """Wait until there is an update newer than sequence number ``after`` (or the job ended); returns
        (its sequence number, the newest update). On timeout: (after, None)."""
        with self._cv:
            ok = self._cv.wait_for(lambda: self._shared.seq > after or self.done or self._hard.is_set(), timeout)
            if not ok or self._shared.seq <= after:
                return after, None
            return self._shared.seq, self._shared.latest

    def updates(self, poll: float = 0.5) -> Iterator[WebUpdate]:
        """The newest update each time there is one, until the job ends (blocking; for sync consumers)."""
        seq = 0
        while True:
            seq, u = self.next_update(seq, poll)
            if u is not None:
                yield u
            if self.done and seq >= self._shared.seq:
                return

    @property
    def result(self) -> WebUpdate | None:
        return None if self._hard.is_set() else self._shared.latest

    @property
    def frames(self) -> list[np.ndarray]:
        """Kept frames (each a (B, H, W, 3) batch), ending with the result."""
        with self._cv:
            frames = list(self._shared.frames)
            last = self._shared.latest
        if last is not None and (not frames or frames[-1] is not last.images):
            frames.append(last.images)
        return frames

    @property
    def calls(self) -> int:
        return self._shared.latest.spent if self._shared.latest is not None else 0

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.ident is None:      # never started (cancelled before its start)
            return self.done
        self._thread.join(timeout)
        return not self._thread.is_alive()


class JobBoard:
    """At most one job per client key; a new job for a key cancels that key's previous one.

    ``announce(key)`` says a job for ``key`` is on its way (requested, waiting in a server's queue): a ``cancel``
    before it starts cancels it then, so it ends "cancelled" without a model call — a Cancel pressed at any
    moment after Generate applies to that run, and the run's own stream reports it."""

    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._announced: dict[str, bool] = {}     # key → cancelled before its job started
        self._lock = threading.Lock()

    def announce(self, key: str) -> None:
        with self._lock:
            self._announced[key] = False

    def start(self, key: str, job: Job) -> Job:
        with self._lock:
            old = self._jobs.get(key)
            self._jobs[key] = job
            if self._announced.pop(key, False):
                job.cancel()
        if old is not None:
            old.cancel()
        return job.start()

    def withdraw(self, key: str) -> None:
        """Drop ``key``'s announcement (its request was refused before a job was made)."""
        with self._lock:
            self._announced.pop(key, None)

    def get(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def stop(self, key: str) -> bool:
        job = self.get(key)
        if job is not None:
            job.stop()
        return job is not None

    def cancel(self, key: str) -> bool:
        """Cancel ``key``'s running job and the one announced for it, if any; False if there is neither."""
        with self._lock:
            job = self._jobs.get(key)
            announced = key in self._announced
            if announced:
                self._announced[key] = True
        if job is not None:
            job.cancel()
        return job is not None or announced

    def forget(self, key: str, job: Job | None = None) -> None:
        """Drop (and cancel) ``key``'s job — only if it is still ``job`` when one is given."""
        with self._lock:
            if job is None:
                self._announced.pop(key, None)
            current = self._jobs.get(key)
            if current is None or (job is not None and current is not job):
                return
            del self._jobs[key]
        current.cancel()

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)
