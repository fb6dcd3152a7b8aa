"""web.stream / web.backends without any web framework: updates, stop/cancel within one model call, images
identical to the library's, the vanilla comparison, budgets, bad input, and the pipelines on the same path."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nested_diffusion.web import BundledBackend, Job, JobRequest, Limits, load_backend, stream_updates
from nested_diffusion.web.render import expected_change_words, gif_bytes, progression_strip

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared fixtures
from web_helpers import CountingModel, library_images, page_picture, saved_tiny_pipe  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return CountingModel()


def test_updates_rise_and_images_match_the_library(model):
    backend = BundledBackend(model)
    ups = list(stream_updates(backend, JobRequest(classes="bag,sneaker", seed=3, outer_steps=3, inner_steps=4)))
    nfes = [u.nfe for u in ups[:-1]]
    assert nfes == [1, 2, 3, 4, 8, 12]            # every x̂0 of the first inner run, then each finished run
    assert [u.state for u in ups] == ["running"] * 6 + ["done"] and ups[-1].spent == 12
    assert all(u.image.dtype == np.uint8 and u.image.shape == (32, 62, 3) for u in ups)   # native 28 px; the page upscales
    assert {u.source for u in ups} == {"x0_preview", "inner_result"}
    ref = library_images(model.model, [8, 7], 3, 3, 4, guidance=backend.family.guidance_default())  # 1.25
    assert np.array_equal(ups[-1].image, page_picture(ref))
    alone = list(stream_updates(backend, JobRequest(classes="sneaker", seed=4, outer_steps=3, inner_steps=4)))
    assert np.array_equal(alone[-1].images[0], ups[-1].images[1])   # same seed, same image, any batch


def test_soft_stop_within_one_model_call_keeps_the_image():
    model = CountingModel(delay=0.02)
    job = Job(BundledBackend(model), JobRequest(classes="0", outer_steps=5, inner_steps=20)).start()
    seq = 0
    while True:
        seq, u = job.next_update(seq, 5)
        if u is not None and u.nfe >= 3:
            break
    job.stop()
    at_stop = model.calls
    assert job.join(10)
    assert job.state == "stopped" and model.calls <= at_stop + 1
    assert job.result is not None and job.result.spent == model.calls
    assert job.result.status().startswith(f"Stopped at NFE {model.calls}/100")
    assert np.array_equal(job.frames[-1], job.result.images)


def test_stop_flag_checked_after_every_model_call(model):
    before = model.calls
    stop = lambda: model.calls - before >= 7  # noqa: E731  (true right after the 7th call)
    ups = list(stream_updates(BundledBackend(model), JobRequest(classes="3", outer_steps=4, inner_steps=5), stop))
    assert model.calls - before == 7 and ups[-1].state == "stopped" and ups[-1].spent == 7


def test_cancel_discards_the_result():
    model = CountingModel(delay=0.02)
    job = Job(BundledBackend(model), JobRequest(classes="1", outer_steps=5, inner_steps=20)).start()
    job.next_update(0, 5)
    job.cancel()
    at_cancel = model.calls
    assert job.join(10)
    assert job.state == "cancelled" and job.result is None and job.frames == []
    assert model.calls <= at_cancel + 1


def test_cancel_before_the_job_starts_applies_to_it():
    """The page announces a job when Generate is pressed; a Cancel before the job starts (queued) cancels it as it
    starts: no model call, state cancelled. A Cancel with nothing announced does not touch a later job."""
    from nested_diffusion.web import JobBoard
    model, board = CountingModel(), JobBoard()
    request = JobRequest(classes="1", outer_steps=2, inner_steps=3)
    board.announce("s")
    assert board.cancel("s")
    job = board.start("s", Job(BundledBackend(model), request))
    assert job.join(5) and job.state == "cancelled" and job.result is None and model.calls == 0
    board.forget("s", job)
    assert not board.cancel("s")                 # idle: nothing to cancel, nothing remembered
    job = board.start("s", Job(BundledBackend(model), request))
    assert job.join(30) and job.state == "done" and model.calls == 6


def test_vanilla_at_the_same_nfe(model):
    req = JobRequest(classes="5", seed=11, outer_steps=2, inner_steps=3, vanilla=True)
    ups = list(stream_updates(BundledBackend(model), req))
    assert all(u.vanilla_nfe == u.nfe for u in ups) and ups[-1].vanilla.shape == ups[-1].image.shape
    assert np.array_equal(ups[-1].vanilla, page_picture(library_images(model.model, [5], 11, 1, 6, guidance=1.25)))
    assert not np.array_equal(ups[-1].vanilla, ups[-1].image)


def test_budget_and_deadline_end_states(model):
    ups = list(stream_updates(BundledBackend(model), JobRequest(classes="2", outer_steps=5, inner_steps=10,
                                                                max_nfe=25)))
    assert ups[-1].state == "budget" and ups[-1].nfe == 20 and ups[-1].spent <= 25
    slow = CountingModel(model.model, delay=0.03)
    ups = list(stream_updates(BundledBackend(slow), JobRequest(classes="2", outer_steps=5, inner_steps=20,
                                                               deadline=0.3)))
    assert ups[-1].state == "deadline" and ups[-1].spent < 100


@pytest.mark.parametrize("field,value,words", [
    ("classes", "dragon", "classes: unknown class 'dragon'"),
    ("outer_steps", 51, "outer_steps: 51 outer × 20 inner has 51 outer steps; this server allows 1 to 50"),
    ("inner_steps", 251, "inner_steps: 5 outer × 251 inner has an inner run of 251 steps; this server allows 1 to 250"),
    ("inner_steps", -3, "inner_steps: must be ≥ 1, got -3"),
    ("solver", "euler", "solver: unknown solver 'euler'; valid: ddim, ddpm"),
    ("guidance", -1.0, "guidance: must be a finite number ≥ 0, got -1.0"),
    ("deadline", -2, "deadline: must be a positive number of seconds, got -2"),
    ("deadline", 601, "deadline: 601 s exceeds this server's limit of 600 s"),
    ("schedule", "zigzag", "schedule: unknown schedule 'zigzag'; valid: "),
    ("nfe", 30, "nfe: 30 NFE leave nothing for the final run after 2 quick runs of 10+20 steps"),
    ("first", 0.5, "first: expected an integer, got float"),
    ("max_nfe", -1, "max_nfe: must be an integer ≥ 1"),
    ("classes", ",".join(["0"] * 11), "classes: 11 images requested; this server allows 1 to 10"),
])
def test_bad_input_is_one_clear_error(model, field, value, words):
    with pytest.raises(ValueError) as e:
        Job(BundledBackend(model), JobRequest(**{field: value}))
    assert words in str(e.value)


def test_step_product_cap(model):
    with pytest.raises(ValueError, match=r"40 × 40 = 1600 NFE exceeds this server's limit of 1000"):
        Job(BundledBackend(model), JobRequest(outer_steps=40, inner_steps=40))
    with pytest.raises(ValueError, match="max_batch: must be an integer ≥ 1"):
        Limits(max_batch=0)


def test_failed_job_is_a_message(model):
    class Broken(CountingModel):
        def __call__(self, x, t, labels):
            raise RuntimeError("out of memory")
    job = Job(BundledBackend(Broken(model.model)), JobRequest(classes="0", outer_steps=1, inner_steps=2)).start()
    assert job.join(10) and job.state == "failed" and job.error == "RuntimeError: out of memory"


def test_expected_change_words_and_pictures():
    class One:
        def wording(self, i):
            return ["settled", "details may still change"][i]

    class Info:
        expected_change = One()

    assert expected_change_words(Info(), 2) == "Expected change: 1: settled · 2: details may still change"
    Info.expected_change = type("W", (), {"wordings": ["may still change a lot"]})()
    assert expected_change_words(Info(), 1) == "Expected change: may still change a lot"
    Info.expected_change = object()
    assert expected_change_words(Info(), 1) is None and expected_change_words(object(), 1) is None
    frames = [np.full((2, 4, 4, 3), v, np.uint8) for v in range(20)]
    strip = progression_strip(frames, most=5)
    assert strip.shape == (2 * 4 + 3 * 2, 5 * 4 + 6 * 2, 3) and strip[2, 2 + 4 * 6 + 2 * 0, 0] == 19
    assert gif_bytes(frames[:3]).startswith(b"GIF89a")


def _board_stop_each(backend, requests):
    """Run one job per request concurrently and return their final updates."""
    jobs = [Job(backend, r).start() for r in requests]
    assert all(j.join(60) for j in jobs)
    return [j.result for j in jobs]


def test_concurrent_jobs_do_not_mix(model):
    reqs = [JobRequest(classes=str(c), seed=100 + c, outer_steps=2, inner_steps=3) for c in range(4)]
    results = _board_stop_each(BundledBackend(model), reqs)
    for c, u in enumerate(results):
        assert np.array_equal(u.image, page_picture(library_images(model.model, [c], 100 + c, 2, 3, guidance=1.25)))


@pytest.mark.parametrize("kind", ["sd", "dit"])
def test_pipelines_on_the_same_path(kind):
    pytest.importorskip("diffusers")
    backend = load_backend(kind, saved_tiny_pipe(kind))
    req = JobRequest(prompt="a photo of a cat", classes="1,goldfish", seed=7, outer_steps=2, inner_steps=3)
    ups = list(stream_updates(backend, req))
    assert ups[-1].state == "done" and ups[-1].spent == 6 and [u.nfe for u in ups[:-1]] == [1, 2, 3, 6]
    pipe, n = backend.pipe, (1 if kind == "sd" else 2)
    gens = [torch.Generator().manual_seed(7 + i) for i in range(n)]
    cond = dict(prompt=["a photo of a cat"]) if kind == "sd" else dict(class_labels=[1, 1])
    ref = pipe(**cond, outer_steps=2, inner_steps=3, generator=gens, output_type="np").images
    assert np.array_equal(ups[-1].images, (np.clip(ref, 0, 1) * 255).round().astype(np.uint8))
    net = pipe.unet if kind == "sd" else pipe.transformer
    calls = []
    hook = net.register_forward_pre_hook(lambda *a: (calls.append(1), time.sleep(0.02)) and None)
    try:
        job = Job(backend, JobRequest(prompt="cat", classes="0", outer_steps=3, inner_steps=8)).start()
        job.next_update(0, 10)
        job.stop()
        at_stop = len(calls)
        assert job.join(10) and job.state == "stopped"
    finally:
        hook.remove()
    assert len(calls) <= at_stop + 1 and job.result.spent == len(calls) < 24


def test_serve_without_gradio_says_what_to_install(monkeypatch, capsys):
    from nested_diffusion.cli.main import main
    monkeypatch.setitem(sys.modules, "gradio", None)      # import gradio now raises ImportError
    assert main(["serve", "--port", "7999"]) == 2
    assert "pip install 'nested-diffusion[demo]'" in capsys.readouterr().err


def test_pipeline_backend_needs_a_folder():
    with pytest.raises(ValueError, match="--model-path: required with --pipeline sd"):
        load_backend("sd", None)
    with pytest.raises(ValueError, match="--pipeline: unknown model family 'nope'; valid: bundled, sd, dit"):
        load_backend("nope")
