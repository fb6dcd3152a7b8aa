"""Shared by the web tests: a counting (optionally slow) wrapper of the bundled model, the library's own images
for a job's settings, and the same picture layout the page shows, built from the library's picture helpers."""
from __future__ import annotations

import functools
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from nested_diffusion import NestedSampler
from nested_diffusion.bundled import load_unet, make_denoiser
from nested_diffusion.imaging import tile, to_uint8


class CountingModel(torch.nn.Module):
    """Forwards to the bundled UNet, counting calls (one call = one NFE: the CFG pair is one batch) and
    sleeping ``delay`` seconds per call so tests can act between calls. Its weights are the UNet's (``state_dict``),
    so the shipped calibrations match it as they match the bundled model."""

    def __init__(self, model=None, delay: float = 0.0):
        super().__init__()
        self.model = model or load_unet()
        self.config, self.null_class = self.model.config, self.model.null_class
        self.delay, self.calls, self.fail = delay, 0, None
        self._lock = threading.Lock()

    def state_dict(self, *args, **kwargs):  # the identity a calibration checks is the wrapped UNet's weights
        return self.model.state_dict(*args, **kwargs)

    def forward(self, x, t, labels):
        with self._lock:
            self.calls += 1
        if self.fail:
            raise RuntimeError(self.fail)
        if self.delay:
            time.sleep(self.delay)
        return self.model(x, t, labels)


def library_images(model, classes, seed, outer, inner, solver="ddpm", guidance=2.0, eta=None):
    """(B, 1, 28, 28) final images of the library for these settings (sample i: seed + i)."""
    sampler = NestedSampler(make_denoiser(model, guidance), outer, inner, solver, eta)
    seeds = [seed + i for i in range(len(classes))]
    return sampler.sample(seeds, (len(classes), 1, 28, 28), cond=torch.tensor(classes)).x0


def page_picture(x0: torch.Tensor, scale: int = 1) -> np.ndarray:
    """The batch as the page sends it: one row, RGB, native pixels (the browser upscales), 2-pixel white gaps."""
    grey = to_uint8(x0)
    return tile(list(np.repeat(grey, 3, axis=-1)), 1, len(grey), scale)


@functools.lru_cache(maxsize=None)
def saved_tiny_pipe(kind: str) -> Path:
    """A tiny random-weight Nested SD (``"sd"``) or DiT (``"dit"``) pipeline saved with save_pretrained."""
    from fixtures_tiny import tiny_dit, tiny_sd
    from nested_diffusion.pipelines import NestedDiTPipeline, NestedStableDiffusionPipeline
    path = Path(tempfile.mkdtemp(prefix=f"web-{kind}-"))
    if kind == "sd":
        NestedStableDiffusionPipeline.from_pipe(tiny_sd()).save_pretrained(path)
    else:
        NestedDiTPipeline.from_pipe(tiny_dit()).save_pretrained(path)
    return path


def wait_idle(board, timeout: float = 15.0) -> None:
    """Wait until the server holds no job and every job thread has ended."""
    end = time.monotonic() + timeout
    def busy():
        return len(board) or any(t.name == "nested-diffusion-job" for t in threading.enumerate())
    while busy() and time.monotonic() < end:
        time.sleep(0.02)
    assert not busy(), "the server still holds or runs a job"


CHROMIUM = "/usr/bin/chromium"   # Debian's chromium (scripts/test.sh installs it); never `playwright install`
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking"]


def browser_test_requirements():
    """Skip the calling test module unless Chromium, Gradio and Playwright are here; Playwright's sync API."""
    import os

    import pytest
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; scripts/test.sh does it)",
                    allow_module_level=True)
    pytest.importorskip("gradio", reason="the demo needs the [demo] extra (gradio)")
    return pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
