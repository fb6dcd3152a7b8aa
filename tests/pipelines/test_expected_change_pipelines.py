"""Expected change for the diffusers pipelines (issue 11): `calibrate --pipeline sd|dit` on tiny random-weight
pipelines saved to disk (resumable, hash-stamped, round-trips), the pipelines' ``calibration=`` (every output
carries per-sample predictions equal to a replay of the calibration chunk; the final predicts no change; another
configuration is refused before any model call), calibrations without a flip target, and bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402

from fixtures_tiny import tiny_clip, tiny_dit, tiny_sd  # noqa: E402
from nested_diffusion.cli.main import main  # noqa: E402
from nested_diffusion.core.change_fit import fit_calibration  # noqa: E402
from nested_diffusion.core.expected_change import (SIGNALS, Calibration, ExpectedChange,  # noqa: E402
                                                   load_calibration)
from nested_diffusion.evaluation.expected_change import replay_signals  # noqa: E402
from nested_diffusion.pipelines import NestedDiTPipeline, NestedStableDiffusionPipeline  # noqa: E402
from nested_diffusion.pipelines.factories import sampled_fingerprint  # noqa: E402

PROMPTS = ["a photo of a cat", "a red dog", "the blue cat"]
SEED = 100000
COMMON = ["--outer", "2", "--inner", "3", "--samples", "20", "--chunk", "10", "--threads", "1"]


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipes")
    tiny_sd().save_pretrained(d / "sd")
    NestedDiTPipeline.from_pipe(tiny_dit()).save_pretrained(d / "dit")  # keeps id2label: named classes
    (d / "clip").mkdir()
    tiny_clip(str(d / "clip"))
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return d


def load(cls, path, **kw):
    pipe = cls.from_pretrained(path, local_files_only=True, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def calibrate(disk, tmp, pipeline, *extra):
    cond = (["--prompts", str(disk / "prompts.txt")] if pipeline == "sd" else ["--class-labels", "0-3"])
    return main(["calibrate", "--pipeline", pipeline, "--model-path", str(disk / pipeline), *cond, "--feature-model",
                 str(disk / "clip"), *COMMON, "--cache-dir", str(tmp / "cache"), "--out", str(tmp / "out"), *extra])


def generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


class Calls:
    """Counts forward calls of a module."""

    def __init__(self, module):
        self.n = 0
        self.h = module.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))


def check_resume_and_round_trip(tmp, capsys, first_log, rerun):
    assert first_log.count("samples in") == 2 and first_log.count("targets of") == 2
    chunks = sorted((tmp / "cache").glob("*.npz"))
    assert len(chunks) == 4                                      # 2 run chunks + their 2 target files
    stamps = {p: p.stat().st_mtime_ns for p in chunks}
    assert rerun() == 0
    log = capsys.readouterr().out
    assert "samples in" not in log and "targets of" not in log   # every chunk and its targets cached
    assert {p: p.stat().st_mtime_ns for p in chunks} == stamps
    path = next((tmp / "out").glob("*.json"))
    doc = json.loads(path.read_text())
    cal = load_calibration(path)
    assert path.stem.endswith(cal.hash) and cal.to_dict() == doc
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))).hash == cal.hash
    return path, doc, cal


# ------------------------------------------------------------------------------------------ Stable Diffusion
def test_sd_calibrate_resumes_and_the_pipeline_predicts_per_sample(disk, tmp_path, capsys):
    assert calibrate(disk, tmp_path, "sd") == 0
    path, doc, cal = check_resume_and_round_trip(tmp_path, capsys, capsys.readouterr().out,
                                                 lambda: calibrate(disk, tmp_path, "sd"))
    assert path.name.startswith("sd-2x3-ddim-pixel-")
    pipe = load(NestedStableDiffusionPipeline, disk / "sd", safety_checker=None, requires_safety_checker=False)
    model = doc["config"]["model"]
    assert model == {"pipeline": "sd", "weights": sampled_fingerprint(pipe.unet, pipe.vae, pipe.text_encoder),
                     "guidance": 7.5, "guidance_rescale": 0, "size": [16, 16]}
    assert doc["config"]["sampler"]["inner_steps"] == [3, 3] and doc["config"]["calibration_set"]["prompts"][
        "count"] == 3
    assert doc["meta"]["samples"] == 20 and doc["meta"]["feature_network"].startswith("clip-image-")
    assert doc["meta"]["flip"].startswith("none") and not cal.has_flip
    assert sorted(doc["updates"], key=int) == ["1", "2", "3", "6"]
    assert all(e["flip"] == {"absent": True} for e in doc["updates"].values())

    # live predictions of a pipeline call == the calibration applied to the replayed chunk of the same samples
    seeds = [SEED, SEED + 1]
    prompts = [PROMPTS[s % 3] for s in seeds]
    unet = Calls(pipe.unet)
    outs = list(pipe.iter_anytime(prompts, outer_steps=2, inner_steps=3, calibration=str(path), output_type="pt",
                                  generator=generators(seeds)))
    assert unet.n == 6 and [o.nfe for o in outs] == [1, 2, 3, 6]
    chunk = dict(np.load(sorted((tmp_path / "cache").glob("chunk-*.npz"))[0]))
    S = replay_signals(chunk, [3, 3])
    for j, o in enumerate(outs):
        ec = o.expected_change
        assert isinstance(ec, ExpectedChange) and ec.calibration == cal.hash and len(ec) == 2
        for name in ("rmse", "rmse_median", "rmse_low", "rmse_high", "semantic", "semantic_low", "semantic_high",
                     "flip"):
            assert tuple(getattr(ec, name).shape) == (2,), name
        assert bool(torch.isnan(ec.flip).all()) and not ec.has_flip       # SD: no classifier, no flip
        assert ec.sample(0)["flip"] is None and "no flip prediction" in ec.summary()
        torch.testing.assert_close(o.latents.float(), torch.as_tensor(chunk["updates"][:2, j]), atol=1e-3, rtol=0)
        ref = cal.predict(o.nfe, S[:2, j])
        torch.testing.assert_close(ec.rmse, ref.rmse, atol=1e-5, rtol=1e-2)   # batch of 2 vs 10: float noise
        torch.testing.assert_close(ec.semantic_high, ref.semantic_high, atol=1e-6, rtol=1e-2)
    assert bool((outs[0].expected_change.rmse > 0).all())
    assert bool((outs[0].expected_change.rmse_high >= outs[0].expected_change.rmse_low).all())
    last = outs[-1].expected_change
    assert outs[-1].final and float(last.rmse.abs().max()) == 0 and float(last.rmse_high.abs().max()) == 0
    assert float(last.semantic.abs().max()) == 0 and last.wording(0) == "settled"
    final = pipe(prompts, outer_steps=2, inner_steps=3, calibration=cal, generator=generators(seeds),
                 output_type="pt")
    assert float(final.expected_change.rmse.abs().max()) == 0 and len(final.expected_change) == 2
    assert pipe(prompts, outer_steps=2, inner_steps=3, output_type="pt").expected_change is None

    # another configuration: refused before the text encoder or the UNet runs
    text, unet = Calls(pipe.text_encoder), Calls(pipe.unet)
    for kw, msg in ((dict(guidance_scale=5.0), "model.guidance: calibration 7.5, here 5"),
                    (dict(outer_steps=3, inner_steps=2), "sampler.inner_steps: calibration .3, 3., here .2, 2, 2."),
                    (dict(height=24, width=24), r"model.size: calibration \[16, 16\], here \[24, 24\]"),
                    (dict(previews="none"), "previews: calibration 'first', here 'none'")):
        args = {"outer_steps": 2, "inner_steps": 3, **kw}
        with pytest.raises(ValueError, match=rf"made for configuration {cal.hash}.*{msg}"):
            pipe(prompts, calibration=cal, **args)
        with pytest.raises(ValueError, match=msg):
            pipe.iter_anytime(prompts, calibration=str(path), **args)
    assert text.n == 0 and unet.n == 0
    with pytest.raises(ValueError, match="calibration: no such file"):
        pipe("a cat", calibration=str(tmp_path / "missing.json"))
    with pytest.raises(TypeError, match="calibration: expected None, auto, feature, none, a file or a Calibration"):
        pipe("a cat", calibration=3)


# ------------------------------------------------------------------------------------------ DiT
def test_dit_calibrate_with_zero_shot_flip_and_the_pipeline_predicts(disk, tmp_path, capsys):
    assert calibrate(disk, tmp_path, "dit") == 0
    path, doc, cal = check_resume_and_round_trip(tmp_path, capsys, capsys.readouterr().out,
                                                 lambda: calibrate(disk, tmp_path, "dit"))
    assert path.name.startswith("dit-2x3-ddpm-pixel-")
    pipe = load(NestedDiTPipeline, disk / "dit")
    assert doc["config"]["model"] == {"pipeline": "dit", "weights": sampled_fingerprint(pipe.transformer, pipe.vae),
                                      "guidance": 1.5, "guided_channels": 3}
    assert doc["config"]["calibration_set"]["class_labels"]["count"] == 4
    assert doc["meta"]["flip"].startswith("zero-shot clip-image-") and "4 class names" in doc["meta"]["flip"]
    assert cal.has_flip and "absent" not in doc["updates"]["1"]["flip"]
    chunk = dict(np.load(sorted((tmp_path / "cache").glob("chunk-*.npz"))[0]))
    assert np.isfinite(chunk["var"]).all()                       # DiT's learned variance feeds the var signals
    assert chunk["labels"].tolist()[:4] == [SEED % 4, (SEED + 1) % 4, (SEED + 2) % 4, (SEED + 3) % 4]

    seeds = [SEED + 2, SEED + 3]
    labels = [s % 4 for s in seeds]
    outs = list(pipe.iter_anytime(labels, outer_steps=2, inner_steps=3, calibration=cal, output_type="latent",
                                  generator=generators(seeds)))
    S = replay_signals(chunk, [3, 3])
    assert [o.nfe for o in outs] == [1, 2, 3, 6]
    for j, o in enumerate(outs):
        ec = o.expected_change
        assert len(ec) == 2 and tuple(ec.flip.shape) == (2,) and bool(((ec.flip >= 0) & (ec.flip <= 1)).all())
        ref = cal.predict(o.nfe, S[2:4, j])
        torch.testing.assert_close(ec.rmse, ref.rmse, atol=1e-5, rtol=1e-2)
        torch.testing.assert_close(ec.flip, ref.flip, atol=1e-6, rtol=1e-2)
    assert float(outs[0].expected_change.flip.min()) > 0
    last = outs[-1].expected_change
    assert float(last.rmse.abs().max()) == 0 and float(last.flip.abs().max()) == 0
    assert isinstance(pipe(labels, outer_steps=2, inner_steps=3, calibration=str(path)).expected_change,
                      ExpectedChange)

    calls = Calls(pipe.transformer)
    for kw, msg in ((dict(guided_channels=None), "model.guided_channels: calibration 3, here None"),
                    (dict(guidance_scale=4.0), "model.guidance: calibration 1.5, here 4"),
                    (dict(inner_solver="ddim"), "sampler.inner_solver: calibration 'ddpm', here 'ddim'")):
        with pytest.raises(ValueError, match=rf"made for configuration {cal.hash}.*{msg}"):
            pipe(labels, outer_steps=2, inner_steps=3, calibration=cal, **kw)
    assert calls.n == 0

    # the evaluation runners' PipelineSampler passes the calibration through to the pipeline
    from nested_diffusion.pipelines.factories import dit_factory
    sampler = dit_factory(pipe, "0-3").build(2, 3)
    ups = list(sampler.stream(seeds, (2, 4, 8, 8), labels, calibration=cal))
    torch.testing.assert_close(ups[1].expected_change.rmse, outs[1].expected_change.rmse)
    with pytest.raises(ValueError, match="sampler.outer_steps: calibration 2, here 3"):
        next(dit_factory(pipe, "0-3").build(3, 2).stream(seeds, (2, 4, 8, 8), labels, calibration=cal))


def test_a_cache_of_another_configuration_is_refused(disk, tmp_path, capsys):
    assert calibrate(disk, tmp_path, "dit") == 0
    capsys.readouterr()
    assert calibrate(disk, tmp_path, "dit", "--guidance", "3") == 2
    assert "holds chunks of configuration" in capsys.readouterr().err
    assert calibrate(disk, tmp_path, "dit", "--class-labels", "0-2") == 2   # the labels source is in the hash
    assert "holds chunks of configuration" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bad input
def test_bad_calibrate_input_exits_2_with_a_clear_message(disk, tmp_path, capsys):
    sd = ["--pipeline", "sd", "--model-path", str(disk / "sd")]
    dit = ["--pipeline", "dit", "--model-path", str(disk / "dit")]
    fm = ["--feature-model", "random-rgb"]
    cases = (
        (["--pipeline", "sd", "--prompts", "p.txt", *fm], "--model-path: required with --pipeline sd"),
        ([*sd, *fm], "--prompts: required with --pipeline sd"),
        ([*sd, "--prompts", str(disk / "prompts.txt"), "--class-labels", "0-3", *fm],
         "--class-labels: '0-3' is for class-conditioned families; --pipeline sd takes --prompts"),
        ([*dit, *fm], "--class-labels: required with --pipeline dit"),
        ([*dit, "--class-labels", "0-3", "--prompts", str(disk / "prompts.txt"), *fm], "is for prompt families; --pipeline dit takes --class-labels"),
        ([*dit, "--class-labels", "0-3"], "--feature-model: required with --pipeline dit"),
        ([*dit, "--class-labels", "0-3", "--feature-model", str(tmp_path / "nope")],
         "--feature-model: '" + str(tmp_path / "nope") + "' is not a folder"),
        ([*dit, "--class-labels", "0-3", *fm, "--signals", "feature"], "--signals: 'feature' is not available"),
        ([*dit, "--class-labels", "0-3", *fm, "--heldout", "5"], "--heldout: 5 held-out samples"),
        ([*dit, "--class-labels", "0-3", *fm, "--model", "unet/"], "--model: 'unet/' is for --pipeline bundled"),
        (["--pipeline", "dit", "--model-path", str(tmp_path), "--class-labels", "0-3", *fm],
         "model_index.json missing"),
        ([*sd, "--prompts", str(tmp_path / "none.txt"), *fm], "--prompts: no file at"),
        ([*dit, "--class-labels", "0-3000", *fm], "class_labels: 1000 is not a class id in [0, 999]"),
        (["--model-path", str(disk / "sd")], "--model-path: '" + str(disk / "sd") + "' is only for the pipeline families (sd, dit, sdxl, sd3, flux, "),
    )
    for argv, msg in cases:
        code = main(["calibrate", *argv, *COMMON, "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]                      # (loading progress bars may come first)
        assert code == 2 and last.startswith("error: ") and msg in last, (argv, err)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ no flip target
def test_a_calibration_without_flip_predicts_nan_flip_and_words_by_the_distances(tmp_path):
    g = torch.Generator().manual_seed(0)
    S = torch.rand(40, 2, len(SIGNALS), generator=g) + 0.05
    rmse = torch.stack([0.01 * torch.rand(40, generator=g), torch.zeros(40)], 1)
    sem = torch.stack([0.001 * torch.rand(40, generator=g), torch.zeros(40)], 1)
    config = {"sampler": {"outer_steps": 2}, "model": {"guidance": 1.0}, "calibration_set": {"prompts": "x"}}
    cal = fit_calibration(S, {"rmse": rmse, "semantic": sem}, [1, 2], config, features=())
    assert not cal.has_flip
    p = cal.predict(1, S[:, 0])
    assert bool(torch.isnan(p.flip).all()) and not p.has_flip and bool((p.rmse > 0).all())
    assert p.wording(0) == "settled"                       # small RMSE: settled although no flip is predicted
    big = fit_calibration(S, {"rmse": rmse * 100, "semantic": sem}, [1, 2], config, features=())
    assert big.predict(1, S[:, 0]).wording(0) == "may still change a lot"
    assert math.isnan(float(cal.predict(2, S[:, 1]).flip[0]))
    cal.check({"outer_steps": 2}, {"guidance": 1.0})       # the calibration set is hashed, not checked at run time
    with pytest.raises(ValueError, match="model.guidance: calibration 1, here 2"):
        cal.check({"outer_steps": 2}, {"guidance": 2.0})
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cal.to_dict()))
    again = load_calibration(path)
    assert again.hash == cal.hash != Calibration({"sampler": {"outer_steps": 2}, "model": {"guidance": 1.0}},
                                                 {}).hash
    assert json.loads(json.dumps(again.predict(1, S[:3, 0]).to_list()))[0]["flip"] is None
    with pytest.raises(ValueError, match=r"targets\['flip'\]: expected shape \(40, 2\)"):
        fit_calibration(S, {"rmse": rmse, "semantic": sem, "flip": torch.zeros(3, 2)}, [1, 2], config)
