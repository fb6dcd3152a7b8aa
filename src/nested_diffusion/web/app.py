"""The Gradio demo (optional extra ``[demo]``): watch the image improve, stop when it is good enough.

One page for every backend (bundled model, Nested SD, Nested DiT): the generate handler is an async generator
over a ``Job`` (``web.stream``); Stop is a ``queue=False`` handler keyed by the Gradio session hash (soft stop:
the image shown is the result, within one model call), Cancel uses ``cancels=`` and discards the result, closing
the tab (the session's unload) cancels the job. Offline by construction: analytics off, no share tunnel, the
default theme (bundled fonts), bound to 127.0.0.1 unless told otherwise.

The "Schedule" choice is the last API input (after the vanilla toggle), so clients that omit it get its default
("uniform": the outer/inner sliders as set); "progressive" spends the same outer × inner NFE as two short inner
runs, then one long one (``core.schedules``).

API clients (``gradio_client``, "Use via API") see the same stream; while nothing new is produced the handler sends
an empty update (every ``HEARTBEAT_S``) so that a vanished client is noticed within that time.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402

from ..core.registry import solver_names  # noqa: E402
from ..core.schedules import schedule_names  # noqa: E402
from ..io import atomic_write_bytes  # noqa: E402
from .backends import JobRequest, Limits  # noqa: E402
from .render import gif_bytes, progression_strip  # noqa: E402
from ..core.events import INNER_RESULT  # noqa: E402
from .stream import Job, JobBoard, WebUpdate  # noqa: E402

FIT = "#nd-image img, #nd-vanilla img, #nd-strip img { width: 100% !important; height: 100% !important; " \
      "object-fit: contain; }"                                   # pictures fill their boxes
PIXELATED = FIT + " #nd-image img, #nd-vanilla img, #nd-strip img { image-rendering: pixelated; }"  # 28×28: crisp
IMAGE_PX = {"bundled": 260, "sd": 420, "dit": 320}   # display height of the current/vanilla pictures
HEARTBEAT_S = 0.25  # longest wait without a message to the page (a lost client is noticed at the next one)
# x̂0 previews arrive every model call (≈ 15 ms on the bundled model): the page shows the latest one at most every
# PREVIEW_FRAME_S (≤ 12 frames/s), so Gradio's per-message work does not slow the sampler (measured: 0.81× the bare
# API's speed with a message per update on 2 cores, benchmarks/web_latency.py)
PREVIEW_FRAME_S = 0.08
INTRO = {
    "bundled": "Class-conditional Fashion-MNIST (the bundled 28×28 model).",
    "sd": "Text-to-image with Nested Stable Diffusion.",
    "dit": "Class-conditional generation with Nested DiT.",
}
ABOUT = ("**Nested Diffusion** (Elata et al., WACV 2024) runs a complete inner diffusion as the denoiser of each "
         "outer step, so a finished image exists after every inner run. Watch it improve; press **Stop** when it "
         "is good enough (the image shown is kept), **Cancel** to discard.")


def _inputs(kind: str, backend: Any, limits: Limits) -> list[tuple[str, Any]]:
    """(JobRequest field, component) for the backend's page; built inside the Blocks context."""
    fields: list[tuple[str, Any]] = []
    if kind == "bundled":
        from ..bundled.data import CLASS_NAMES
        fields.append(("classes", gr.Dropdown(list(CLASS_NAMES), value=["Sneaker", "Bag", "Dress", "Ankle boot"],
                                              multiselect=True, label=f"Classes (up to {limits.max_batch})",
                                              elem_id="nd-classes")))
    elif kind == "dit":
        fields.append(("classes", gr.Textbox("0,1", label="Class labels (ids or names, comma-separated)",
                                             elem_id="nd-classes")))
    else:
        fields += [("prompt", gr.Textbox("a photo of a cat", label="Prompt", elem_id="nd-prompt")),
                   ("negative_prompt", gr.Textbox("", label="Negative prompt")),
                   ("height", gr.Number(0, precision=0, label=f"Height (0 = model default, ≤ {limits.max_size})")),
                   ("width", gr.Number(0, precision=0, label=f"Width (0 = model default, ≤ {limits.max_size})"))]
    fields += [
        ("seed", gr.Number(0, precision=0, label="Seed (image i uses seed + i)", elem_id="nd-seed")),
        ("outer_steps", gr.Slider(1, limits.max_outer_steps, 5, step=1, label="Outer steps", elem_id="nd-outer")),
        ("inner_steps", gr.Slider(1, limits.max_inner_steps, 20, step=1, label="Inner steps per outer step",
                                  elem_id="nd-inner")),
        ("solver", gr.Dropdown(list(solver_names()), value=backend.default_solver, label="Inner solver")),
        ("guidance", gr.Number(backend.default_guidance, label="Guidance scale (inner process)")),
        ("max_nfe", gr.Number(0, precision=0, label="NFE budget (0 = none)", elem_id="nd-budget")),
        ("deadline", gr.Number(0, label="Deadline in seconds (0 = none)", elem_id="nd-deadline")),
    ]
    return fields


def _schedule_input(default: str = "progressive") -> Any:
    """The schedule choice: progressive (the page's default, as for ``generate``) spends the sliders' outer × inner
    NFE as two quick runs then one long one; uniform = the outer/inner sliders as set."""
    return gr.Dropdown(schedule_names(), value=default, elem_id="nd-schedule",
                       label="Schedule (uniform: outer × inner as set; progressive: the same outer × inner NFE as "
                             "20 + 20 inner steps, then one long run)")


def _request(names: list[str], values: list[Any], vanilla: bool, schedule: str | None = None) -> JobRequest:
    data = dict(zip(names, values))
    if "seed" in data and data["seed"] is None:
        raise ValueError("seed: enter a whole number ≥ 0")
    return JobRequest(**data, vanilla=bool(vanilla), schedule=schedule or "uniform")


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
        """Inputs: the backend's fields in page order, then the vanilla toggle and the schedule (Gradio injects
        ``request``)."""
        key = request.session_hash
        try:
            job = Job(self.backend, _request(self.names, list(values[:-2]), values[-2], values[-1]), self.limits)
        except (ValueError, TypeError) as e:
            raise gr.Error(str(e), title="Bad input", print_exception=False)
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
            if job.state == "failed":
                raise gr.Error(f"The job failed: {job.error}", title="Generation failed", print_exception=False)
            if job.result is not None:
                yield self._outputs(job.result, True, job, key)
        finally:
            self.board.forget(key, job)   # Cancel, a closed tab or a lost client end the job here

    def stop(self, request: gr.Request) -> None:
        self.board.stop(request.session_hash)

    def cancel(self, request: gr.Request) -> tuple:
        self.board.cancel(request.session_hash)
        return None, None, "Cancelled: the result was discarded.", "", None, None

    def unload(self, request: gr.Request) -> None:
        self.board.forget(request.session_hash)


def build_app(backend: Any, limits: Limits | None = None, concurrency: int = 2, queue_size: int = 32,
              title: str = "Nested Diffusion: anytime generation") -> gr.Blocks:
    """The Blocks app for ``backend`` (``web.backends``); launch it with ``launch_app``."""
    limits = limits or Limits()
    gif_dir = Path(tempfile.mkdtemp(prefix="nested-diffusion-gifs-"))
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(f"## {title}\n{INTRO[backend.kind]} {ABOUT}")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                fields = _inputs(backend.kind, backend, limits)
                # the bundled page starts where `generate` does; the pipelines' pages at their uniform split
                schedule = _schedule_input("progressive" if backend.kind == "bundled" else "uniform")
                vanilla = gr.Checkbox(False, label="Show vanilla sampling at the same NFE", elem_id="nd-vanilla-on")
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="nd-generate")
                    stop = gr.Button("Stop", variant="secondary", elem_id="nd-stop")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="nd-cancel")
            with gr.Column(scale=2):
                image = gr.Image(label="Nested diffusion (current result)", format="png", interactive=False,
                                 height=IMAGE_PX[backend.kind], elem_id="nd-image")
                van_img = gr.Image(label="Vanilla sampling at the same NFE (its x̂0 preview)", format="png",
                                   interactive=False, visible=False, height=IMAGE_PX[backend.kind],
                                   elem_id="nd-vanilla")
                status = gr.Markdown("Press **Generate**.", elem_id="nd-status")
                change = gr.Markdown("", elem_id="nd-change")
                strip = gr.Image(label="Progression (rows: images, columns: anytime results)", format="png",
                                 interactive=False, height=IMAGE_PX[backend.kind] + 140, elem_id="nd-strip")
                gif = gr.File(label="Progression GIF", interactive=False, elem_id="nd-gif")
        h = DemoHandlers(backend, limits, [n for n, _ in fields], gif_dir)
        demo.nd_handlers = h          # for tests and embedding code
        demo.nd_gif_dir = gif_dir
        demo.nd_css = PIXELATED if backend.kind == "bundled" else FIT
        outputs = [image, van_img, status, change, strip, gif]
        ev = run.click(h.generate, [c for _, c in fields] + [vanilla, schedule], outputs, api_name="generate",
                       concurrency_limit=concurrency, concurrency_id="generate", show_progress="minimal")
        stop.click(h.stop, None, None, queue=False, api_name="stop")
        cancel.click(h.cancel, None, outputs, cancels=[ev], queue=False, api_name="cancel")
        vanilla.change(lambda v: gr.update(visible=bool(v)), vanilla, van_img, queue=False, api_name=False)
        demo.unload(h.unload)
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    return demo


def launch_app(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
               quiet: bool = False) -> Any:
    """Serve offline: no share tunnel, no server-side rendering, no MCP, files only from the GIF folder."""
    return demo.launch(server_name=host, server_port=port, share=False, show_error=False, ssr_mode=False,
                       pwa=False, mcp_server=False, allowed_paths=[str(demo.nd_gif_dir)],
                       prevent_thread_lock=not block, quiet=quiet, css=demo.nd_css)
