"""``serve`` (the web page and the OpenAI API) on a generic family: a stock diffusers pipeline through
``anytime()`` behind ``web.generic_backend.GenericBackend``, chosen by ``load_backend`` from the family table.

The table's generic image families have no tokenizer in their tiny fixtures and a web job is a text prompt, so the
runs use a toy generic family over FLUX.1's stock ``FluxPipeline`` (tiny, with tokenizers), registered for the test
as ``tests/cli/test_generate_families.py`` does; the table's families are checked up to ``prepare`` (every input
check, no model call). Tolerance: the backend's images against ``anytime``'s own of the same call converted the same
way — exactly equal (same code, same seeds, float32 on CPU)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402

from fixtures_any import BUILDERS  # noqa: E402
from fixtures_any import TOY_GENERIC, toy_generic_family  # noqa: E402
from nested_diffusion import anytime  # noqa: E402
from nested_diffusion.families import get_family  # noqa: E402
from nested_diffusion.web import JobRequest, Limits, load_backend, stream_updates  # noqa: E402
from nested_diffusion.web.generic_backend import GenericBackend  # noqa: E402
from nested_diffusion.web.render import NO_CALIBRATION_WORDS, model_to_rgb  # noqa: E402

torch.set_num_threads(1)
TOY = TOY_GENERIC


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    with toy_generic_family(tmp_path_factory.mktemp("generic")) as d:
        yield d


@pytest.fixture(scope="module")
def backend(disk):
    return load_backend(TOY, disk / TOY)


def job(**kw):
    return JobRequest(**{"prompt": "a photo of a cat", "seed": 7, "height": 16, "width": 16, **kw})


def library(backend, **run):
    """``anytime`` on the same pipeline with the same call (image i: seed 7 + i), as the backend converts it."""
    ups = list(anytime(backend.pipe, prompt=["a photo of a cat"], height=16, width=16, seed=[7],
                       generator=[torch.Generator().manual_seed(7)], **run))
    return ups, model_to_rgb(ups[-1].x0)


def test_serve_takes_the_generic_image_families_and_refuses_the_video_one():
    for name in ("flux2", "flux2-klein", "qwen-image", "z-image", "chroma", "hidream"):
        assert "serve" in get_family(name).surfaces
    with pytest.raises(ValueError, match="--pipeline: wan is a generic family.*not in `serve`"):
        load_backend("wan", "anywhere")


@pytest.mark.parametrize("run", [dict(outer_steps=2, inner_steps=2), dict(schedule="progressive", nfe=6, first=2)])
def test_a_generic_family_serves_the_librarys_images(backend, run):
    assert isinstance(backend, GenericBackend) and backend.kind == TOY and backend.exclusive
    ups = list(stream_updates(backend, job(**run)))
    ref, want = library(backend, **run)
    assert [u.nfe for u in ups[:-1]] == [u.nfe for u in ref]
    assert ups[-1].state == "done" and ups[-1].spent == ref[-1].nfe and ups[-1].final
    assert np.array_equal(ups[-1].images, want)
    assert all(u.expected_change == NO_CALIBRATION_WORDS for u in ups)


def test_empty_fields_are_the_familys_defaults_and_vanilla_runs_beside(backend):
    d = get_family(TOY).run_defaults()
    prep = backend.prepare(job(), Limits())
    assert prep.run.schedule == d.schedule and prep.run.outer_steps == d.outer_steps
    assert prep.total_nfe == prep.run.inner_total and prep.seeds == [7]
    assert prep.guidance == get_family(TOY).guidance_default()
    ups = list(stream_updates(backend, job(outer_steps=2, inner_steps=2, vanilla=True)))
    _, want = library(backend, outer_steps=1, inner_steps=4)     # vanilla: one outer step of all 4 inner steps
    assert ups[-1].vanilla_nfe == 4 and ups[-1].spent == 4
    assert np.array_equal(ups[-1].images, library(backend, outer_steps=2, inner_steps=2)[1])
    van = list(anytime(backend.pipe, prompt=["a photo of a cat"], height=16, width=16, seed=[7], outer_steps=1,
                       inner_steps=4, generator=[torch.Generator().manual_seed(7)]))
    assert np.array_equal(model_to_rgb(van[-1].x0), want)


def test_stop_ends_the_job_within_one_model_call(backend):
    stop = threading.Event()
    seen = []
    for u in stream_updates(backend, job(outer_steps=2, inner_steps=4), stop=stop):
        seen.append(u)
        if u.nfe == 2 and u.state == "running":
            stop.set()
    assert seen[-1].state == "stopped" and seen[-1].spent == 2, [(u.nfe, u.spent) for u in seen]


@pytest.mark.parametrize("fields, words", [
    (dict(solver="heun"), "solver: 'heun'; the flux-stock family runs its pipeline's own scheduler"),
    (dict(prompt="  "), "prompt: describe the image"),
    (dict(height=20), "height: must be a multiple of 8"),        # the tiny VAE: 8 (at least 8)
    (dict(outer_steps=60, inner_steps=1), "outer_steps:"),
    (dict(seed=-1), "seed:"),
])
def test_bad_requests_get_one_clear_error_before_any_model_call(backend, fields, words, monkeypatch):
    def no_call(*a, **k):
        raise AssertionError("a model call")
    monkeypatch.setattr(backend.pipe.transformer, "forward", no_call)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        backend.prepare(job(**fields), Limits())


@pytest.mark.parametrize("name", [n for n in BUILDERS if n != "wan"])
def test_the_tables_generic_families_prepare_without_a_model_call(name, monkeypatch):
    pipe = BUILDERS[name]()
    monkeypatch.setattr(pipe.transformer, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("call")))
    backend = GenericBackend(pipe, name)
    m = backend.size_multiple()
    prep = backend.prepare(JobRequest(prompt="a cat", height=m, width=m), Limits())
    d = get_family(name).run_defaults()
    assert (prep.run.outer_steps, prep.run.inner_steps[0], prep.total_nfe) == (d.outer_steps, d.inner_steps, d.nfe)
    if "negative_prompt" not in backend._parameters():     # FLUX.2: the stock call takes no negative prompt
        with pytest.raises(ValueError, match=f"negative_prompt: the {name} pipeline"):
            backend.prepare(JobRequest(prompt="a cat", negative_prompt="blurry", height=m, width=m), Limits())
