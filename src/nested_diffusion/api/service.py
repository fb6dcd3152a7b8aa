"""The image service behind the OpenAI-compatible API, with no web framework in it.

``ImageService(backend)`` takes a request body (a dict as the ``openai`` client sends it), checks every field
before any work (``parse``: one ``ApiError`` naming the field, the value and what is valid), admits it
(``submit``: a bounded queue; ``QueueFull`` when full) and runs it in a worker thread through the web backends'
one path (``backend.prepare`` → ``stream_updates``), handing OpenAI-shaped event dicts to the ticket's ``sink``.

* The run options of a request (``schedule``, ``nfe``, ``first``, ``outer_steps``, ``inner_steps``, ``solver``,
  ``guidance_scale``, ``max_nfe``) become a ``web.backends.JobRequest``; the backend resolves them with
  ``core.run.resolve_run`` and the family's defaults. The run caps are the backend's ``Limits``.
* The bundled model's runs share model calls: the backend's network is wrapped in a ``BatchingModel``
  (``api.batching``), so concurrent requests are batched into one call per step, whatever their configuration.
  Pipeline families run one request at a time (their pipeline object holds per-run state).
* ``deadline_ms`` counts from the request's arrival. The run is stopped at the deadline (checked after every
  model call) and the result is the last *finished* inner run produced by then; only if no inner run had
  finished is it the latest x̂0 preview, marked ``finished: false``. With ``deadline_ms`` and no schedule fields,
  the schedule is picked when the run starts (``pick_schedule``; the rule is in its docstring).
"""
from __future__ import annotations

import base64
import io
import math
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..core.events import INNER_RESULT
from ..core.nested import NestedSampler
from ..core.run import option_error
from ..web.backends import FIELD_NAMES, BundledBackend, JobRequest, Limits, Prepared
from ..web.stream import stream_updates
from .batching import BatchingModel, Member, RunCancelled

OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
RUN_FIELDS = ("schedule", "nfe", "first", "outer_steps", "inner_steps", "solver", "max_nfe")
IGNORED = ("quality", "moderation", "user", "style", "safety_identifier")  # accepted, no effect on this model
FIELDS = ("model", "prompt", "n", "size", "response_format", "output_format", "output_compression", "stream",
          "partial_images", "background", "seed", "guidance_scale", "negative_prompt", "deadline_ms",
          "previews") + RUN_FIELDS + IGNORED
# a backend error's leading field (web.backends names) → the API field
ERROR_FIELDS = {"classes": "prompt", "guidance": "guidance_scale", "deadline": "deadline_ms", "height": "size",
                "width": "size", "prompt": "prompt", "seed": "seed", "solver": "solver", "schedule": "schedule",
                "nfe": "nfe", "first": "first", "outer_steps": "outer_steps", "inner_steps": "inner_steps",
                "max_nfe": "max_nfe", "outer_steps × inner_steps": "outer_steps"}
SAFETY = 0.8     # share of the time left that a picked schedule may plan to use


class ApiError(Exception):
    """An error the client gets as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type: str = "invalid_request_error", code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class QueueFull(ApiError):
    def __init__(self, retry_after: int, waiting: int):
        super().__init__(f"server busy: {waiting} requests already wait; retry after {retry_after} s", None, 429,
                         "rate_limit_error", "queue_full", {"Retry-After": str(retry_after)})


def backend_error(error: Exception) -> ApiError:
    """A backend ``ValueError`` ('field: what is wrong') as an ApiError naming the API field."""
    msg = str(error)
    head, sep, rest = msg.partition(":")
    field_name = ERROR_FIELDS.get(head.strip()) if sep else None
    if field_name is not None and field_name != head.strip():
        msg = f"{field_name}:{rest}"
    return ApiError(msg, field_name)


# ------------------------------------------------------------------------------------------------ parsing
@dataclass
class ApiRequest:
    """A checked request: the backend's ``Prepared`` job plus what the API does around it."""

    job: JobRequest
    prepared: Prepared
    n: int
    size: str
    output_format: str
    compression: int | None
    stream: bool
    partial_images: int
    previews: bool
    deadline_s: float | None
    adapt: bool                    # deadline given, no schedule field: pick the schedule when the run starts
    arrived: float = field(default_factory=time.monotonic)


def _int(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
        valid = f"an integer ≥ {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ApiError(f"{name}: must be {valid}, got {v!r}", name)
    return v


def _bool(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ApiError(f"{name}: must be true or false, got {v!r}", name)
    return v


def _choice(body: dict, name: str, valid: tuple, default: str) -> str:
    v = body.get(name)
    if v is None:
        return default
    if v not in valid:
        raise ApiError(f"{name}: {v!r} is not supported; valid: {', '.join(valid)}", name)
    return v


# ------------------------------------------------------------------------------------------------ the service
@dataclass(eq=False)
class Ticket:
    """One admitted request. ``sink(event)`` gets each event dict (from the worker thread); the last one is
    ``{"type": "done", "response": ...}`` or ``{"type": "error", "error": ApiError}``."""

    request: ApiRequest
    sink: Callable[[dict], None]
    member: Member = field(default_factory=Member)
    cancelled: bool = False
    started: float | None = None
    thread: threading.Thread | None = None


class ImageService:
    """See the module docstring. ``model_id``: the name clients pass as ``model`` (default: the family's)."""

    def __init__(self, backend: Any, limits: Limits | None = None, max_active: int = 16, max_queue: int = 32,
                 max_partial_images: int = 10, max_rows: int = 64, window_s: float = 0.02,
                 model_id: str | None = None, warm_up: bool = True):
        self.limits = limits or Limits()
        self.model_id = model_id or backend.family.name
        self.max_active, self.max_queue, self.max_partial_images = max_active, max_queue, max_partial_images
        self.batching = None
        if isinstance(backend, BundledBackend):
            self.batching = BatchingModel(backend.model, max_rows=max_rows, window_s=window_s)
            backend = BatchedBundledBackend(backend, self.batching)
            if warm_up:
                self.batching.warm_up()
        self.backend = backend
        if getattr(backend, "exclusive", False):   # a pipeline runs one request at a time: the rest wait in the
            self.max_active = 1                     # queue (deadlines count that wait; 429 when it is full)
        self._cv = threading.Condition()
        self._running: set[Ticket] = set()
        self._waiting: deque[Ticket] = deque()
        self._durations: deque[float] = deque(maxlen=64)
        self._nfe_seconds: deque[float] = deque(maxlen=64)   # per-NFE time of finished runs (exclusive backends)
        self.created = int(time.time())

    # ------------------------------------------------------------------------------------------- models
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": self.created,
                                            "owned_by": "nested-diffusion"}]}

    @property
    def family(self):
        return self.backend.family

    # ------------------------------------------------------------------------------------------- parsing
    def parse(self, body: Any) -> ApiRequest:
        """Every check of a request body, before any work (see the module docstring)."""
        if not isinstance(body, dict):
            raise ApiError(f"body: expected a JSON object, got {type(body).__name__}", None)
        unknown = [k for k in body if k not in FIELDS]
        if unknown:
            raise ApiError(f"{unknown[0]}: unknown field; valid: {', '.join(FIELDS)}", unknown[0])
        model = body.get("model")
        if model is not None and model != self.model_id:
            raise ApiError(f"model: unknown model {model!r}; this server serves {self.model_id!r} "
                           f"(GET /v1/models)", "model", code="model_not_found")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            what = "class names or ids such as 'sneaker,bag' or '7'" if not self.family.takes_prompt else \
                "a description of the image"
            raise ApiError(f"prompt: required, {what}; got {prompt!r}", "prompt")
        n = _int(body, "n", 1, self.limits.max_batch)
        _choice(body, "response_format", ("b64_json",), "b64_json")
        output_format = _choice(body, "output_format", tuple(OUTPUT_FORMATS), "png")
        compression = _int(body, "output_compression", 0, 100)
        _choice(body, "background", ("auto", "opaque"), "auto")
        stream = _bool(body, "stream")
        partial = _int(body, "partial_images", 0, self.max_partial_images) or 0
        previews = _bool(body, "previews")
        seed = _int(body, "seed", 0)
        seed = secrets.randbelow(2 ** 31) if seed is None else seed
        deadline_ms = body.get("deadline_ms")
        if deadline_ms is not None:
            top = self.limits.max_deadline * 1000
            if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, (int, float)) \
                    or not math.isfinite(deadline_ms) or not 0 < deadline_ms <= top:
                raise ApiError(f"deadline_ms: must be a number of milliseconds in (0, {top:g}], got "
                               f"{deadline_ms!r}", "deadline_ms")
        for name in ("nfe", "first", "outer_steps", "inner_steps", "max_nfe"):
            _int(body, name, 1)
        for name in ("schedule", "solver", "negative_prompt"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise ApiError(f"{name}: must be a string, got {body[name]!r}", name)
        g = body.get("guidance_scale")
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float))):
            raise ApiError(f"guidance_scale: must be a number ≥ 0, got {g!r}", "guidance_scale")
        job = JobRequest(seed=seed, guidance=g, **{k: body.get(k) for k in RUN_FIELDS})
        size = self._condition(job, body, prompt, n)
        try:
            prepared = self.backend.prepare(job, self.limits)
        except (ValueError, TypeError) as e:
            raise backend_error(e) from None
        adapt = deadline_ms is not None and all(body.get(k) is None for k in RUN_FIELDS if k != "max_nfe")
        return ApiRequest(job, prepared, prepared.batch, size, output_format, compression, stream, partial,
                          previews, None if deadline_ms is None else deadline_ms / 1000.0, adapt)

    def _condition(self, job: JobRequest, body: dict, prompt: str, n: int | None) -> str:
        """Sets the job's conditioning from prompt / n / size / negative_prompt; returns the size string."""
        size = body.get("size", "auto") or "auto"
        if not isinstance(size, str):
            raise ApiError(f"size: must be a string WIDTHxHEIGHT or 'auto', got {size!r}", "size")
        if not self.family.takes_prompt:
            if body.get("negative_prompt"):
                raise ApiError(f"negative_prompt: the {self.model_id} model is class-conditioned (prompt = class "
                               f"names); it takes no negative prompt", "negative_prompt")
            side = self._native_side()
            native = "auto" if side is None else f"{side}x{side}"
            if size not in ("auto", native):
                valid = "auto" if side is None else f"{native}, auto"
                raise ApiError(f"size: {size!r} is not available; the {self.model_id} model makes images of its own "
                               f"size (valid: {valid})", "size")
            classes = self._classes(prompt)
            if n is not None and len(classes) > 1 and n != len(classes):
                raise ApiError(f"n: {n} images for the {len(classes)} classes of the prompt; give n={len(classes)} "
                               f"(one image per class) or a prompt of one class", "n")
            job.classes = classes * (n or 1) if len(classes) == 1 else classes
            if len(job.classes) > self.limits.max_batch:
                raise ApiError(f"n: {len(job.classes)} images requested; this server allows 1 to "
                               f"{self.limits.max_batch} per request", "n")
            return native
        if n not in (None, 1):
            raise ApiError(f"n: this server makes one image per request for the {self.model_id} model; got {n}", "n")
        job.prompt, job.negative_prompt = prompt, body.get("negative_prompt") or ""
        if size != "auto":
            m = re.fullmatch(r"(\d+)x(\d+)", size)
            if not m:
                raise ApiError(f"size: {size!r} is not WIDTHxHEIGHT (e.g. 512x512) or auto", "size")
            job.width, job.height = int(m.group(1)), int(m.group(2))
        return size

    def _classes(self, prompt: str) -> list:
        labels = getattr(self.backend, "pipe", None) is not None
        if not labels:
            from ..bundled import parse_classes
            try:
                return parse_classes(prompt)
            except ValueError as e:
                raise backend_error(e) from None
        return [s.strip() for s in prompt.split(",") if s.strip()]

    def _native_side(self) -> int:
        pipe = getattr(self.backend, "pipe", None)
        return None if pipe is not None else int(self.backend.model.config.get("image_size", 28))

    # ------------------------------------------------------------------------------------------- admission
    def submit(self, request: ApiRequest, sink: Callable[[dict], None]) -> Ticket:
        """Admit a checked request: it runs now, or waits for a free seat; ``QueueFull`` when the queue is full."""
        ticket = Ticket(request, sink)
        with self._cv:
            if len(self._running) >= self.max_active and len(self._waiting) >= self.max_queue:
                raise QueueFull(self.retry_after(), len(self._waiting))
            self._waiting.append(ticket)
            ticket.member.name = f"request-{id(ticket):x}"
        ticket.thread = threading.Thread(target=self._work, args=(ticket,), name="nested-diffusion-api", daemon=True)
        ticket.thread.start()
        return ticket

    def retry_after(self) -> int:
        """Seconds until a seat is likely free: the mean run time × the waiting requests per seat (≥ 1 s)."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(mean * (len(self._waiting) + 1) / self.max_active))

    def cancel(self, ticket: Ticket) -> None:
        """The client is gone: the run leaves the batch (within one model call) and its result is dropped."""
        with self._cv:
            ticket.cancelled = True
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            self._cv.notify_all()
        if self.batching is not None:
            self.batching.cancel(ticket.member)

    def load(self) -> dict:
        with self._cv:
            return {"running": len(self._running), "waiting": len(self._waiting)}

    def _seat(self, ticket: Ticket) -> bool:
        with self._cv:
            while not ticket.cancelled and (len(self._running) >= self.max_active or self._waiting[0] is not ticket):
                self._cv.wait()
            if ticket.cancelled:
                return False
            self._waiting.popleft()
            self._running.add(ticket)
            ticket.started = time.monotonic()
            return True

    def _unseat(self, ticket: Ticket) -> None:
        with self._cv:
            self._running.discard(ticket)
            if ticket.started is not None:
                self._durations.append(time.monotonic() - ticket.started)
            self._cv.notify_all()

    # ------------------------------------------------------------------------------------------- schedule
    def pick_schedule(self, req: ApiRequest) -> Prepared:
        """The rule for ``deadline_ms`` without schedule fields, applied when the run starts:

        N = ⌊0.8 × (time left to the deadline) / (seconds per model call)⌋, where the seconds per call are
        measured at the current load (batched: the fitted call time at the rows of every running request plus
        this one; one-at-a-time pipelines: the measured seconds per NFE). N ≥ the family default's NFE: the
        default. 3 ≤ N: the progressive schedule with budget N and quick runs of min(the default's first inner
        run, ⌊N/3⌋) steps (so the first finished image needs at most a third of the time left). N < 3: one inner
        run of max(N, 1) steps. With no timing yet, the default."""
        prep = req.prepared
        left = req.deadline_s - (time.monotonic() - req.arrived)
        per_call = self.seconds_per_call(prep)
        if per_call is None or left <= 0:
            return prep
        n = int(SAFETY * left / per_call)
        if n >= prep.total_nfe:
            return prep
        if n >= 3:
            first = max(1, min(int(prep.run.inner_steps[0]), n // 3))
            job = replace(req.job, schedule="progressive", nfe=n, first=first)
        else:
            job = replace(req.job, outer_steps=1, inner_steps=max(n, 1))
        try:
            return self.backend.prepare(job, self.limits)
        except (ValueError, TypeError):
            return prep

    def seconds_per_call(self, prep: Prepared) -> float | None:
        if self.batching is not None:
            rows = prep.batch * (1 if prep.guidance == 1.0 else 2)
            return self.batching.call_seconds(self.batching.active_rows() + rows)
        if not self._nfe_seconds:
            return None
        return sum(self._nfe_seconds) / len(self._nfe_seconds)

    # ------------------------------------------------------------------------------------------- running
    def _work(self, ticket: Ticket) -> None:
        try:
            if not self._seat(ticket):
                return
            try:
                self._run(ticket)
            finally:
                self._unseat(ticket)
        except RunCancelled:
            pass
        except ApiError as e:
            ticket.sink({"type": "error", "error": e})
        except Exception as e:  # noqa: BLE001 — the client gets a message, never a traceback
            if not ticket.cancelled:
                ticket.sink({"type": "error", "error": ApiError(f"generation failed: {type(e).__name__}: {e}",
                                                                None, 500, "server_error")})

    def _run(self, ticket: Ticket) -> None:
        req = ticket.request
        deadline_at = None if req.deadline_s is None else req.arrived + req.deadline_s
        seen = {"any": False}

        def stop() -> bool:
            return ticket.cancelled or (deadline_at is not None and seen["any"] and time.monotonic() >= deadline_at)

        finished = latest = None          # (update, monotonic time) of the last finished run / last update
        first_finished_at = None
        last_state = "running"
        lock = self.backend.lock if getattr(self.backend, "exclusive", False) else None
        if lock is not None:
            lock.acquire()
        try:
            prep = self.pick_schedule(req) if req.adapt else req.prepared
            sent = [0] * prep.batch
            if self.batching is not None:
                self.batching.join(ticket.member)
            try:
                for u in stream_updates(self.backend, prep, stop):
                    now = time.monotonic()
                    seen["any"] = True
                    if u.state != "running":
                        last_state = u.state
                        spent = u.spent
                        break
                    in_time = deadline_at is None or now <= deadline_at
                    if u.source == INNER_RESULT:
                        if in_time or finished is None and latest is None:
                            finished = (u, now)
                        if first_finished_at is None:
                            first_finished_at = now
                        if req.stream and not u.final and (u.outer_step - 1) < req.partial_images:
                            self._partials(ticket, u, sent, prep, req)
                    else:
                        if req.stream and req.previews:
                            self._partials(ticket, u, sent, prep, req)
                    if in_time or latest is None:
                        latest = (u, now)
                else:
                    spent = latest[0].spent if latest else 0
            finally:
                if self.batching is not None:
                    self.batching.leave(ticket.member)
            nfe_total = prep.total_nfe
            if lock is not None and latest is not None and ticket.started is not None:
                self._nfe_seconds.append((time.monotonic() - ticket.started) / max(1, spent))
        finally:
            if lock is not None:
                lock.release()
        if ticket.cancelled:
            return
        if latest is None:
            raise ApiError("deadline_ms: passed before the first model call finished; no image", "deadline_ms",
                           408, code="deadline_exceeded")
        u, at = finished if finished is not None else latest
        stats = self._stats(u, prep, req, ticket)
        stats.update(finished=u.source == INNER_RESULT, state=last_state, nfe_spent=spent,
                     cut=last_state != "done", cut_at_nfe=None if last_state == "done" else spent,
                     deadline_met=None if deadline_at is None else bool(finished is not None and at <= deadline_at),
                     time_to_first_finished_ms=None if first_finished_at is None else
                     round((first_finished_at - req.arrived) * 1000, 1),
                     elapsed_ms=round((time.monotonic() - req.arrived) * 1000, 1), nfe_total=nfe_total)
        images = [encode(img, req.output_format, req.compression) for img in u.images]
        ticket.sink({"type": "done", "images": images, "stats": stats, "size": size_of(u.images[0])})

    def _stats(self, u: Any, prep: Prepared, req: ApiRequest, ticket: Ticket) -> dict:
        return {"seed": prep.seeds[0], "nfe": u.nfe, "nfe_spent": u.spent, "nfe_total": u.total_nfe,
                "outer_step": u.outer_step, "outer_steps": u.outer_steps, "source": u.source,
                "expected_change": u.expected_change, "schedule": prep.run.describe(),
                "deadline_ms": None if req.deadline_s is None else req.deadline_s * 1000,
                "elapsed_ms": round((time.monotonic() - req.arrived) * 1000, 1)}

    def _partials(self, ticket: Ticket, u: Any, sent: list, prep: Prepared, req: ApiRequest) -> None:
        stats = self._stats(u, prep, req, ticket)
        stats["finished"] = u.source == INNER_RESULT
        for i, img in enumerate(u.images):
            event = {"type": "image_generation.partial_image",
                     "b64_json": encode(img, req.output_format, req.compression),
                     "created_at": int(time.time()), "size": size_of(img), "quality": "auto", "background": "opaque",
                     "output_format": req.output_format, "partial_image_index": sent[i], "image_index": i,
                     **stats, "seed": prep.seeds[i]}
            sent[i] += 1
            ticket.sink(event)


def size_of(image: Any) -> str:
    """'WIDTHxHEIGHT' of an (H, W, 3) image."""
    return f"{image.shape[1]}x{image.shape[0]}"


def encode(image: Any, output_format: str, compression: int | None = None) -> str:
    """(H, W, 3) uint8 → base64 of the image file (PNG lossless; JPEG/WebP at ``compression`` quality)."""
    from PIL import Image
    buf = io.BytesIO()
    kw = {} if output_format == "png" or compression is None else {"quality": int(compression)}
    Image.fromarray(image).save(buf, format=OUTPUT_FORMATS[output_format], **kw)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def response_events(done: dict, req: ApiRequest, prep_seeds: list) -> list[dict]:
    """The ``image_generation.completed`` events of a finished request (one per image)."""
    out = []
    for i, b64 in enumerate(done["images"]):
        out.append({"type": "image_generation.completed", "b64_json": b64, "created_at": int(time.time()),
                    "size": done["size"], "quality": "auto", "background": "opaque", "output_format": req.output_format,
                    "usage": {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
                              "output_tokens": 0, "total_tokens": 0},
                    "image_index": i, **done["stats"], "seed": prep_seeds[i]})
    return out


def response_body(done: dict, req: ApiRequest, prep_seeds: list) -> dict:
    """The non-streaming ``ImagesResponse``."""
    return {"created": int(time.time()), "background": "opaque", "output_format": req.output_format,
            "quality": "auto", "size": done["size"],
            "data": [{"b64_json": b64, "seed": prep_seeds[i]} for i, b64 in enumerate(done["images"])],
            **{k: v for k, v in done["stats"].items() if k != "seed"}}


class BatchedBundledBackend(BundledBackend):
    """The bundled backend whose runs call the network through a shared ``BatchingModel`` (everything else —
    prepare, calibrations, open — is ``BundledBackend``'s)."""

    def __init__(self, base: BundledBackend, batching: BatchingModel):  # noqa: D107 — shares base's state
        self.__dict__.update(base.__dict__)
        self.batching = batching

    def sampler(self, run):
        from ..bundled import make_denoiser
        try:
            return NestedSampler.from_run(make_denoiser(self.batching, run.guidance), run)
        except ValueError as e:
            raise option_error(e, FIELD_NAMES) from None
