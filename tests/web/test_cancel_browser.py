"""Cancel early in a run, in real Chromium (Debian's /usr/bin/chromium, headless, Playwright; 127.0.0.1 only):
pressed 0.1, 0.3, 0.7 and 1.5 s after Generate — before the job has started, while it starts, and during its first
previews — every try ends with the status "Cancelled", no picture, no red error badge, and the status stays so
(no late update of the cancelled run lands after it)."""
from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared fixtures
from web_helpers import ARGS, CHROMIUM, CountingModel, browser_test_requirements, wait_idle  # noqa: E402

sync_api = browser_test_requirements()   # skips this module without Chromium, Gradio or Playwright

from nested_diffusion.web import BundledBackend, Limits  # noqa: E402
from nested_diffusion.web.app import build_app, launch_app  # noqa: E402
DELAYS = (0.1, 0.3, 0.7, 1.5)
ERROR_BADGES = "() => [...document.querySelectorAll('.error, .toast-body.error')]" \
               ".filter(e => e.offsetParent !== null).map(e => e.innerText.trim())"


@pytest.fixture(scope="module")
def server():
    model = CountingModel(delay=0.03)          # ≈ 3 s for the default 100-NFE run: every delay lands inside it
    demo = build_app(BundledBackend(model), Limits(), concurrency=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = launch_app(demo, host="127.0.0.1", port=port, block=False, quiet=True)
    yield url, model, demo.nd_handlers.board
    demo.close()


def test_cancel_early_ends_cancelled_without_errors(server):
    url, model, board = server
    outcomes = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector("#nd-generate")
        for delay in DELAYS:
            calls = model.calls
            page.click("#nd-generate")
            time.sleep(delay)
            page.click("#nd-cancel")
            page.wait_for_function("document.querySelector('#nd-status').innerText.includes('Cancelled')",
                                   timeout=20000)
            wait_idle(board)
            page.wait_for_timeout(800)                 # anything late of the cancelled run would land by now
            status = page.inner_text("#nd-status")
            image = page.query_selector("#nd-image img")
            outcomes.append(dict(delay=delay, status=status, errors=page.evaluate(ERROR_BADGES),
                                 image=bool(image and image.get_attribute("src")), calls=model.calls - calls))
        browser.close()
    bad = [o for o in outcomes if "Cancelled" not in o["status"] or o["errors"] or o["image"]]
    assert len(outcomes) == len(DELAYS) and not bad, f"cancel went wrong: {bad} (all: {outcomes})"
    assert all(o["calls"] < 100 for o in outcomes)    # each run was cut short, not finished


def test_bad_seed_is_refused_and_strip_label_clear_of_thumbnails(server):
    url, model, board = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(url)
        page.wait_for_selector("#nd-generate")
        calls = model.calls
        page.fill("#nd-seed input", "2.5")                      # not rounded to 2 or 3 silently: refused
        page.click("#nd-generate")
        page.wait_for_selector(".toast-body", timeout=10000)
        toast = page.inner_text(".toast-body")
        assert "Bad input: seed: 2.5 is not a whole number" in toast, toast
        assert model.calls == calls and len(board) == 0
        page.fill("#nd-seed input", "3")
        page.click("#nd-generate")
        page.wait_for_selector("#nd-strip img", timeout=30000)
        page.wait_for_timeout(300)
        label = page.locator("#nd-strip-label").bounding_box()
        picture = page.locator("#nd-strip img").bounding_box()
        assert label and picture and label["y"] + label["height"] <= picture["y"] + 1   # above it, not over it
        browser.close()
    wait_idle(board)
