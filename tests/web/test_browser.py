"""The demo in real Chromium (Debian's /usr/bin/chromium, headless, driven by Playwright for Python): the NFE
counter rises, the image changes at least three times, Stop keeps the image and the status says where it stopped,
closing the tab ends the job within one model call, and no request leaves loopback. The screenshot goes to the
test's tmp folder; ``UPDATE_SCREENSHOT=1`` writes it to docs/web-demo.png (the README's picture) instead."""
from __future__ import annotations

import os
import re
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared fixtures
from web_helpers import ARGS, CHROMIUM, CountingModel, browser_test_requirements, wait_idle  # noqa: E402

sync_api = browser_test_requirements()   # skips this module without Chromium, Gradio or Playwright

from nested_diffusion.web import BundledBackend, Limits  # noqa: E402
from nested_diffusion.web.app import build_app, launch_app  # noqa: E402
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "web-demo.png"


def nfe_of(text: str) -> int | None:
    m = re.search(r"NFE (\d+)/", text)
    return int(m.group(1)) if m else None


def watch(page, until, timeout=30.0):
    """Poll the status and the image source until ``until(seen_nfes, seen_images)``; returns both lists."""
    nfes, images, end = [], [], time.monotonic() + timeout
    while time.monotonic() < end:
        n = nfe_of(page.inner_text("#nd-status"))
        src = page.get_attribute("#nd-image img", "src") if page.query_selector("#nd-image img") else None
        if n is not None and (not nfes or nfes[-1] != n):
            nfes.append(n)
        if src and (not images or images[-1] != src):
            images.append(src)
        if until(nfes, images):
            return nfes, images
        time.sleep(0.02)
    raise AssertionError(f"timed out: NFEs seen {nfes}, {len(images)} images")


@pytest.fixture(scope="module")
def server():
    model = CountingModel(delay=0.04)
    demo = build_app(BundledBackend(model), Limits(), concurrency=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = launch_app(demo, port=port, block=False, quiet=True)
    yield url, model, demo.nd_handlers.board
    demo.close()


def test_generate_watch_stop_in_chromium(server, tmp_path):
    url, model, board = server
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})

        def route(r):
            requests.append(r.request.url)
            host = urlparse(r.request.url).hostname
            (r.continue_() if host in ("127.0.0.1", "localhost") else r.abort())

        context.route("**/*", route)
        context.on("request", lambda req: requests.append(req.url))
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#nd-generate")
        page.check("#nd-vanilla-on input")
        page.click("#nd-generate")
        nfes, images = watch(page, lambda n, i: len(n) >= 4 and len(i) >= 4 and n[-1] >= 30)
        assert nfes == sorted(nfes) and len(set(images)) >= 4     # counter rises; the image changed ≥ 3 times
        page.click("#nd-stop")
        page.wait_for_function("document.querySelector('#nd-status').innerText.includes('Stopped at NFE')",
                               timeout=20000)
        status = page.inner_text("#nd-status")
        k = nfe_of(status)
        assert k is not None and k >= nfes[-1] and k < 100
        assert page.get_attribute("#nd-image img", "src")                # the image stays
        page.wait_for_selector("#nd-strip img", timeout=10000)
        page.wait_for_timeout(300)
        shot = DOCS_SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / "web-demo.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20000

        tab = context.new_page()                                          # closing the tab ends the job
        tab.goto(url)
        tab.wait_for_selector("#nd-generate")
        model.delay = 0.4
        tab.click("#nd-generate")
        watch(tab, lambda n, i: len(n) >= 2)
        tab.close()
        at_close = model.calls
        wait_idle(board)
        model.delay = 0.04
        assert model.calls <= at_close + 1
        browser.close()
    away = [u for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")
            and urlparse(u).hostname not in ("127.0.0.1", "localhost")]
    assert requests and not away, f"requests left loopback: {away[:5]}"
