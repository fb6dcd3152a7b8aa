"""Issue 21: the OpenAI-compatible image API, driven by the real ``openai`` client against servers on
127.0.0.1 (in-process uvicorn, or ``nested-diffusion api`` processes)."""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402

from nested_diffusion.api.app import create_app  # noqa: E402
from nested_diffusion.api.service import ImageService  # noqa: E402
from nested_diffusion.bundled import load_unet  # noqa: E402
from nested_diffusion.web.backends import BundledBackend, JobRequest, Limits  # noqa: E402
from nested_diffusion.web.render import model_to_rgb  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
KEY = "test-key"
FAST = {"outer_steps": 5, "inner_steps": 4}          # 20 NFE: 4 finished runs before the last


class SlowModel:
    """The bundled network with a pause in every call (so a run lasts long enough to interrupt) and a count of
    calls and rows."""

    def __init__(self, model, pause: float):
        self.model, self.pause = model, pause
        self.config, self.null_class = model.config, model.null_class
        self.calls = 0

    def __call__(self, x, t, labels):
        time.sleep(self.pause)
        self.calls += 1
        return self.model(x, t, labels)


@pytest.fixture(scope="module")
def unet():
    return load_unet()


def serve(service: ImageService, api_key: str | None = KEY, **kw):
    app = create_app(service, api_key, **kw)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < end and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    return server, port


@pytest.fixture(scope="module")
def api(unet):
    service = ImageService(BundledBackend(unet))
    server, port = serve(service)
    yield service, port
    server.should_exit = True


def client(port: int, key: str = KEY, **kw):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, **kw)


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def library(unet, classes, seed, nfe_at=None, **run) -> np.ndarray:
    """The library's images for these settings: the sampler the run resolves to, run alone (``sample``), or its
    stream's update at NFE ``nfe_at``."""
    backend = BundledBackend(unet)
    prep = backend.prepare(JobRequest(seed=seed, classes=classes, **run), Limits())
    sampler = backend.sampler(prep.run)
    shape = (prep.batch, 1, 28, 28)
    if nfe_at is None:
        return model_to_rgb(sampler.sample(prep.seeds, shape, cond=prep.cond).x0)
    for u in sampler.stream(prep.seeds, shape, cond=prep.cond):
        if u.nfe == nfe_at:
            return model_to_rgb(u.x0)
    raise AssertionError(f"no update at NFE {nfe_at}")


# ------------------------------------------------------------------------------------------------ streaming
def test_stream_partials_are_finished_images_in_order_and_the_result_is_the_librarys(api, unet):
    service, port = api
    events = list(client(port).images.generate(model="bundled", prompt="sneaker", stream=True, partial_images=3,
                                               extra_body={"seed": 11, **FAST}))
    partials = [e for e in events if e.type == "image_generation.partial_image"]
    done = [e for e in events if e.type == "image_generation.completed"]
    assert [e.partial_image_index for e in partials] == [0, 1, 2] and len(done) == 1 and events[-1] is done[0]
    extra = [e.model_extra for e in partials]
    assert [x["nfe"] for x in extra] == [4, 8, 12] and [x["outer_step"] for x in extra] == [1, 2, 3]
    assert all(x["source"] == "inner_result" and x["finished"] and x["nfe_total"] == 20 for x in extra)
    for e, x in zip(partials, extra):      # each partial is the library's finished inner run at that NFE
        img = decode(e.b64_json)
        assert img.shape == (28, 28, 3)
        assert np.array_equal(img, library(unet, [7], 11, nfe_at=x["nfe"], **FAST)[0])
    final = done[0].model_extra
    assert final["nfe"] == 20 and final["cut"] is False and final["seed"] == 11
    assert np.array_equal(decode(done[0].b64_json), library(unet, [7], 11, **FAST)[0])


def test_non_streaming_response_and_models(api, unet):
    service, port = api
    c = client(port)
    assert [m.id for m in c.models.list().data] == ["bundled"]
    r = c.images.generate(prompt="bag,trouser", extra_body={"seed": 5, **FAST})
    assert len(r.data) == 2 and r.model_extra["nfe"] == 20
    want = library(unet, [8, 1], 5, **FAST)
    assert all(np.array_equal(decode(d.b64_json), want[i]) for i, d in enumerate(r.data))
    r = c.images.generate(prompt="bag", n=3, extra_body={"seed": 5, **FAST})     # n copies of one class
    want = library(unet, [8, 8, 8], 5, **FAST)
    assert [d.model_extra["seed"] for d in r.data] == [5, 6, 7]
    assert all(np.array_equal(decode(d.b64_json), want[i]) for i, d in enumerate(r.data))


def test_concurrent_requests_share_model_calls_and_keep_their_images(api, unet):
    service, port = api
    jobs = [("sneaker", 1, FAST), ("bag", 2, {"outer_steps": 2, "inner_steps": 10}), ("coat", 3, FAST),
            ("dress", 4, {"outer_steps": 4, "inner_steps": 5, "guidance_scale": 2.0})]
    out = [None] * len(jobs)
    calls0 = service.batching.calls

    def one(i):
        prompt, seed, run = jobs[i]
        out[i] = client(port).images.generate(prompt=prompt, extra_body={"seed": seed, **run})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    calls = service.batching.calls - calls0
    assert calls < 4 * 20, f"{calls} model calls for 4 runs of 20 NFE: not batched"
    classes = {"sneaker": 7, "bag": 8, "coat": 4, "dress": 3}
    for (prompt, seed, run), r in zip(jobs, out):
        run = {("guidance" if k == "guidance_scale" else k): v for k, v in run.items()}
        got, want = decode(r.data[0].b64_json).astype(int), library(unet, [classes[prompt]], seed, **run)[0]
        assert np.abs(got - want).max() <= 1       # batched convolutions: float rounding only


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, param, words", [
    (dict(model="dall-e-3"), "model", "unknown model 'dall-e-3'"),
    (dict(n=11), "n", "[1, 10]"),
    (dict(size="1024x1024"), "size", "28x28"),
    (dict(prompt="spaceship"), "prompt", "unknown class 'spaceship'"),
    (dict(response_format="url"), "response_format", "b64_json"),
    (dict(extra_body={"outer_steps": 0}), "outer_steps", "≥ 1"),
    (dict(extra_body={"deadline_ms": -5}), "deadline_ms", "milliseconds"),
    (dict(extra_body={"guidance_scale": -1.0}), "guidance_scale", "≥ 0"),
    (dict(extra_body={"colour": "red"}), "colour", "unknown field"),
])
def test_bad_input_is_an_openai_400_naming_the_field(api, kwargs, param, words):
    service, port = api
    calls = service.batching.calls
    args = {"prompt": "sneaker", **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client(port).images.generate(**args)
    err = e.value.body
    assert err["type"] == "invalid_request_error" and err["param"] == param and words in err["message"]
    assert service.batching.calls == calls                 # refused before any model call


def test_malformed_json_is_a_400_the_client_raises(api):
    service, port = api
    from openai.types import ImagesResponse
    with pytest.raises(openai.BadRequestError) as e:
        client(port).post("/images/generations", cast_to=ImagesResponse, content=b'{"prompt": "sneaker",',
                          options={"headers": {"Content-Type": "application/json"}})
    assert "not valid JSON" in e.value.body["message"]


def test_auth_body_cap_and_no_traceback(api):
    import httpx
    service, port = api
    with pytest.raises(openai.AuthenticationError):
        client(port, key="wrong").models.list()
    r = httpx.post(f"http://127.0.0.1:{port}/v1/images/generations", content=b"x" * (70 * 1024),
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.get(f"http://127.0.0.1:{port}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and "error" in r.json()


def test_a_failing_model_gives_a_500_without_traceback(unet):
    class Broken(SlowModel):
        def __call__(self, x, t, labels):
            raise RuntimeError("boom in the network")
    service = ImageService(BundledBackend(Broken(unet, 0)), warm_up=False)
    server, port = serve(service)
    try:
        with pytest.raises(openai.InternalServerError) as e:
            client(port, max_retries=0).images.generate(prompt="bag", extra_body=FAST)
        text = json.dumps(e.value.body)
        assert "boom in the network" in text and "Traceback" not in text and 'File "' not in text
    finally:
        server.should_exit = True


# ------------------------------------------------------------------------------------------------ load
def test_disconnect_mid_stream_costs_at_most_one_more_model_call(unet):
    slow = SlowModel(unet, 0.05)
    service = ImageService(BundledBackend(slow), warm_up=False)
    tickets = []
    submit = service.submit
    service.submit = lambda req, sink: tickets.append(submit(req, sink)) or tickets[-1]
    server, port = serve(service)
    try:
        stream = client(port).images.generate(prompt="bag", stream=True, partial_images=3,
                                              extra_body={"seed": 1, "outer_steps": 10, "inner_steps": 10})
        first = next(iter(stream))
        assert first.type == "image_generation.partial_image"
        at_close = slow.calls
        stream.close()
        tickets[0].thread.join(30)
        member = tickets[0].member
        assert member.cancelled and member.calls - member.calls_at_cancel <= 1
        assert slow.calls - at_close <= 1, f"{slow.calls - at_close} model calls after the client left"
        assert member.calls < 100
    finally:
        server.should_exit = True


def test_full_queue_is_429_with_retry_after(unet):
    service = ImageService(BundledBackend(SlowModel(unet, 0.05)), max_active=1, max_queue=0, warm_up=False)
    server, port = serve(service)
    try:
        first = client(port).images.generate(prompt="bag", stream=True, extra_body={"outer_steps": 4,
                                                                                     "inner_steps": 10})
        with pytest.raises(openai.RateLimitError) as e:
            client(port, max_retries=0).images.generate(prompt="bag", extra_body=FAST)
        assert int(e.value.response.headers["retry-after"]) >= 1
        assert e.value.body["code"] == "queue_full"
        assert list(first)[-1].type == "image_generation.completed"
    finally:
        server.should_exit = True


def test_deadline_returns_the_last_finished_inner_run(unet):
    service = ImageService(BundledBackend(SlowModel(unet, 0.03)), warm_up=False)
    server, port = serve(service)
    try:
        r = client(port).images.generate(prompt="coat", extra_body={"seed": 2, "outer_steps": 5, "inner_steps": 6,
                                                                    "deadline_ms": 700})
        x = r.model_extra
        assert x["cut"] is True and x["finished"] is True and x["source"] == "inner_result"
        assert x["deadline_met"] is True and 6 <= x["nfe"] < 30 and x["nfe"] % 6 == 0
        assert x["cut_at_nfe"] >= x["nfe"]
        want = library(unet, [4], 2, nfe_at=x["nfe"], outer_steps=5, inner_steps=6)[0]
        assert np.array_equal(decode(r.data[0].b64_json), want)
    finally:
        server.should_exit = True


def test_deadline_without_steps_picks_a_schedule_that_fits(api):
    service, port = api
    per_call = service.batching.call_seconds(2)
    default = client(port).images.generate(prompt="bag", extra_body={"seed": 0, **FAST})
    assert default.model_extra["schedule"] == "5 outer × 4 inner"      # explicit steps are kept
    deadline = 40 * per_call / 0.8 * 1000                               # room for about 40 NFE at this load
    r = client(port).images.generate(prompt="bag", extra_body={"seed": 0, "deadline_ms": deadline})
    x = r.model_extra
    assert x["nfe_total"] < 100 and x["schedule"] != "3 outer (20+20+60 inner from t=999, 899, 799)"
    assert x["finished"] is True


# ------------------------------------------------------------------------------------------------ processes
def _start(port: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "nested_diffusion.cli", "api", "--port", str(port),
                             "--threads", "1", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_serve_concurrently_and_agree(unet):
    import httpx
    ports = [_free_port(), _free_port()]
    procs = [_start(p) for p in ports]
    try:
        for p, proc in zip(ports, procs):
            end = time.monotonic() + 120
            while True:
                assert proc.poll() is None, proc.stdout.read()
                try:
                    httpx.get(f"http://127.0.0.1:{p}/", timeout=2)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < end, "server did not answer"
                    time.sleep(0.2)
        out = {}

        def one(i):
            out[i] = client(ports[i % 2], key="unused").images.generate(prompt="sandal", extra_body={"seed": i,
                                                                                                      **FAST})
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i in range(4):
            got = decode(out[i].data[0].b64_json).astype(int)
            assert np.abs(got - library(unet, [5], i, **FAST)[0]).max() <= 1
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(20)


def test_binding_beyond_loopback_needs_a_key():
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("NESTED_DIFFUSION_API_KEY", None)
    r = subprocess.run([sys.executable, "-m", "nested_diffusion.cli", "api", "--host", "0.0.0.0"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--api-key" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------------ pipeline families
@pytest.mark.parametrize("family, prompt, n", [("sd", "a photo of a cat", 1), ("dit", "1", 2)])
def test_a_pipeline_family_is_served_through_the_same_backend_path(tmp_path, family, prompt, n):
    pytest.importorskip("diffusers")
    from fixtures_tiny import tiny_dit, tiny_sd

    from nested_diffusion.families import get_family
    from nested_diffusion.web import load_backend, stream_updates
    build = {"sd": tiny_sd, "dit": tiny_dit}[family]
    get_family(family).pipeline_class().from_pipe(build()).save_pretrained(tmp_path / family)
    backend = load_backend(family, tmp_path / family)
    service = ImageService(backend)
    assert service.max_active == 1                    # a pipeline object runs one request at a time
    server, port = serve(service)
    try:
        run = {"outer_steps": 2, "inner_steps": 2}
        events = list(client(port).images.generate(model=family, prompt=prompt, n=n, stream=True, partial_images=3,
                                                   extra_body={"seed": 4, **run}))
        partials = [e for e in events if e.type == "image_generation.partial_image"]
        done = [e for e in events if e.type == "image_generation.completed"]
        assert len(partials) == n and len(done) == n                  # outer step 1 of 2, per image
        assert all(e.model_extra["nfe"] == 2 and e.model_extra["finished"] for e in partials)
        job = JobRequest(seed=4, prompt=prompt, classes=",".join([prompt] * n), **run)
        want = list(stream_updates(backend, job))[-1].images
        for e in done:
            assert np.array_equal(decode(e.b64_json), want[e.model_extra["image_index"]])
        with pytest.raises(openai.BadRequestError) as e:
            client(port).images.generate(model=family, prompt=prompt, size="100x100")
        assert e.value.body["param"] == "size"
    finally:
        server.should_exit = True


@pytest.mark.parametrize("argv, words", [
    (["--port", "99999"], "--port: a TCP port lies in 1–65535"),
    (["--host", "no.such.host.invalid", "--api-key", "k"], "--host: cannot resolve"),
    (["--device", "cuda:0"], "--device: 'cuda:0'"),
    (["--pipeline", "sd"], "--model-path: required"),
])
def test_api_command_refuses_bad_options_before_serving(argv, words, capsys):
    from nested_diffusion.cli.main import main
    try:
        code = main(["api", "--port", str(_free_port()), *argv] if "--port" not in argv else ["api", *argv])
    except SystemExit as e:           # argparse refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


def test_a_generic_family_is_served_through_the_same_backend_path(tmp_path):
    """A generic family (a stock pipeline through NestedScheduler, ``web.generic_backend``): FLUX.1's stock
    FluxPipeline as a toy one (the table's generic fixtures have no tokenizer). The completed image is the web
    backend's final image of the same job, exactly (same code path, same seed)."""
    pytest.importorskip("diffusers")
    from diffusers import FluxPipeline
    from fixtures_modern import tiny_flux

    from nested_diffusion import families
    from nested_diffusion.pipelines import any_pipeline
    from nested_diffusion.web import load_backend, stream_updates
    from nested_diffusion.web.generic_backend import GenericBackend
    any_pipeline.GENERIC_FAMILIES["flux-stock"] = any_pipeline.GenericFamily(
        "flux-stock", ("FluxPipeline",), "NestedFluxPipeline", "flux")
    families.register_family(families.Family("flux-stock", "FLUX.1 through NestedScheduler", "prompt",
                                             "FluxPipeline", "generic", generic=True))
    try:
        FluxPipeline.from_pipe(tiny_flux()).save_pretrained(tmp_path / "flux")
        backend = load_backend("flux-stock", tmp_path / "flux")
        assert isinstance(backend, GenericBackend)
        service = ImageService(backend)
        assert service.max_active == 1
        server, port = serve(service)
        try:
            run = {"outer_steps": 2, "inner_steps": 2}
            events = list(client(port).images.generate(model="flux-stock", prompt="a cat", size="16x16", stream=True,
                                                       partial_images=3, extra_body={"seed": 4, **run}))
            partials = [e for e in events if e.type == "image_generation.partial_image"]
            done = [e for e in events if e.type == "image_generation.completed"]
            assert len(partials) == 1 and len(done) == 1 and partials[0].model_extra["nfe"] == 2
            want = list(stream_updates(backend, JobRequest(seed=4, prompt="a cat", height=16, width=16, **run)))
            assert np.array_equal(decode(done[0].b64_json), want[-1].images[0])
            with pytest.raises(openai.BadRequestError) as e:
                client(port).images.generate(model="flux-stock", prompt="a cat", size="20x20")
            assert e.value.body["param"] == "size"
        finally:
            server.should_exit = True
    finally:
        families.unregister_family("flux-stock")
        any_pipeline.GENERIC_FAMILIES.pop("flux-stock", None)
