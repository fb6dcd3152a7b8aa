"""Expected change (issue 11): fitting, the calibration file, configuration checks, no extra NFE, live = replay,
and an exact Gaussian reference."""
import json
import math

import pytest
import torch

from nested_diffusion.bundled import FashionClassifier, TinyUNet, make_denoiser
from nested_diffusion.core.analytic import GaussianMixtureDenoiser
from nested_diffusion.core.change_fit import fit_calibration
from nested_diffusion.core.denoisers import CountingDenoiser
from nested_diffusion.core.expected_change import (SIGNALS, WORDS, Calibration, ExpectedChange, load_calibration)
from nested_diffusion.core.nested import NestedSampler
from nested_diffusion.evaluation.calibration_runs import claim_cache, run_chunk
from nested_diffusion.evaluation.expected_change import (PIXEL_SIGNALS, chunk_targets, classifier_signals, evaluate,
                                                         replay_signals)
from nested_diffusion.io import atomic_write_json

CONFIG = {"sampler": {"outer_steps": 2.0}, "model": {"guidance": 2.0}}


def synthetic(n: int, U: int = 3, seed: int = 0):
    """Signals with a known log-linear law: log D = 0.8·log(run_change) − 1 + 0.3·noise."""
    g = torch.Generator().manual_seed(seed)
    S = torch.rand(n, U, len(SIGNALS), generator=g) + 0.05
    S[:, 0, SIGNALS.index("inner_change")] = float("nan")  # not yet available at the first update
    rc = S[..., SIGNALS.index("run_change")]
    rmse = torch.exp(0.8 * torch.log(rc) - 1 + 0.3 * torch.randn(n, U, generator=g))
    sem = torch.exp(1.2 * torch.log(rc) - 3 + 0.5 * torch.randn(n, U, generator=g))
    flip = torch.rand(n, U, generator=g) < torch.sigmoid(3 * (rc - 0.5))
    rmse[:, -1] = sem[:, -1] = 0
    flip[:, -1] = False
    return S, {"rmse": rmse, "semantic": sem, "flip": flip}, [1, 2, 3][:U]


def test_no_signals_is_exactly_the_population_curve():
    S, T, nfe = synthetic(500)
    cal = fit_calibration(S, T, nfe, CONFIG, features=())
    full = fit_calibration(S, T, nfe, CONFIG)
    for j, n in enumerate(nfe[:-1]):
        for c in (cal.predict(n, S[:, j]), full.predict(n, S[:, j], use_signals=False)):
            torch.testing.assert_close(c.rmse.double(), T["rmse"][:, j].double().mean().expand(500), rtol=1e-5, atol=0)
            torch.testing.assert_close(c.semantic.double(), T["semantic"][:, j].double().mean().expand(500),
                                       rtol=1e-5, atol=0)
            rate = (T["flip"][:, j].double().sum() + 0.5) / 501
            torch.testing.assert_close(c.flip.double(), rate.expand(500), rtol=1e-5, atol=0)
            q = torch.quantile(T["rmse"][:, j].double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
            got = [float(c.rmse_low[0]), float(c.rmse_median[0]), float(c.rmse_high[0])]
            assert max(abs(a - b) for a, b in zip(got, q.tolist())) < 1e-3 * float(q[1]), (got, q)
    last = cal.predict(nfe[-1], S[:, -1])
    assert float(last.rmse.abs().max()) == 0 and float(last.flip.abs().max()) == 0


def test_per_sample_predictor_recovers_a_known_law_and_covers_80_percent():
    S, T, nfe = synthetic(3000)
    cal = fit_calibration(S, T, nfe, CONFIG, {"first_result_nfe": 1})
    m = cal.updates["1"]["rmse"]
    w = dict(zip(m["features"], m["coef"]))
    assert abs(w["run_change"] / m["sd"][m["features"].index("run_change")] - 0.8) < 0.05
    assert all(abs(v) < 0.02 for k, v in w.items() if k != "run_change")
    S2, T2, _ = synthetic(3000, seed=1)
    ev = evaluate(cal, S2, T2, nfe)
    for t in ("rmse", "semantic"):
        p = ev["pooled"]["all"][t]
        assert 0.77 < p["coverage_80"] < 0.83, p
        assert p["mae_reduction"] > 0.2 and p["mae_reduction_median"] > 0.2, p
        assert p["spearman_within_update_mean"] > 0.6, p
    assert ev["pooled"]["all"]["flip"]["brier"] < ev["pooled"]["all"]["flip"]["brier_population"] - 0.01


def test_calibration_file_round_trips_and_rejects_tampering(tmp_path):
    S, T, nfe = synthetic(300)
    cal = fit_calibration(S, T, nfe, CONFIG, {"seeds": [0, 300]})
    path = atomic_write_json(tmp_path / "c.json", cal.to_dict())
    back = load_calibration(path)
    assert back.hash == cal.hash and back.meta == cal.meta and back.updates == cal.updates
    a, b = cal.predict(2, S[:, 1]), back.predict(2, S[:, 1])
    for k in ("rmse", "rmse_median", "rmse_low", "rmse_high", "semantic", "semantic_median", "semantic_low",
              "semantic_high", "flip"):
        torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=0, atol=0)
    doc = json.loads(path.read_text())
    doc["config"]["model"]["guidance"] = 3.0
    with pytest.raises(ValueError, match="does not match its configuration"):
        Calibration.from_dict(doc)
    doc = json.loads(path.read_text())
    doc["version"] = 99
    with pytest.raises(ValueError, match="format version 99"):
        Calibration.from_dict(doc)
    with pytest.raises(ValueError, match="no fitted predictor for an update at NFE 7"):
        cal.predict(7, S[:, 0])


def tiny_setup(outer=2, inner=3, n=16, classifier=True):
    torch.manual_seed(0)
    unet = TinyUNet(channels=(16, 32)).eval()
    sampler = NestedSampler(make_denoiser(unet, 2.0), outer, inner, "ddpm")
    seeds, labels = list(range(n)), torch.arange(n) % 10
    chunk = run_chunk(sampler, seeds, (n, 1, 28, 28), labels)
    clf = FashionClassifier().eval()
    fn = classifier_signals(clf) if classifier else None
    S = replay_signals(chunk, sampler.inner_steps, fn)
    T = chunk_targets(chunk, lambda x: fn(x)[0], lambda x: fn(x)[1]) if classifier else None
    return sampler, chunk, S, T, fn, labels


def test_mismatched_configuration_is_refused():
    sampler, chunk, S, T, fn, labels = tiny_setup()
    other = NestedSampler(sampler.denoiser, 3, 2, "ddpm")
    cal = fit_calibration(S, T, [int(n) for n in chunk["nfe"]],
                          {"sampler": other.calibration_settings(), "model": {"guidance": 2.0}}, features=PIXEL_SIGNALS)
    with pytest.raises(ValueError, match=rf"made for configuration {cal.hash}.*outer_steps: calibration 3, here 2"):
        next(sampler.stream([0, 1], (2, 1, 28, 28), labels[:2], calibration=cal))
    with pytest.raises(ValueError, match="previews: calibration 'first', here 'none'"):
        next(other.stream([0, 1], (2, 1, 28, 28), labels[:2], calibration=cal, previews="none"))
    with pytest.raises(ValueError, match="model.guidance: calibration 2, here 3"):
        cal.check(other.calibration_settings(), {"guidance": 3.0})
    with pytest.raises(ValueError, match="holds chunks of configuration"):
        claim_cache_twice(cal)


def claim_cache_twice(cal, tmp=None):
    import tempfile
    from pathlib import Path
    d = Path(tempfile.mkdtemp())
    claim_cache(d, cal.config)
    claim_cache(d, cal.config)  # same configuration: fine
    claim_cache(d, {"sampler": {}, "model": {}})


@pytest.mark.parametrize("feature_signals", [False, True])
def test_live_stream_equals_replay_and_costs_no_extra_nfe(feature_signals):
    sampler, chunk, S, T, fn, labels = tiny_setup()
    nfe = [int(n) for n in chunk["nfe"]]
    cal = fit_calibration(S, T, nfe, {"sampler": sampler.calibration_settings(), "model": {}},
                          features=None if feature_signals else PIXEL_SIGNALS)
    assert cal.uses_feature_signals() == feature_signals
    if feature_signals:
        with pytest.raises(ValueError, match="attach the feature function"):
            next(sampler.stream([0], (1, 1, 28, 28), labels[:1], calibration=cal))
        cal.features = fn
    counted = CountingDenoiser(sampler.denoiser)
    s2 = NestedSampler(counted, 2, 3, "ddpm")
    plain = list(s2.stream(list(range(16)), (16, 1, 28, 28), labels))
    n_plain = counted.nfe
    live = list(s2.stream(list(range(16)), (16, 1, 28, 28), labels, calibration=cal))
    assert counted.nfe - n_plain == n_plain == s2.total_nfe  # no extra NFE
    assert [u.nfe for u in live] == nfe and all(u.expected_change is None for u in plain)
    for j, (u, p) in enumerate(zip(live, plain)):
        torch.testing.assert_close(u.x0, p.x0, rtol=0, atol=0)
        ref = cal.predict(u.nfe, S[:, j])
        for k in ("rmse", "semantic_high", "flip"):
            torch.testing.assert_close(getattr(u.expected_change, k), getattr(ref, k), rtol=1e-5, atol=1e-6)
    info = live[0].info()
    assert set(info["expected_change"][0]) == {"rmse", "rmse_median", "rmse_80", "semantic", "semantic_median",
                                               "semantic_80", "flip", "wording"}
    json.dumps(info)
    fin = live[-1].expected_change
    assert float(fin.rmse.abs().max()) == 0 and fin.wording(0) == "settled"


def test_wording_thresholds():
    z = torch.zeros(5)
    ec = ExpectedChange(rmse=torch.tensor([0.005, 0.03, 0.25, 0.01, 0.01]), rmse_median=z, rmse_low=z,
                        rmse_high=torch.tensor([0.01, 0.05, 0.3, 0.019, 0.019]),
                        semantic=torch.tensor([0.0, 0.01, 0.0, 0.06, 0.0]), semantic_median=z, semantic_low=z,
                        semantic_high=z, flip=torch.tensor([0.01, 0.1, 0.0, 0.0, 0.3]))
    assert [ec.wording(i) for i in range(5)] == [WORDS[0], WORDS[1], WORDS[2], WORDS[2], WORDS[2]]
    ec.flip = torch.tensor([0.06, 0.0, 0.0, 0.0, 0.0])
    assert ec.wording(0) == WORDS[1]
    assert "(1 settled, 2 details may still change, 2 may still change a lot)" in ec.summary()


def gaussian_reference(sampler, mu, s):
    """Closed form for data N(mu, s² I) and an exact denoiser with DDIM η = 0 (inner and outer): every state is
    x_t = √ᾱ mu + c z for one standard z, so each update is x̂ = mu + k z with k known; D = |k − k_final|·|z|."""
    S = sampler.denoiser.schedule
    ks, c = [], 1.0
    times = sampler.times
    for k, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        grid, ci = sampler.solver.inner.grid(t, sampler.inner_steps[k], "clean"), c
        for i, (u, u_next) in enumerate(zip(grid[:-1], grid[1:])):
            a, a2 = S.alpha_bar(u), S.alpha_bar(u_next)
            var = a * s * s + 1 - a
            gain = s * s * math.sqrt(a) / var                # x̂0 = mu + gain·ci z
            if k == 0 or i == len(grid) - 2:
                ks.append(gain * ci if i < len(grid) - 2 else None)
            ci = ci * (math.sqrt(a * a2) * s * s + math.sqrt((1 - a) * (1 - a2))) / var
        ks[-1] = ci                                           # the inner result = the inner run's end state
        a, a2 = S.alpha_bar(t), S.alpha_bar(t_next)
        c = math.sqrt(a2) * ci + math.sqrt(1 - a2) * (c - math.sqrt(a) * ci) / math.sqrt(1 - a)
    return [abs(k - ks[-1]) for k in ks]


@pytest.mark.parametrize("outer,inner", [(1, 30), (3, 6)])
def test_exact_gaussian_realised_change_matches_closed_form(outer, inner):
    d, s, mu, n = 256, 0.5, 0.1, 200
    den = GaussianMixtureDenoiser(torch.full((1, d), mu), [s])
    sampler = NestedSampler(den, outer, inner, "ddim", inner_eta=0.0)
    chunk = run_chunk(sampler, list(range(n)), (n, 1, 16, 16))
    T = chunk_targets(chunk, lambda x: x.flatten(1) - mu, lambda x: x.flatten(1)[:, :3])
    ref = gaussian_reference(sampler, mu, s)
    assert len(ref) == len(chunk["nfe"])
    chi = math.sqrt(2 / d) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2))  # E sqrt(χ²_d / d)
    for j, k in enumerate(ref):
        want = k * chi / 2  # RMSE on [0, 1] = half the RMSE on [−1, 1]
        assert abs(float(T["rmse"][:, j].mean()) - want) <= 0.02 * want + 1e-5, (j, want)
    S = replay_signals(chunk, sampler.inner_steps)
    cal = fit_calibration(S, T, [int(x) for x in chunk["nfe"]], {"sampler": sampler.calibration_settings(),
                                                                 "model": {}})
    last = list(sampler.stream(list(range(4)), (4, 1, 16, 16), calibration=cal))[-1]
    assert last.final and float(last.expected_change.rmse.abs().max()) == 0
    assert float(last.expected_change.rmse_high.abs().max()) == 0


def test_calibrate_cli_resumes_and_generate_shows_expected_change(tmp_path, capsys):
    from nested_diffusion.cli.main import main
    cache, out = tmp_path / "cache", tmp_path / "cal"
    args = ["calibrate", "--outer", "2", "--inner", "3", "--samples", "20", "--chunk", "10", "--heldout", "20",
            "--cache-dir", str(cache), "--out", str(out), "--threads", "1", "--signals", "pixel"]
    assert main(args) == 0
    log = capsys.readouterr().out
    assert log.count("samples in") == 4 and "MAE" in log
    assert main(args) == 0
    assert "samples in" not in capsys.readouterr().out  # every chunk cached: nothing re-run
    cal_file = next(out.glob("2x3-ddpm-pixel-*.json"))
    doc = json.loads(cal_file.read_text())
    assert doc["meta"]["samples"] == 20 and doc["meta"]["seeds"] == [100000, 100020]
    assert doc["config"]["sampler"]["outer_steps"] == 2 and "weights" in doc["config"]["model"]
    g = tmp_path / "g"
    assert main(["generate", "--out", str(g), "--classes", "0,7", "--outer", "2", "--inner", "3", "--threads", "1",
                 "--calibration", str(cal_file)]) == 0
    lines = capsys.readouterr().out
    assert "expected change: rmse" in lines
    ups = json.loads((g / "updates.json").read_text())["updates"]
    assert len(ups[0]["expected_change"]) == 2 and ups[-1]["expected_change"][0]["wording"] == "settled"
    assert main(["generate", "--out", str(g), "--classes", "0", "--outer", "3", "--inner", "3", "--threads", "1",
                 "--calibration", str(cal_file), "--quiet"]) == 2
    assert "error: calibration: made for configuration" in capsys.readouterr().err
    assert main(["generate", "--out", str(g), "--classes", "0", "--outer", "2", "--inner", "3", "--threads", "1",
                 "--calibration", "none", "--quiet"]) == 0
    assert json.loads((g / "updates.json").read_text())["updates"][0]["expected_change"] is None
    bad = ["calibrate", "--outer", "3", "--inner", "3", "--samples", "20", "--cache-dir", str(cache), "--out", str(out)]
    assert main(bad) == 2 and "holds chunks of configuration" in capsys.readouterr().err
    # --evaluate measures an existing file on held-out seeds without fitting: the same numbers as at fit time
    ev_file = next(out.glob("evaluation-*-pixel.json"))
    fitted_eval = json.loads(ev_file.read_text())
    ev_file.unlink()
    fresh = tmp_path / "cache-evaluate"
    again = ["calibrate", "--outer", "2", "--inner", "3", "--heldout", "20", "--chunk", "10", "--cache-dir",
             str(fresh), "--out", str(out), "--threads", "1", "--evaluate", str(cal_file)]
    assert main(again) == 0
    assert capsys.readouterr().out.count("samples in") == 2  # the held-out chunks only
    assert sorted(f.name for f in fresh.glob("chunk-*")) == ["chunk-200000-200009.npz", "chunk-200010-200019.npz"]
    assert json.loads(ev_file.read_text())["pooled"] == fitted_eval["pooled"]
    assert main(again[:-1] + [str(cal_file)] + ["--heldout-seed", "100010"]) == 2
    assert "overlap the seeds [100000, 100020)" in capsys.readouterr().err
    other = ["calibrate", "--outer", "2", "--inner", "4", "--heldout", "10", "--cache-dir", str(tmp_path / "c2"),
             "--out", str(out), "--evaluate", str(cal_file)]
    assert main(other) == 2 and "--evaluate:" in capsys.readouterr().err
    assert main(again[:again.index("--heldout")] + again[again.index("--chunk"):]) == 2
    assert "give --heldout N" in capsys.readouterr().err


def test_pipeline_outputs_carry_the_field_with_default_none():
    import dataclasses
    pytest.importorskip("diffusers")
    from nested_diffusion.pipelines.dit import NestedImagePipelineOutput
    f = {x.name: x for x in dataclasses.fields(NestedImagePipelineOutput)}
    assert f["expected_change"].default is None
    assert NestedImagePipelineOutput(images=[]).expected_change is None


def test_entropy_and_margin_signals():
    from nested_diffusion.core.expected_change import entropy, margin
    logits = torch.tensor([[0.0, 0.0], [10.0, 0.0], [2.0, 1.0]])
    torch.testing.assert_close(entropy(logits)[0], torch.tensor(math.log(2)))
    assert float(entropy(logits)[1]) < 1e-3 and 0 < float(entropy(logits)[2]) < math.log(2)
    torch.testing.assert_close(margin(logits), torch.tensor([0.0, 10.0, 1.0]))


def test_shipped_calibrations_load_and_match_their_configurations():
    from nested_diffusion.bundled import DEFAULT_GUIDANCE, load_unet
    from nested_diffusion.bundled.expected_change import resolve_calibration, shipped_calibrations
    files = shipped_calibrations()
    assert {(p.name.split("-")[0], p.name.split("-")[2]) for p in files} >= {
        (c, s) for c in ("5x20", "10x20", "2x100") for s in ("pixel", "feature")}
    for p in files:
        cal = load_calibration(p)
        assert p.stem.endswith(cal.hash) and cal.meta["samples"] >= 300
    unet = load_unet()
    demo = NestedSampler(make_denoiser(unet, DEFAULT_GUIDANCE), 5, 20, "ddpm")
    cal = resolve_calibration("auto", demo, unet, DEFAULT_GUIDANCE)
    assert cal is not None and not cal.uses_feature_signals() and cal.meta["samples"] == 600
    cal = resolve_calibration("feature", demo, unet, DEFAULT_GUIDANCE)
    assert cal.uses_feature_signals() and cal.features is not None and cal.meta["samples"] == 600
    other = NestedSampler(make_denoiser(unet, DEFAULT_GUIDANCE), 4, 20, "ddpm")
    assert resolve_calibration("auto", other, unet, DEFAULT_GUIDANCE) is None
    with pytest.raises(ValueError, match="model.guidance"):
        resolve_calibration("auto", demo, unet, 3.0) or cal.check(demo.calibration_settings(), {
            "weights": cal.config["model"]["weights"], "guidance": 3.0})
