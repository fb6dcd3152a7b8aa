"""The Gradio demo driven with gradio_client (no browser, no network: 127.0.0.1 only).

* 6 clients at once with different seeds each get the library's images for their seeds (no crosstalk);
* after Stop, Cancel or a vanished client the server makes at most one more model call for that job;
* the server's memory (a real ``nested-diffusion serve`` process) after 100 jobs is within 10% of after 10.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

gr = pytest.importorskip("gradio", reason="the demo needs the [demo] extra (gradio)")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from PIL import Image  # noqa: E402

from nested_diffusion.web import BundledBackend, Limits  # noqa: E402
from nested_diffusion.web.app import build_app, launch_app  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared fixtures
from web_helpers import CountingModel, library_images, page_picture, saved_tiny_pipe, wait_idle  # noqa: E402

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    model = CountingModel()
    demo = build_app(BundledBackend(model), Limits(), concurrency=6)
    _, url, _ = launch_app(demo, port=free_port(), block=False, quiet=True)
    yield SimpleNamespace(url=url, model=model, board=demo.nd_handlers.board)
    demo.close()


def args(classes, seed, outer, inner, vanilla=False):
    """The page's API inputs: classes, seed, schedule, nfe, first, outer, inner, solver, guidance, budget,
    deadline, vanilla."""
    return ([CLASSES[c] for c in classes], seed, "uniform", 0, 0, outer, inner, "ddpm", 2.0, 0, 0, vanilla)


def wait_nfe(job, k, timeout=20.0):
    """Wait until the streamed status shows at least NFE k (while the job still runs)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        seen = [int(m.group(1)) for o in job.outputs() if isinstance(o[2], str)
                for m in [re.match(r"NFE (\d+)/", o[2])] if m]
        if seen and max(seen) >= k:
            return
        time.sleep(0.01)
    raise AssertionError(f"the status never showed NFE {k}; outputs: {[o[2] for o in job.outputs()][-3:]}")


def test_six_clients_get_their_own_images(server):
    server.model.delay = 0.0
    jobs = [(i, [i % 10, (i + 3) % 10], 40 + 7 * i) for i in range(6)]
    results: dict[int, tuple] = {}

    def one(i, classes, seed):
        client = Client(server.url, verbose=False)
        try:
            results[i] = client.predict(*args(classes, seed, 2, 4), api_name="/generate")
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(6))
    for i, classes, seed in jobs:
        got = np.asarray(Image.open(results[i][0]).convert("RGB"))
        want = page_picture(library_images(server.model.model, classes, seed, 2, 4))
        assert np.array_equal(got, want), f"client {i} (seed {seed}) got another image"
        assert results[i][2].startswith("Done at NFE 8/8")
    wait_idle(server.board)


def test_stop_keeps_the_image_within_one_model_call(server):
    server.model.delay = 0.03
    client = Client(server.url, verbose=False)
    try:
        job = client.submit(*args([7], 5, 5, 20), api_name="/generate")
        wait_nfe(job, 3)
        client.predict(api_name="/stop")
        after_stop = server.model.calls
        final = job.result(timeout=30)
        wait_idle(server.board)
        assert server.model.calls <= after_stop + 1
        assert final[2].startswith("Stopped at NFE") and "result of NFE" in final[2]
        assert final[4] is not None and final[5].endswith(".gif")   # progression strip and GIF
    finally:
        client.close()


@pytest.mark.parametrize("how", ["cancel button", "client abort"])
def test_cancel_discards_within_one_model_call(server, how):
    server.model.delay = 0.03
    client = Client(server.url, verbose=False)
    try:
        job = client.submit(*args([2], 9, 5, 20), api_name="/generate")
        wait_nfe(job, 2)
        if how == "cancel button":
            client.predict(api_name="/cancel")
        else:
            job.cancel()
        after_cancel = server.model.calls
        wait_idle(server.board)
        assert server.model.calls <= after_cancel + 1
        if how == "cancel button":     # the run's own stream ends with the message, after all its updates
            final = job.result(timeout=30)
            assert final[0] is None and final[2] == "Cancelled: the result was discarded."
    finally:
        client.close()


CLIENT_SCRIPT = """
import sys
from gradio_client import Client
c = Client(sys.argv[1], verbose=False)
job = c.submit(["Bag"], 1, "uniform", 0, 0, 5, 20, "ddpm", 2.0, 0, 0, False, api_name="/generate")
import time
while True:
    outs = job.outputs()
    if outs and isinstance(outs[-1][2], str) and "NFE 2/" in outs[-1][2]:
        print("seen", flush=True)
        time.sleep(60)
    time.sleep(0.01)
"""


def test_vanished_client_ends_its_job(server):
    server.model.delay = 0.6          # > the handler's HEARTBEAT_S: the server notices within one model call
    proc = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, server.url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "seen"
        proc.kill()
        proc.wait(10)
        at_kill = server.model.calls
        wait_idle(server.board, 15)
        assert server.model.calls <= at_kill + 1
    finally:
        if proc.poll() is None:
            proc.kill()
        server.model.delay = 0.0


def test_bad_input_is_a_message_not_a_traceback(server):
    client = Client(server.url, verbose=False)
    try:
        with pytest.raises(Exception) as e:
            client.predict(*args([], 0, 5, 20), api_name="/generate")
        assert "classes: choose at least one class" in str(e.value) and "Traceback" not in str(e.value)
        with pytest.raises(Exception) as e:
            client.predict(*args([8], 0, 50, 50), api_name="/generate")
        assert "50 × 50 = 2500 NFE exceeds this server's limit of 1000" in str(e.value)
    finally:
        client.close()


def test_failed_job_is_a_message(server):
    client = Client(server.url, verbose=False)
    server.model.fail = "simulated out of memory"
    try:
        with pytest.raises(Exception) as e:
            client.predict(*args([1], 0, 1, 2), api_name="/generate")
        assert "The job failed: RuntimeError: simulated out of memory" in str(e.value)
    finally:
        server.model.fail = None
        client.close()
    wait_idle(server.board)


def test_sd_pipeline_page_streams_the_library_images():
    pytest.importorskip("diffusers")
    from nested_diffusion.web import JobRequest, load_backend, stream_updates
    backend = load_backend("sd", saved_tiny_pipe("sd"))
    demo = build_app(backend, Limits(max_size=64), concurrency=1)
    _, url, _ = launch_app(demo, port=free_port(), block=False, quiet=True)
    client = Client(url, verbose=False)
    try:
        out = client.predict("a photo of a cat", "", 0, 0, 4, "uniform", 0, 0, 2, 3, "ddim", 7.5, 0, 0, True,
                             api_name="/generate")
        assert out[2].startswith("Done at NFE 6/6") and out[1] is not None      # vanilla shown too
        ref = list(stream_updates(backend, JobRequest(prompt="a photo of a cat", seed=4, outer_steps=2,
                                                      inner_steps=3, solver="ddim", guidance=7.5)))[-1]
        assert np.array_equal(np.asarray(Image.open(out[0]).convert("RGB")), ref.image)
        with pytest.raises(Exception, match="height: must be a multiple of 8 in \\[8, 64\\] pixels, got 72"):
            client.predict("a cat", "", 72, 0, 4, "uniform", 0, 0, 2, 3, "ddim", 7.5, 0, 0, False,
                           api_name="/generate")
    finally:
        client.close()
        demo.close()


def rss(pid: int) -> int:
    import psutil
    return psutil.Process(pid).memory_info().rss


def test_memory_flat_over_100_jobs_on_the_cli_server(tmp_path):
    pytest.importorskip("psutil")
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "nested_diffusion.cli", "serve", "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "serving bundled on http://127.0.0.1:" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}/"
        end = time.monotonic() + 60
        while True:
            try:
                client = Client(url, verbose=False, download_files=False)
                break
            except Exception:
                if time.monotonic() > end or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        sizes = {}
        for n in range(10):
            assert client.predict(*args([n % 10], n, 1, 2), api_name="/generate")[2].startswith("Done at NFE 2/2")
        sizes[10] = rss(proc.pid)
        client.close()
        done = []

        def jobs(part):   # the other 90 jobs from 4 clients at once (the server computes 2 at a time)
            c = Client(url, verbose=False, download_files=False)
            for n in range(10 + part, 100, 4):
                done.append(c.predict(*args([n % 10], n, 1, 2), api_name="/generate")[2].startswith("Done"))
            c.close()

        threads = [threading.Thread(target=jobs, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert len(done) == 90 and all(done)
        sizes[100] = rss(proc.pid)
        assert sizes[100] <= 1.10 * sizes[10], f"RSS after 10 jobs {sizes[10] >> 20} MiB, after 100 " \
                                               f"{sizes[100] >> 20} MiB"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_sliders_offer_only_splits_the_server_accepts():
    """The outer/inner sliders' maxima come from the server's Limits and follow each other (outer × inner ≤
    max_nfe), so a slider position the server always refuses (50 × 250 at a 1000-NFE cap) cannot be chosen."""
    from nested_diffusion.web.app import slider_max
    from nested_diffusion.web.backends import JobRequest, check_job, resolve_job_run
    from nested_diffusion.families import get_family
    limits = Limits(max_outer_steps=50, max_inner_steps=250, max_nfe=1000)
    assert slider_max(limits, "inner_steps", 50) == 20 and slider_max(limits, "outer_steps", 250) == 4
    assert slider_max(limits, "inner_steps", 1) == 250 and slider_max(limits, "outer_steps", 1) == 50
    for outer in (1, 3, 7, 50):                       # the largest offered inner value is accepted …
        inner = slider_max(limits, "inner_steps", outer)
        req = JobRequest(classes="1", schedule="uniform", outer_steps=outer, inner_steps=inner, solver="ddpm")
        check_job(req, resolve_job_run(req, get_family("bundled")), limits)
        req.inner_steps = inner + 1                   # … and one more is refused
        if inner < 250:
            with pytest.raises(ValueError, match="exceeds this server's limit"):
                check_job(req, resolve_job_run(req, get_family("bundled")), limits)
    demo = build_app(BundledBackend(CountingModel()), limits)
    sliders = {c["props"].get("elem_id"): c["props"] for c in demo.config["components"]
               if c["props"].get("elem_id") in ("nd-outer", "nd-inner")}
    assert sliders["nd-outer"]["maximum"] * sliders["nd-inner"]["value"] <= 1000
    assert sliders["nd-inner"]["maximum"] * sliders["nd-outer"]["value"] <= 1000


def test_the_first_control_follows_the_schedule():
    from nested_diffusion.web.app import first_default, schedule_controls
    assert (first_default("progressive"), first_default("ramp"), first_default("uniform")) == (20, 10, None)
    nfe, first, outer, inner = schedule_controls("ramp")
    assert first["visible"] and first["value"] == 10 and nfe["visible"] and not outer["visible"]
    nfe, first, outer, inner = schedule_controls("uniform")
    assert not first["visible"] and not nfe["visible"] and outer["visible"] and inner["visible"]
