"""Continuous batching of model calls across concurrent runs (no web framework in here).

``BatchingModel`` stands in for a network inside every run's denoiser. Each run is an ordinary library run (the
same sampler, the same per-sample seeds) in its own thread, registered as a ``Member``. When a run calls the
network, the call is queued; one executor thread concatenates the queued calls of all members and calls the real
network **once** (rows: every member's batch, ×2 with classifier-free guidance), then hands each member its rows.

Why at the network and not at the sampler: the network takes a per-row time ``t`` and per-row labels, so runs at
different timesteps, schedules, guidance scales and even different solvers share one call. A request that
arrives while others run joins at their next model call (no waiting for a batch to finish).

* **Batch forming**: after the first queued call, the executor waits until every active member has queued one
  (a lock step; a run's work between two calls is tiny) or ``window_s`` passes (a member stalled elsewhere does
  not hold the others up for longer), and takes at most ``max_rows`` rows, oldest first.
* **Cancellation**: ``cancel(member)`` drops the member's queued call at once (its thread gets ``RunCancelled``),
  so a cancelled run takes part in at most the one model call already in flight.
* **Same seed → same image**: a member alone in a call gets exactly the library's computation; batched with
  others, the convolutions run with a larger batch (oneDNN may pick other kernels), so pixels may differ by float
  rounding (tests: at most one uint8 level).
* **Timing**: each call's (rows, seconds) feeds ``call_seconds(rows)``, a least-squares line over recent calls,
  which the service uses to pick a schedule that fits a deadline at the current load.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch


class RunCancelled(Exception):
    """Raised in a cancelled member's thread instead of its model output."""


@dataclass(eq=False)
class Member:
    """One run's seat at the executor. ``calls``: model calls it took part in; ``calls_at_cancel``: that count
    when it was cancelled (tests: ``calls - calls_at_cancel <= 1``)."""

    name: str = ""
    calls: int = 0
    cancelled: bool = False
    calls_at_cancel: int | None = None


@dataclass(eq=False)
class _Call:
    member: Member
    args: tuple
    rows: int
    done: threading.Event = field(default_factory=threading.Event)
    out: Any = None
    error: BaseException | None = None


_local = threading.local()


def _concat(parts: list) -> Any:
    if parts[0] is None:
        return None
    return torch.cat(parts)


class BatchingModel:
    """See the module docstring. ``model``: the network, called ``model(x, t, labels)`` with per-row ``t`` and
    ``labels`` (the bundled ``TinyUNet``). ``config``/``null_class`` are the model's, so the library's
    ``make_denoiser`` accepts this object in its place."""

    def __init__(self, model: Any, max_rows: int = 64, window_s: float = 0.02, history: int = 256):
        if max_rows < 1:
            raise ValueError(f"max_rows: must be ≥ 1, got {max_rows}")
        self.model, self.max_rows, self.window_s = model, int(max_rows), float(window_s)
        self.config = model.config
        self.null_class = getattr(model, "null_class", None)
        self._cv = threading.Condition()
        self._pending: deque[_Call] = deque()
        self._members: set[Member] = set()
        self._timings: deque[tuple[int, float]] = deque(maxlen=history)
        self.calls = 0              # model calls made
        self.rows = 0               # rows computed in them
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------- members
    def join(self, member: Member) -> None:
        """``member`` runs in the calling thread from now on (its calls are batched with the others')."""
        with self._cv:
            self._members.add(member)
            _local.member = member
            self._start()

    def leave(self, member: Member) -> None:
        with self._cv:
            self._members.discard(member)
            if getattr(_local, "member", None) is member:
                _local.member = None
            self._cv.notify_all()

    def cancel(self, member: Member) -> None:
        """The member leaves the batch: its queued call (if any) is dropped now; a call in flight still ends."""
        with self._cv:
            if member.cancelled:
                return
            member.cancelled, member.calls_at_cancel = True, member.calls
            for call in [c for c in self._pending if c.member is member]:
                self._pending.remove(call)
                call.error = RunCancelled()
                call.done.set()
            self._members.discard(member)
            self._cv.notify_all()

    @property
    def active(self) -> int:
        with self._cv:
            return len(self._members)

    def active_rows(self) -> int:
        """Rows the active members put into each call (measured from their latest calls)."""
        with self._cv:
            return sum(getattr(m, "rows", 0) for m in self._members)

    # ------------------------------------------------------------------------------------------- calls
    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: Any = None) -> torch.Tensor:
        member = getattr(_local, "member", None)
        if member is None:                          # not a served run (warm-up, a library caller): direct
            return self._timed(x, t, labels)
        if member.cancelled:
            raise RunCancelled()
        call = _Call(member, (x, t, labels), int(x.shape[0]))
        member.rows = call.rows
        with self._cv:
            self._pending.append(call)
            self._cv.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.out

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="nested-diffusion-batcher", daemon=True)
            self._thread.start()

    def _take(self) -> list[_Call]:
        """Wait for a batch (see the module docstring) and take it off the queue; called with the lock held."""
        while not self._pending:
            self._cv.wait()
        until = time.monotonic() + self.window_s
        while True:
            owners = {c.member for c in self._pending}
            rows = sum(c.rows for c in self._pending)
            left = until - time.monotonic()
            if len(owners) >= len(self._members) or rows >= self.max_rows or left <= 0:
                break
            self._cv.wait(left)
        batch, rows = [], 0
        while self._pending and (not batch or rows + self._pending[0].rows <= self.max_rows):
            call = self._pending.popleft()
            batch.append(call)
            rows += call.rows
        return batch

    def _loop(self) -> None:
        while True:
            with self._cv:
                batch = self._take()
            try:
                xs, ts, ls = zip(*(c.args for c in batch))
                out = self._timed(torch.cat(xs), torch.cat(ts), _concat(list(ls)))
                start = 0
                for c in batch:
                    c.out = out[start:start + c.rows]
                    start += c.rows
            except BaseException as e:  # noqa: BLE001 — handed to every member of the call, which raises it
                for c in batch:
                    c.error = e
            with self._cv:
                for c in batch:
                    c.member.calls += 1
            for c in batch:
                c.done.set()

    def _timed(self, x: torch.Tensor, t: torch.Tensor, labels: Any) -> torch.Tensor:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model(x, t, labels)
        dt = time.perf_counter() - t0
        with self._cv:
            self.calls += 1
            self.rows += int(x.shape[0])
            self._timings.append((int(x.shape[0]), dt))
        return out

    # ------------------------------------------------------------------------------------------- timing
    def warm_up(self, rows: tuple[int, ...] = (2, 8, 16, 32), repeats: int = 3, image_shape: tuple | None = None):
        """A few direct calls at several batch sizes, so ``call_seconds`` has data before the first request."""
        c = int(self.config.get("in_channels", 1))
        s = int(self.config.get("image_size", 28))
        shape = image_shape or (c, s, s)
        x = torch.zeros((rows[0], *shape))
        with torch.inference_mode():          # the first call pays one-off costs: not timed
            self.model(x, torch.full((rows[0],), 500, dtype=torch.long), torch.zeros(rows[0], dtype=torch.long))
        for r in rows:
            for _ in range(repeats):
                x = torch.zeros((r, *shape))
                self._timed(x, torch.full((r,), 500, dtype=torch.long), torch.zeros(r, dtype=torch.long))

    def call_seconds(self, rows: int) -> float | None:
        """Estimated seconds of one model call of ``rows`` rows: a least-squares line a + b·rows over the recent
        calls (None before any call)."""
        with self._cv:
            data = list(self._timings)
        if not data:
            return None
        n = len(data)
        mx = sum(r for r, _ in data) / n
        my = sum(s for _, s in data) / n
        vx = sum((r - mx) ** 2 for r, _ in data)
        b = 0.0 if vx == 0 else sum((r - mx) * (s - my) for r, s in data) / vx
        b = max(b, 0.0)
        a = my - b * mx
        return max(a + b * rows, min(s for _, s in data) * 0.5)
