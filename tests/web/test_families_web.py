"""One run, every surface, every family — the web part: the web backend is chosen from the family table and runs
every pipeline family (tiny random-weight SD, DiT, SDXL, SD3, FLUX saved to disk and loaded through
``Family.load``) with the uniform and the progressive schedule, with and without a matching calibration; request
fields left empty are the family's run defaults (``core.run.resolve_run``); bad requests get one clear error naming
the web field; ``serve`` / ``calibrate --pipeline`` take every family."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402

from fixtures_modern import tiny_flux, tiny_sd3, tiny_sdxl  # noqa: E402
from fixtures_tiny import tiny_dit, tiny_sd  # noqa: E402
from nested_diffusion.cli.main import main  # noqa: E402
from nested_diffusion.core.change_fit import fit_calibration  # noqa: E402
from nested_diffusion.core.expected_change import SIGNALS  # noqa: E402
from nested_diffusion.core.schedules import make_schedule  # noqa: E402
from nested_diffusion.families import family_names, get_family  # noqa: E402
from nested_diffusion.web import (BundledBackend, JobRequest, Limits, PipelineBackend, load_backend,  # noqa: E402
                                  stream_updates)
from nested_diffusion.web.render import NO_CALIBRATION_WORDS  # noqa: E402

FAMILIES = ("sd", "dit", "sdxl", "sd3", "flux")
BUILD = {"sd": tiny_sd, "dit": tiny_dit, "sdxl": tiny_sdxl, "sd3": tiny_sd3, "flux": tiny_flux}
UNIFORM = dict(outer_steps=2, inner_steps=2)
PROGRESSIVE = dict(schedule="progressive", nfe=6, first=2)     # 2 + 2 + 2 inner steps from 3 outer times


def test_every_pipeline_family_of_the_table_is_covered():
    # generic families (stock diffusers pipelines through NestedScheduler) are served by web.generic_backend
    # (tests/web/test_generic_web.py)
    assert set(FAMILIES) == {n for n in family_names() if not get_family(n).is_bundled and not get_family(n).generic}


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    d = tmp_path_factory.mktemp("families")
    for name in FAMILIES:
        get_family(name).pipeline_class().from_pipe(BUILD[name]()).save_pretrained(d / name)
    (d / "prompts.txt").write_text("a photo of a cat\nthe red dog\n")
    return d


@pytest.fixture(scope="module")
def backends(disk):
    return {name: load_backend(name, disk / name) for name in FAMILIES}


def request(family, **run):
    return JobRequest(prompt="a photo of a cat", classes="1,goldfish", seed=7, **run)


def library(backend, **call):
    """The family's pipeline called directly with the same settings (sample i: seed 7 + i)."""
    prompt = backend.family.takes_prompt
    cond = dict(prompt=["a photo of a cat"]) if prompt else dict(class_labels=[1, 1])
    gens = [torch.Generator().manual_seed(7 + i) for i in range(1 if prompt else 2)]
    out = backend.pipe(**cond, **call, generator=gens, output_type="np").images
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_runs_uniform_and_progressive_without_a_calibration(backends, family):
    backend = backends[family]
    assert isinstance(backend, PipelineBackend) and backend.kind == family
    ups = list(stream_updates(backend, request(family, **UNIFORM)))
    assert ups[-1].state == "done" and ups[-1].spent == 4 and [u.nfe for u in ups[:-1]] == [1, 2, 4]
    assert ups[-1].outer_steps == 2 and "outer step 2/2" in ups[-1].status()
    assert np.array_equal(ups[-1].images, library(backend, **UNIFORM))        # the library's image, same seeds
    assert all(u.expected_change == NO_CALIBRATION_WORDS for u in ups)
    ups = list(stream_updates(backend, request(family, **PROGRESSIVE)))
    assert ups[-1].state == "done" and ups[-1].spent == 6 and [u.nfe for u in ups[:-1]] == [1, 2, 4, 6]
    assert ups[-1].outer_steps == 3 and "outer step 3/3" in ups[-1].status()   # the resolved run's outer steps
    t_start = 1.0 if backend.family.kind == "flow" else 999
    schedule = make_schedule("progressive", 6, t_start, first=2)
    assert np.array_equal(ups[-1].images, library(backend, schedule=schedule))
    prep = backend.prepare(request(family, **PROGRESSIVE), Limits())
    assert prep.run.inner_steps == (2, 2, 2) and prep.total_nfe == 6 and not prep.calibrated


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_fields_are_the_family_defaults(backends, family):
    backend = backends[family]
    d = backend.family.run_defaults()
    prep = backend.prepare(request(family), Limits())
    assert prep.run.schedule == d.schedule and prep.run.solver_name == d.inner_solver
    assert prep.run.inner_steps == (d.inner_steps,) * d.outer_steps
    assert prep.guidance == backend.family.guidance_default()
    form = backend.prepare(JobRequest(prompt="a cat", classes="0", schedule="", nfe=0, first=0, outer_steps=0,
                                      inner_steps=0, solver="", max_nfe=0, deadline=0), Limits())
    assert form.run == prep.run.replace(max_nfe=None, deadline=None)      # a form's empty/0: the default, no budget


def test_bundled_page_defaults_and_shipped_calibration():
    backend = BundledBackend()                      # the real bundled model: its shipped calibrations apply
    prep = backend.prepare(JobRequest(classes="bag,sneaker"), Limits())
    assert (prep.run.schedule, prep.run.inner_total, prep.run.guidance) == ("ramp", 100, 1.25)
    assert prep.calibrated and prep.run.calibration is not None
    ups = list(stream_updates(backend, JobRequest(classes="bag,sneaker", max_nfe=3)))
    assert ups[-1].state == "budget" and ups[-1].outer_steps == 3
    words = ups[0].expected_change
    assert words.startswith("Expected change: 1: ") and " · 2: " in words and "pixel RMSE ≈ " in words
    other = list(stream_updates(backend, JobRequest(classes="bag", outer_steps=1, inner_steps=3)))
    assert all(u.expected_change == NO_CALIBRATION_WORDS for u in other)
    assert not list(stream_updates(BundledBackend(calibration="none"), JobRequest(classes="bag", max_nfe=1)))[0] \
        .expected_change == ups[0].expected_change


def synthetic_calibration(config: dict, inner_steps, path):
    """A calibration fitted on made-up runs for ``config`` (the shown updates of previews="first")."""
    nfe = list(range(1, inner_steps[0] + 1)) + list(np.cumsum(inner_steps)[1:])
    g = torch.Generator().manual_seed(0)
    S = torch.rand(40, len(nfe), len(SIGNALS), generator=g) + 0.05
    left = torch.linspace(0.3, 0.0, len(nfe))
    targets = {"rmse": left * (1 + torch.rand(40, len(nfe), generator=g)), "semantic": left / 10 + 0 * S[..., 0]}
    cal = fit_calibration(S, targets, nfe, config, features=())
    path.write_text(json.dumps(cal.to_dict()))
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_a_matching_calibration_is_shown_per_image(backends, disk, tmp_path, family):
    plain = backends[family]
    prep = plain.prepare(request(family, **PROGRESSIVE), Limits())
    path = synthetic_calibration(plain.configuration(prep), prep.run.inner_steps, tmp_path / "cal.json")
    backend = PipelineBackend(plain.pipe, family, calibration=path)
    prep = backend.prepare(request(family, **PROGRESSIVE), Limits())
    assert prep.calibrated and prep.run.calibration is backend.calibration
    ups = list(stream_updates(backend, prep))
    n = prep.batch
    for u in ups:
        assert u.expected_change.startswith("Expected change: ") and u.expected_change.count("pixel RMSE ≈") == n
    assert "may still change a lot" in ups[0].expected_change and "settled" in ups[-1].expected_change
    other = list(stream_updates(backend, request(family, **UNIFORM)))          # another configuration: none
    assert all(u.expected_change == NO_CALIBRATION_WORDS for u in other)


def test_calibrate_a_flow_family_with_a_named_schedule_and_serve_it(disk, tmp_path, capsys):
    code = main(["calibrate", "--pipeline", "sd3", "--model-path", str(disk / "sd3"), "--prompts",
                 str(disk / "prompts.txt"), "--feature-model", "random-rgb", "--schedule", "progressive", "--nfe", "6",
                 "--first", "2", "--samples", "20", "--chunk", "20", "--threads", "1", "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    path = next((tmp_path / "out").glob("sd3-progressive-6-euler-pixel-*.json"))
    backend = load_backend("sd3", disk / "sd3", calibration=str(path))
    ups = list(stream_updates(backend, request("sd3", **PROGRESSIVE)))
    assert all(u.expected_change.startswith("Expected change: ") and "pixel RMSE ≈" in u.expected_change
               for u in ups)
    assert all(u.expected_change == NO_CALIBRATION_WORDS
               for u in stream_updates(backend, request("sd3", **PROGRESSIVE, guidance=2.0)))


@pytest.mark.parametrize("family,field,value,words", [
    ("flux", "solver", "ddpm", "solver: unknown flow solver 'ddpm'; valid: euler, heun"),
    ("sd", "solver", "euler", "solver: unknown solver 'euler'; valid: ddim"),
    ("sd3", "outer_steps", 3, "outer_steps: 3 sets a uniform split; schedule progressive takes nfe (and first)"),
    ("sdxl", "nfe", 7, "nfe: 7 NFE do not split evenly over 5 outer steps"),
    ("dit", "classes", "0,5000", "classes: 5000 is not a class id in [0, 999]"),
    ("dit", "classes", "dragon", "classes: unknown label name 'dragon'"),
    ("sdxl", "height", 12, "height: must be a multiple of 8 in [8, 768] pixels, got 12"),
    ("flux", "prompt", " ", "prompt: describe the image to generate"),
    ("sd3", "max_nfe", -4, "max_nfe: must be an integer ≥ 1"),
    ("dit", "inner_steps", 300,
     "inner_steps: 4 outer × 300 inner has an inner run of 300 steps; this server allows 1 to 250"),
    ("sd", "schedule", "zigzag", "schedule: unknown schedule 'zigzag'; valid: "),
])
def test_bad_requests_get_one_clear_error_naming_the_field(backends, family, field, value, words):
    req = request(family, **({"schedule": "progressive"} if field == "outer_steps" else {}))
    setattr(req, field, value)
    with pytest.raises(ValueError) as e:
        backends[family].prepare(req, Limits())
    assert str(e.value).startswith(field) and words in str(e.value)


def test_serve_and_calibrate_take_every_family(disk):
    import argparse

    from nested_diffusion.cli import calibrate, serve
    for add in (serve.add_parser, calibrate.add_parser):
        parser = argparse.ArgumentParser()
        add(parser.add_subparsers(dest="command"))
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        choices = next(a.choices for p in sub.choices.values() for a in p._actions if a.dest == "pipeline")
        assert tuple(choices) == family_names()
    auto = load_backend("sd3", disk / "sd3", calibration="auto")           # the pipeline families ship none
    assert auto.calibration is None and not auto.prepare(request("sd3"), Limits()).calibrated
    with pytest.raises(ValueError, match="--calibration: no such file"):
        load_backend("dit", disk / "dit", calibration=str(disk / "nope.json"))
    with pytest.raises(ValueError, match="--calibration: no such file"):
        BundledBackend(object(), calibration=str(disk / "nope.json"))


def test_the_page_starts_at_the_family_defaults(backends):
    pytest.importorskip("gradio")
    from nested_diffusion.web.app import _request, build_app
    for backend, want in ((BundledBackend(), ("ramp", 100, 1.25)), (backends["sd"], ("uniform", 100, 7.5)),
                          (backends["flux"], ("uniform", 28, 3.5))):
        demo = build_app(backend, Limits())
        comps = {c.elem_id: c for c in demo.blocks.values() if getattr(c, "elem_id", None)}
        assert (comps["nd-schedule"].value, comps["nd-nfe"].value) == want[:2]
        assert comps["nd-nfe"].visible == (want[0] != "uniform") and comps["nd-outer"].visible == (want[0] == "uniform")
        guidance = [c for c in demo.blocks.values() if getattr(c, "label", "") == "Guidance scale (inner process)"]
        assert guidance[0].value == want[2]
        demo.close()
    names = ["seed", "schedule", "nfe", "first", "outer_steps", "inner_steps"]
    req = _request(names, [1, "progressive", 60, 10, 5, 20], False)      # hidden outer × inner are not sent
    assert (req.nfe, req.first, req.outer_steps, req.inner_steps) == (60, 10, None, None)
    req = _request(names, [1, "uniform", 60, 10, 5, 20], False)          # hidden NFE budget is not sent
    assert (req.nfe, req.first, req.outer_steps, req.inner_steps) == (None, None, 5, 20)
