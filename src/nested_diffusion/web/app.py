"""The Gradio demo (optional extra ``[demo]``): watch the image improve, stop when it is good enough.

One page for every family of the model-family table (the bundled model and every pipeline family): the inputs
follow the family's conditioning (classes, or prompt + negative prompt + size) and the run controls start at the
family's run defaults (``Family.run_defaults()``: bundled ramp at 100 NFE, guidance 1.25; SD uniform 5 × 20
…). The schedule control shows the controls that apply to it: an NFE budget (and ``first``) for a named schedule
such as progressive, outer × inner steps for uniform; the hidden ones are not sent to the run. The generate
handler is an async generator over a ``Job`` (``web.stream``); Stop is a ``queue=False`` handler keyed by the
Gradio session hash (soft stop: the image shown is the result, within one model call), closing the tab (the
session's unload) cancels the job. Cancel is a ``queue=False`` handler too: it cancels the session's job — or,
pressed before the job started (Generate first announces its job to the board, then the queued generate runs),
the job as it starts — and the generate stream itself then ends with "Cancelled" (no picture). The stream is the
only writer of the outputs, so nothing of a cancelled run can land after that message; Gradio's ``cancels=``
(killing the handler task from the page) is not used: it raced the stream's last messages and left stale
pictures and red error badges. Offline by construction:
analytics off, no share tunnel, the default theme (bundled fonts), bound to 127.0.0.1 unless told otherwise.

The "Expected change" line shows, per image, the predicted remaining change and its wording when a calibration
matches the job's configuration, and says "no calibration for this configuration" otherwise.

API inputs (``gradio_client``, "Use via API"): the conditioning fields, seed, schedule, nfe, first, outer steps,
inner steps, solver, guidance, NFE budget, deadline, then the vanilla toggle; 0 / empty means the family's
default. While nothing new is produced the handler sends an empty update (every ``HEARTBEAT_S``) so that a
vanished client is noticed within that time.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402

from ..core.events import INNER_RESULT  # noqa: E402
from ..core.registry import solver_names  # noqa: E402
from ..core.schedules import SCHEDULES, schedule_names  # noqa: E402
from ..io import atomic_write_bytes  # noqa: E402
from .backends import JobRequest, Limits  # noqa: E402
from .render import gif_bytes, progression_strip  # noqa: E402
from .stream import Job, JobBoard, WebUpdate  # noqa: E402

FIT = "#nd-image img, #nd-vanilla img, #nd-strip img { width: 100% !important; height: 100% !important; " \
      "object-fit: contain; }"                                   # pictures fill their boxes
PIXELATED = FIT + " #nd-image img, #nd-vanilla img, #nd-strip img { image-rendering: pixelated; }"  # 28×28: crisp
HEARTBEAT_S = 0.25  # longest wait without a message to the page (a lost client is noticed at the next one)
# x̂0 previews arrive every model call (≈ 15 ms on the bundled model): the page shows the latest one at most every
# PREVIEW_FRAME_S (≤ 12 frames/s), so Gradio's per-message work does not slow the sampler (measured: 0.81× the bare
# API's speed with a message per update on 2 cores, benchmarks/web_latency.py)
PREVIEW_FRAME_S = 0.08
ABOUT = ("**Nested Diffusion** (Elata et al., WACV 2024) runs a complete inner diffusion as the denoiser of each "
         "outer step, so a finished image exists after every inner run. Watch it improve; press **Stop** when it "
         "is good enough (the image shown is kept), **Cancel** to discard.")
UNIFORM_ONLY, NAMED_ONLY = ("outer_steps", "inner_steps"), ("nfe", "first")
CANCELLED = "Cancelled: the result was discarded."
BAD_INPUT = "Bad input"


def image_px(backend: Any) -> int:
    """Display height of the current/vanilla pictures."""
    if backend.family.is_bundled:
        return 260
    return 420 if backend.family.takes_prompt else 320


def first_default(schedule: str = "progressive") -> int | None:
    """A named schedule's steps of its first quick run when ``first`` is left empty (its builder's default in
    ``core.schedules``); None for a schedule without quick runs."""
    p = inspect.signature(SCHEDULES[schedule]).parameters.get("first")
    return None if p is None else int(p.default)


def _inputs(backend: Any, limits: Limits) -> list[tuple[str, Any]]:
    """(JobRequest field, component) for the backend's page; built inside the Blocks context. The run controls
    start at the family's defaults."""
    family = backend.family
    d = family.run_defaults()
    uniform = d.schedule == "uniform"
    outer0 = min(d.outer_steps, slider_max(limits, "outer_steps", 1))
    inner0 = min(d.inner_steps, slider_max(limits, "inner_steps", outer0))
    outer_max = slider_max(limits, "outer_steps", inner0)
    fields: list[tuple[str, Any]] = []
    if family.is_bundled:
        from ..bundled.data import CLASS_NAMES
        fields.append(("classes", gr.Dropdown(list(CLASS_NAMES), value=["Sneaker", "Bag", "Dress", "Ankle boot"],
                                              multiselect=True, label=f"Classes (up to {limits.max_batch})",
                                              elem_id="nd-classes")))
    elif not family.takes_prompt:
        fields.append(("classes", gr.Textbox("0,1", label="Class labels (ids or names, comma-separated)",
                                             elem_id="nd-classes")))
    else:
        fields += [("prompt", gr.Textbox("a photo of a cat", label="Prompt", elem_id="nd-prompt")),
                   ("negative_prompt", gr.Textbox("", label="Negative prompt")),
                   ("height", gr.Number(0, precision=0, label=f"Height (0 = model default, ≤ {limits.max_size})")),
                   ("width", gr.Number(0, precision=0, label=f"Width (0 = model default, ≤ {limits.max_size})"))]
    fields += [
        ("seed", gr.Number(0, minimum=0, step=1, label="Seed (a whole number; image i uses seed + i)",
                           elem_id="nd-seed")),    # no precision=0: it would round 2.5 silently; prepare refuses it
        ("schedule", gr.Dropdown(schedule_names(), value=d.schedule, elem_id="nd-schedule",
                                 label="Schedule (progressive: two quick inner runs, then one long one, within the "
                                       "NFE budget; ramp: the same with quick runs that double; uniform: outer × "
                                       "inner steps)")),
        ("nfe", gr.Number(d.nfe, precision=0, visible=not uniform, elem_id="nd-nfe",
                          label=f"NFE budget of the schedule (inner steps in total, ≤ {limits.max_nfe})")),
        ("first", gr.Number(first_default(d.schedule) or first_default(), precision=0,
                            visible=first_default(d.schedule) is not None, elem_id="nd-first",
                            label="Steps of the first quick inner run (progressive: of each; ramp: then doubling)")),
        ("outer_steps", gr.Slider(1, outer_max, outer0, step=1, label="Outer steps", visible=uniform,
                                  elem_id="nd-outer")),
        ("inner_steps", gr.Slider(1, slider_max(limits, "inner_steps", outer0), inner0, step=1,
                                  label="Inner steps per outer step", visible=uniform, elem_id="nd-inner")),
        ("solver", gr.Dropdown(list(solver_names(family.kind)), value=d.inner_solver, label="Inner solver")),
        ("guidance", gr.Number(family.guidance_default(), label="Guidance scale (inner process)")),
        ("max_nfe", gr.Number(0, precision=0, label="Stop at NFE (0 = run to the end)", elem_id="nd-budget")),
        ("deadline", gr.Number(0, label="Deadline in seconds (0 = none)", elem_id="nd-deadline")),
    ]
    return fields


def slider_max(limits: Limits, name: str, other: int) -> int:
    """The largest value of the outer (``name`` "outer_steps") or inner slider that the server's ``Limits``
    accept with the other slider at ``other``: its own cap and outer × inner ≤ max_nfe (the page moves the
    maxima as the other slider moves, so the sliders never offer a split the server always refuses)."""
    own = limits.max_outer_steps if name == "outer_steps" else limits.max_inner_steps
    return max(1, min(own, limits.max_nfe // max(1, int(other or 1))))


def _request(names: list[str], values: list[Any], vanilla: bool) -> JobRequest:
    """The page's values as a request: the controls the chosen schedule hides are not sent (a uniform split's
    outer × inner with a named schedule, or its NFE budget and first with uniform)."""
    data = dict(zip(names, values))
    if "seed" in data and data["seed"] is None:
        raise ValueError("seed: empty; enter a whole number ≥ 0")
    schedule = data.get("schedule")
    if schedule:
        for name in (NAMED_ONLY if schedule == "uniform" else UNIFORM_ONLY):
            data[name] = None
    return JobRequest(**data, vanilla=bool(vanilla))


class DemoHandlers:
    """The page's event handlers over a ``JobBoard`` keyed by session hash."""

    def __init__(self, backend: Any, limits: Limits, names: list[str], gif_dir: Path):
        self.backend, self.limits, self.names, self.gif_dir = backend, limits, names, gif_dir
        self.board = JobBoard()

    def _outputs(self, u: WebUpdate, final: bool, job: Job | None = None, key: str = "local") -> tuple:
        change = u.expected_change or ""
        if not final:
            return u.image, u.vanilla, u.status(), change, gr.skip(), gr.skip()
        frames = job.frames if job is not None else [u.images]
        strip = progression_strip(frames, max(1, self.backend.scale // 2))
        gif = self.gif_dir / f"progression-{''.join(ch for ch in key if ch.isalnum())[:32] or 'local'}.gif"
        atomic_write_bytes(gif, gif_bytes(frames, self.backend.scale))
        return u.image, u.vanilla, u.status(), change, strip, str(gif)

    async def generate(self, request: gr.Request, *values: Any):
        """Inputs: the backend's fields in page order, then the vanilla toggle (Gradio injects ``request``)."""
        key = request.session_hash
        try:
            job = Job(self.backend, _request(self.names, list(values[:-1]), values[-1]), self.limits)
        except (ValueError, TypeError) as e:
            self.board.withdraw(key)
            # Gradio 6 titles a pop-up by its kind ("Error") and ignores title=: the message says it itself
            raise gr.Error(f"{BAD_INPUT}: {e}", title=BAD_INPUT, print_exception=False)
        self.board.start(key, job)
        seq = 0
        try:
            yield None, None, "Starting…", "", None, None
            while not job.done:
                seq, u = await asyncio.to_thread(job.next_update, seq, HEARTBEAT_S)
                if u is None:         # nothing new: an empty message, so a vanished client is noticed now
                    yield (gr.skip(),) * 6
                elif u.state == "running":
                    yield self._outputs(u, False)
                    if u.source != INNER_RESULT:   # coalesce fast x̂0 previews; a finished inner run shows at once
                        await asyncio.sleep(PREVIEW_FRAME_S)
            if job.state == "cancelled":
                yield None, None, CANCELLED, "", None, None
                return
            if job.state == "failed":
                raise gr.Error(f"The job failed: {job.error}", title="Generation failed", print_exception=False)
            if job.result is not None:
                yield self._outputs(job.result, True, job, key)
        finally:
            self.board.forget(key, job)   # Cancel, a closed tab or a lost client end the job here

    def stop(self, request: gr.Request) -> None:
        self.board.stop(request.session_hash)

    def announce(self, request: gr.Request) -> None:
        """Generate was pressed: a Cancel from now on applies to the job this request makes (even before it
        starts)."""
        self.board.announce(request.session_hash)

    def cancel(self, request: gr.Request) -> None:
        """Cancel the session's job (running or announced); its stream ends with ``CANCELLED``."""
        self.board.cancel(request.session_hash)

    def unload(self, request: gr.Request) -> None:
        self.board.forget(request.session_hash)


def build_app(backend: Any, limits: Limits | None = None, concurrency: int = 2, queue_size: int = 32,
              title: str = "Nested Diffusion: anytime generation") -> gr.Blocks:
    """The Blocks app for ``backend`` (``web.backends``); launch it with ``launch_app``."""
    limits = limits or Limits()
    gif_dir = Path(tempfile.mkdtemp(prefix="nested-diffusion-gifs-"))
    px = image_px(backend)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(f"## {title}\n{backend.family.description[:1].upper()}{backend.family.description[1:]}. "
                    f"{ABOUT}")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                fields = _inputs(backend, limits)
                vanilla = gr.Checkbox(False, label="Show vanilla sampling at the same NFE", elem_id="nd-vanilla-on")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="nd-generate")
                    stop = gr.Button("Stop", variant="secondary", elem_id="nd-stop")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="nd-cancel")
            with gr.Column(scale=2):
                image = gr.Image(label="Nested diffusion (current result)", format="png", interactive=False,
                                 height=px, elem_id="nd-image")
                van_img = gr.Image(label="Vanilla sampling at the same NFE (its x̂0 preview)", format="png",
                                   interactive=False, visible=False, height=px, elem_id="nd-vanilla")
                status = gr.Markdown("Press **Generate**.", elem_id="nd-status")
                change = gr.Markdown("", elem_id="nd-change")
                gr.Markdown("**Progression** (rows: images, columns: anytime results)", elem_id="nd-strip-label")
                strip = gr.Image(show_label=False, format="png", interactive=False, height=px + 140,
                                 elem_id="nd-strip")   # the label above, not over the edge thumbnails
                gif = gr.File(label="Progression GIF", interactive=False, elem_id="nd-gif")
        h = DemoHandlers(backend, limits, [n for n, _ in fields], gif_dir)
        demo.nd_handlers = h          # for tests and embedding code
        demo.nd_gif_dir = gif_dir
        demo.nd_css = PIXELATED if backend.family.is_bundled else FIT
        outputs = [image, van_img, status, change, strip, gif]
        run.click(h.announce, None, None, queue=False, api_name=False).then(
            h.generate, [c for _, c in fields] + [vanilla], outputs, api_name="generate",
            concurrency_limit=concurrency, concurrency_id="generate", show_progress="minimal")
        stop.click(h.stop, None, None, queue=False, api_name="stop")
        cancel.click(h.cancel, None, None, queue=False, api_name="cancel")
        vanilla.change(lambda v: gr.update(visible=bool(v)), vanilla, van_img, queue=False, api_name=False)
        by_name = dict(fields)
        toggled = [by_name[n] for n in NAMED_ONLY + UNIFORM_ONLY]
        by_name["schedule"].change(schedule_controls, by_name["schedule"], toggled, queue=False, api_name=False)
        outer, inner = by_name["outer_steps"], by_name["inner_steps"]
        outer.change(lambda o: gr.update(maximum=slider_max(limits, "inner_steps", o)), outer, inner, queue=False,
                     api_name=False)
        inner.change(lambda i: gr.update(maximum=slider_max(limits, "outer_steps", i)), inner, outer, queue=False,
                     api_name=False)
        demo.unload(h.unload)
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    return demo


def schedule_controls(schedule: str) -> tuple:
    """Visibility of (nfe, first, outer, inner) for a schedule: the NFE budget for a named schedule (first, at
    the schedule's own default, for one with quick runs), the outer × inner split for uniform."""
    uniform, first = schedule == "uniform", first_default(schedule) if schedule in SCHEDULES else None
    return (gr.update(visible=not uniform), gr.update(visible=first is not None, value=first),
            gr.update(visible=uniform), gr.update(visible=uniform))


def launch_app(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
               quiet: bool = False) -> Any:
    """Serve offline: no share tunnel, no server-side rendering, no MCP, files only from the GIF folder."""
    return demo.launch(server_name=host, server_port=port, share=False, show_error=False, ssr_mode=False,
                       pwa=False, mcp_server=False, allowed_paths=[str(demo.nd_gif_dir)],
                       prevent_thread_lock=not block, quiet=quiet, css=demo.nd_css)
