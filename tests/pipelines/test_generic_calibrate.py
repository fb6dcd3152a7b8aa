"""Expected change for a generic family (a stock diffusers pipeline through ``NestedScheduler``): ``nested-diffusion
calibrate --pipeline FAMILY`` runs the calibration through ``pipelines.factories_generic`` (``anytime(...,
decode=False)``), and ``anytime(pipe, ..., calibration=)`` of a matching call attaches an ``ExpectedChange`` to
every update, from signals on the x̂0 latents it tracks itself.

A toy generic family over FLUX.1's stock ``FluxPipeline`` (tiny, with tokenizers: the table's generic fixtures have
none), registered for the test as ``tests/cli/test_generate_families.py`` does. Tolerance: the run-time prediction
of an update against the calibration's prediction from the signals replayed on the calibration's own cached run of
the same seed and prompt — same latents up to batch composition (the calibration ran a batch of 4, the call runs
one): ≤ 1e-4 absolute on the predicted RMSE (float32 on CPU)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from fixtures_any import TOY_GENERIC, toy_generic_family  # noqa: E402

from nested_diffusion import anytime, cli  # noqa: E402
from nested_diffusion.core.expected_change import load_calibration  # noqa: E402
from nested_diffusion.evaluation.expected_change import load_chunks, replay_signals  # noqa: E402
from nested_diffusion.families import get_family  # noqa: E402

torch.set_num_threads(1)
TOY = TOY_GENERIC


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    with toy_generic_family(tmp_path_factory.mktemp("generic-cal")) as d:
        yield d


@pytest.fixture(scope="module")
def calibrated(toy):
    argv = ["calibrate", "--pipeline", TOY, "--model-path", str(toy / TOY), "--prompts", str(toy / "prompts.txt"),
            "--height", "16", "--width", "16", "--feature-model", "random-rgb", "--outer", "2",
            "--inner", "2", "--samples", "20", "--seed", "0", "--chunk", "4", "--out", str(toy / "out"),
            "--cache-dir", str(toy / "cache"), "--threads", "1"]
    assert cli.main(argv) == 0
    files = list((toy / "out").glob(f"{TOY}-2x2-*.json"))
    assert len(files) == 1, files
    return files[0]


def test_the_generic_image_families_are_calibrated():
    for name in ("flux2", "flux2-klein", "qwen-image", "z-image", "chroma", "hidream"):
        assert "calibrate" in get_family(name).surfaces
    assert "calibrate" not in get_family("wan").surfaces


def test_a_matching_call_shows_the_calibrations_expected_change(toy, calibrated):
    cal = load_calibration(calibrated)
    assert sorted(int(n) for n in cal.updates) == [1, 2, 4]          # previews of run 1, then each inner result
    pipe = get_family(TOY).load(toy / TOY)
    ups = list(anytime(pipe, prompt=["a photo of a cat"], height=16, width=16, outer_steps=2, inner_steps=2,
                       seed=[0], generator=[torch.Generator().manual_seed(0)], calibration=calibrated))
    assert [u.nfe for u in ups] == [1, 2, 4]
    assert all(u.expected_change is not None and len(u.expected_change) == 1 for u in ups)
    assert all(u.expected_change.calibration == cal.hash for u in ups)
    # the same predictions as the calibration's own run of seed 0 (prompt 0) replayed
    chunk = load_chunks([toy / "cache" / "chunk-0-3.npz"])
    signals = replay_signals(chunk, [2, 2])[0:1]                       # (1, U, S): seed 0
    for j, u in enumerate(ups):
        want = cal.predict(u.nfe, signals[:, j])
        assert abs(float(u.expected_change.rmse[0]) - float(want.rmse[0])) <= 1e-4, (u.nfe, u.expected_change, want)
    assert float(ups[-1].expected_change.rmse[0]) <= float(ups[0].expected_change.rmse[0])
    without = list(anytime(pipe, prompt=["a photo of a cat"], height=16, width=16, outer_steps=2, inner_steps=2,
                           seed=[0], generator=[torch.Generator().manual_seed(0)]))
    assert all(u.expected_change is None for u in without)
    assert torch.equal(without[-1].x0, ups[-1].x0)                    # tracking changes nothing in the run


@pytest.mark.parametrize("call, words", [
    (dict(outer_steps=1, inner_steps=4), "calibration: made for configuration"),
    (dict(outer_steps=2, inner_steps=2, guidance_scale=7.0), "model.guidance"),
    (dict(outer_steps=2, inner_steps=2, height=32, width=32), "model.size"),
    (dict(outer_steps=2, inner_steps=2, previews="all"), "sampler.previews"),
    (dict(outer_steps=2, inner_steps=2, inner_eta="fresh"), "calibration: calibrations of generic families"),
])
def test_a_calibration_of_another_configuration_is_refused_before_any_model_call(toy, calibrated, call, words,
                                                                                 monkeypatch):
    pipe = get_family(TOY).load(toy / TOY)
    monkeypatch.setattr(pipe.transformer, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("call")))
    with pytest.raises(ValueError, match=words):
        anytime(pipe, prompt=["a cat"], calibration=calibrated, **{"height": 16, "width": 16, **call})


def test_serve_shows_the_expected_change_of_a_matching_calibration(toy, calibrated):
    from nested_diffusion.web import JobRequest, load_backend, stream_updates
    from nested_diffusion.web.render import NO_CALIBRATION_WORDS
    backend = load_backend(TOY, toy / TOY, calibration=str(calibrated))
    job = JobRequest(prompt="a photo of a cat", seed=0, height=16, width=16, outer_steps=2, inner_steps=2)
    ups = list(stream_updates(backend, job))
    assert all(u.expected_change.startswith("Expected change: ") and "pixel RMSE ≈" in u.expected_change
               for u in ups)
    other = list(stream_updates(backend, JobRequest(prompt="a cat", height=16, width=16, outer_steps=1,
                                                    inner_steps=3)))
    assert all(u.expected_change == NO_CALIBRATION_WORDS for u in other)


def test_generate_records_the_expected_change(toy, calibrated, tmp_path):
    out = tmp_path / "g"
    argv = ["generate", "--pipeline", TOY, "--model-path", str(toy / TOY), "--out", str(out), "--quiet",
            "--prompt", "a photo of a cat", "--height", "16", "--width", "16", "--outer", "2", "--inner", "2",
            "--seed", "0", "--calibration", str(calibrated)]
    assert cli.main(argv) == 0
    doc = json.loads((out / "updates.json").read_text())
    assert doc["settings"]["calibration"] == str(calibrated) and [u["nfe"] for u in doc["updates"]] == [1, 2, 4]
    assert all(len(u["expected_change"]) == 1 and np.isfinite(u["expected_change"][0]["rmse"])
               for u in doc["updates"])
