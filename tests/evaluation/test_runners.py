"""Experiment runners and the `eval` CLI on tiny problems: JSON schema, plots, FD from one run per configuration,
resume without recomputation, consistency metrics (built-in, plug-in, optional ones failing clearly)."""
import argparse
import json
import math

import pytest
import torch
from PIL import Image

from nested_diffusion.cli import eval as cli_eval
from nested_diffusion.evaluation.auc import anytime_auc
from nested_diffusion.evaluation.consistency import (MSEDistance, build_consistency_metrics,
                                                     evaluate_metric)
from nested_diffusion.bundled.features import ClassifierFeatures
from nested_diffusion.evaluation.features import dequantize, extract_features, quantize
from nested_diffusion.evaluation.frechet import FeatureStats, frechet_distance
from nested_diffusion.evaluation.reference import reference_from_images
from nested_diffusion.evaluation.runners import run_budget_table, run_consistency, run_qualitative, run_rnd_sweep
from nested_diffusion.evaluation.snapshots import collect_snapshots
from toy import calibrated_classifier
from toy import mixture_images, toy_factory
from nested_diffusion.bundled import TinyUNet

CONFIGS = "1x24,3x8,4x6"
N = 24


@pytest.fixture(scope="module")
def setup():
    den = mixture_images()
    real = den.sample(400, torch.Generator().manual_seed(1)).float().reshape(-1, 1, 8, 8).clamp(-1, 1)
    ext = ClassifierFeatures(calibrated_classifier(real[:200]))
    ref = reference_from_images(ext, real[:200], real[200:], "toy mixture")
    return den, ext, ref


@pytest.fixture(scope="module")
def sweep(setup, tmp_path_factory):
    den, ext, ref = setup
    out = tmp_path_factory.mktemp("sweep")
    calls0 = den.calls
    doc = run_rnd_sweep(toy_factory(den), ref, out, CONFIGS, total_nfe=24, step=3, n_samples=N, chunk=8,
                        bootstrap=20, log=None)
    return doc, out, den.calls - calls0


def test_rnd_sweep_json_schema_and_files(sweep):
    doc, out, calls = sweep
    assert calls == 3 * 24 * (N // 8)                             # one run per configuration and chunk
    on_disk = json.loads((out / "rnd_sweep.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))
    for key, kind in [("experiment", str), ("schema_version", int), ("samples", int), ("seeds", list),
                      ("marks", list), ("configs", list), ("noise_floor", dict), ("wall_time_s", float),
                      ("sampler", dict), ("feature_network", str), ("timing_total", dict), ("metric", str)]:
        assert isinstance(doc[key], kind), key
    assert doc["experiment"] == "rnd_sweep" and doc["samples"] == N and doc["seeds"] == list(range(N))
    assert "guidance" in doc and doc["marks"] == list(range(3, 25, 3)) and "not Inception FID" in doc["metric"]
    assert [r["label"] for r in doc["configs"]] == ["1x24", "3x8", "4x6"]
    for r in doc["configs"]:
        assert len(r["fd"]) == len(doc["marks"]) == len(r["fd_boot_std"])
        assert r["auc"] == pytest.approx(anytime_auc(dict(zip(doc["marks"], r["fd"])), 24, 3))
        assert r["final_fd"] == r["fd"][-1] and r["auc_boot"]["std"] > 0
        lo, hi = r["auc_boot"]["percentile95"]
        assert lo < hi and r["final_fd_boot"]["std"] > 0
        assert set(r["final_kid"]) == {"mean", "std", "subset_size"} and r["final_kid"]["subset_size"] == N
        assert 0 <= r["final_precision_recall"]["precision"] <= 1 and r["final_precision_recall"]["k"] == 3
        t = r["timing"]
        assert t["denoiser_calls"] == 24 * (N // 8) and t["chunks_computed"] == N // 8
        assert 0 < t["denoiser_s"] < t["sampling_s"] and t["metric_s"] > 0 and t["image_nfe_per_s"] > 0
    assert doc["configs"][1]["distinct_update_nfes"] == [3, 6, 8, 16, 24]
    assert "auc_minus_first" not in doc["configs"][0]
    for r in doc["configs"][1:]:                                   # paired differences to the first (vanilla)
        assert r["auc_minus_first"]["point"] == pytest.approx(r["auc"] - doc["configs"][0]["auc"])
        assert r["auc_minus_first"]["std"] < r["auc_boot"]["std"] + doc["configs"][0]["auc_boot"]["std"]
    assert doc["noise_floor"]["n"] == N and doc["noise_floor"]["mean"] > 0
    png = Image.open(out / "rnd_fd_curves.png")
    assert png.size[0] > 300 and png.size[1] > 200 and doc["files"] == ["rnd_fd_curves.png", "rnd_sweep.json"]


def test_sweep_fd_equals_separately_sampled_budgets(setup, sweep):
    """FD at a mark inside an inner run (3×8 at NFE 12) equals the FD of images sampled with max_nfe=12."""
    den, ext, ref = setup
    doc, _, _ = sweep
    row = doc["configs"][1]
    sampler = toy_factory(mixture_images()).build(3, 8)
    for mark in (6, 12, 24):
        x = sampler.sample(list(range(N)), (N, 1, 8, 8), max_nfe=mark).x0
        f = extract_features(ext, dequantize(quantize(x)))
        direct = frechet_distance(FeatureStats(torch.from_numpy(ref.stats.mu), torch.from_numpy(ref.stats.sigma),
                                               ref.stats.n), FeatureStats.from_features(f))
        assert row["fd"][doc["marks"].index(mark)] == pytest.approx(direct, rel=1e-6)
    # the step function: 3×8 holds the first inner result (NFE 8) over marks 9, 12, 15
    fd = dict(zip(doc["marks"], row["fd"]))
    assert fd[9] == fd[12] == fd[15] != fd[18] and fd[3] != fd[6]


def test_rerun_recomputes_nothing_and_budget_table_shares_the_cache(setup, sweep):
    den, ext, ref = setup
    doc, out, _ = sweep
    calls0 = den.calls
    again = run_rnd_sweep(toy_factory(den), ref, out, CONFIGS, total_nfe=24, step=3, n_samples=N, chunk=8,
                          bootstrap=20, log=None)
    assert den.calls == calls0
    assert [r["fd"] for r in again["configs"]] == [r["fd"] for r in doc["configs"]]
    assert [r["auc_boot"] for r in again["configs"]] == [r["auc_boot"] for r in doc["configs"]]
    assert all(r["timing"]["chunks_cached"] == N // 8 for r in again["configs"])
    # budget 24 with 4 outer steps uses 1×24 and 4×6 on the same 3-NFE grid: already cached
    bt = run_budget_table(toy_factory(den), ref, out, budgets=(24,), fractions=(0.25, 0.5, 0.75, 1.0),
                          nested_outer=4, step=3, n_samples=N, chunk=8, bootstrap=10, log=None)
    assert den.calls == calls0
    rows = bt["rows"]
    assert [r["nfe"] for r in rows] == [6, 12, 18, 24]
    van, nes = doc["configs"][0], doc["configs"][2]
    assert [r["vanilla_fd"] for r in rows] == [van["fd"][doc["marks"].index(m)] for m in (6, 12, 18, 24)]
    assert [r["nested_fd"] for r in rows] == [nes["fd"][doc["marks"].index(m)] for m in (6, 12, 18, 24)]
    assert rows[0]["nested_config"] == "4x6" and (out / "budget_table.png").is_file()
    assert all(r["nested_minus_vanilla"]["point"] == pytest.approx(r["nested_fd"] - r["vanilla_fd"]) for r in rows)
    # new budgets are sampled once per method, at the fraction marks
    calls1 = den.calls
    run_budget_table(toy_factory(den), ref, out, budgets=(10,), nested_outer=5, step=5, n_samples=N, chunk=N,
                     bootstrap=0, log=None)
    assert den.calls - calls1 == 2 * 10


@pytest.mark.parametrize("kwargs,match", [
    (dict(configs="1x24,3x7"), "every configuration must spend total_nfe=24 NFE; not 3x7 \\(21 NFE\\)"),
    (dict(configs="1x24", total_nfe=25), "total_nfe: 25 is not a multiple of step=3"),
    (dict(configs="1x24", n_samples=3), "n_samples: must be an integer ≥ 4"),
    (dict(configs="1x24", n_samples=300), "noise-floor pool has 200 held-out samples, fewer than n_samples=300"),
    (dict(configs="2x0"), "configs: '2x0'"),
])
def test_bad_sweep_arguments_fail_before_sampling(setup, tmp_path, kwargs, match):
    den, _, ref = setup
    calls0 = den.calls
    args = dict(total_nfe=24, step=3, n_samples=4, log=None) | kwargs
    with pytest.raises(ValueError, match=match):
        run_rnd_sweep(toy_factory(den), ref, tmp_path, **args)
    with pytest.raises(ValueError, match="fractions: 0.35 of 10 NFE is not a whole NFE count"):
        run_budget_table(toy_factory(den), ref, tmp_path, budgets=(10,), fractions=(0.35,), nested_outer=5, step=5,
                         n_samples=4, log=None)
    assert den.calls == calls0 and not list(tmp_path.rglob("*.pt"))


class HalfMSE:
    """A plug-in metric: anything with name, kind and (x, ref) -> per-sample values."""
    name, kind = "half_mse", "distance"

    def __call__(self, x, ref):
        return MSEDistance()(x, ref) / 2


def test_consistency_curves_builtin_and_plugin(setup, sweep, tmp_path):
    den, ext, _ = setup
    _, out, _ = sweep
    metrics = build_consistency_metrics(["mse", "feature_cosine"], extractor=ext) + [HalfMSE()]
    calls0 = den.calls
    doc = run_consistency(toy_factory(den), metrics, tmp_path, configs="3x8,4x6", total_nfe=24, step=3,
                          n_samples=N, chunk=8, cache_dir=out / "cache", log=None)
    assert den.calls == calls0                                   # the sweep's snapshots are reused
    assert doc["metrics"] == {"mse": "distance", "feature_cosine": "distance", "half_mse": "distance"}
    for row in doc["configs"]:
        c = row["curves"]
        assert c["mse"]["mean"][-1] == 0 and c["feature_cosine"]["mean"][-1] == pytest.approx(0, abs=1e-6)
        assert c["mse"]["mean"][0] > 0 and c["feature_cosine"]["mean"][0] > 0
        assert c["half_mse"]["mean"] == pytest.approx([v / 2 for v in c["mse"]["mean"]])
    # check one value by hand: 3×8 at NFE 12 shows the first inner result (NFE 8)
    snaps = collect_snapshots(toy_factory(den), 3, 8, N, 0, list(range(3, 25, 3)), out / "cache", 8)
    a, b = dequantize(snaps.at(12)), dequantize(snaps.final)
    assert doc["configs"][0]["curves"]["mse"]["mean"][3] == pytest.approx(float((((a - b) / 2) ** 2).mean()))
    assert Image.open(tmp_path / "consistency.png").size[0] > 600


def test_metrics_never_return_silent_zeros(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth")):
        build_consistency_metrics(["lpips"])
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "clip.bin")):
        build_consistency_metrics(["clip_image"], clip_weights=tmp_path / "clip.bin")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "ds")):
        build_consistency_metrics(["dreamsim"], dreamsim_dir=tmp_path / "ds")
    with pytest.raises(ValueError, match="clip_image: pass clip_weights"):
        build_consistency_metrics(["clip_image"])
    with pytest.raises(ValueError, match="unknown metric 'ssim'"):
        build_consistency_metrics(["ssim"])

    class Broken:
        name, kind = "broken", "distance"

        def __call__(self, x, ref):
            return torch.full((x.shape[0],), float("nan"))
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(FloatingPointError, match="'broken': non-finite"):
        evaluate_metric(Broken(), x, x)
    Broken.__call__ = lambda self, x, ref: torch.zeros(2)
    with pytest.raises(ValueError, match="expected 4 per-sample values"):
        evaluate_metric(Broken(), x, x)


def test_qualitative_figure(setup, tmp_path):
    den, _, _ = setup
    doc = run_qualitative(toy_factory(den), tmp_path, configs=CONFIGS, total_nfe=24, samples=[0, 2], rows_every=6,
                          log=None)
    assert doc["rows_nfe"] == [6, 12, 18, 24] and doc["seeds"] == [0, 2] and doc["configs"] == CONFIGS.split(",")
    w, h = Image.open(tmp_path / "qualitative.png").size
    assert w > h                                                 # 2 samples × 3 columns wide, 4 rows high


def _cli(argv):
    p = argparse.ArgumentParser()
    cli_eval.add_parser(p.add_subparsers(dest="command", required=True))
    return cli_eval.run(p.parse_args(["eval"] + argv))


def test_cli_rnd_sweep_and_qualitative(tmp_path, capsys):
    unet = TinyUNet(channels=(16, 32)).eval()
    unet.save_pretrained(tmp_path / "unet")
    clf = calibrated_classifier(torch.rand(64, 1, 28, 28) * 2 - 1)
    clf.save_pretrained(tmp_path / "clf")
    common = ["--model", str(tmp_path / "unet"), "--out", str(tmp_path / "o"), "--quiet"]
    code = _cli(["rnd-sweep", *common, "--classifier", str(tmp_path / "clf"), "--samples", "4", "--chunk", "4",
                 "--configs", "1x4,2x2", "--total-nfe", "4", "--step", "2", "--reference-limit", "64",
                 "--heldout", "64", "--bootstrap", "5"])
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads((tmp_path / "o" / "rnd_sweep.json").read_text())
    assert doc["samples"] == 4 and doc["guidance"] == 2.0 and doc["sampler"]["solver"] == "ddpm"
    assert doc["reference"]["n"] == 64 and all(math.isfinite(r["auc"]) for r in doc["configs"])
    assert "rnd_fd_curves.png" in out.out
    code = _cli(["qualitative", *common, "--configs", "1x4,2x2", "--total-nfe", "4", "--rows-every", "2",
                 "--show", "0,1"])
    assert code == 0 and (tmp_path / "o" / "qualitative.png").is_file()
    code = _cli(["rnd-sweep", *common, "--configs", "3x3", "--total-nfe", "4", "--step", "2", "--samples", "4",
                 "--classifier", str(tmp_path / "clf"), "--reference-limit", "64", "--heldout", "64"])
    assert code == 2 and "not 3x3 (9 NFE)" in capsys.readouterr().err
    code = _cli(["consistency", *common, "--metrics", "mse,lpips", "--samples", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "lpips" in err and "weights not found" in err


def test_cli_noise_floor(tmp_path, capsys):
    """`eval noise-floor`: FD of real train subsets to the test reference; subsets of a larger pool differ."""
    try:
        from nested_diffusion.bundled.data import find_data_dir
        find_data_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    clf = calibrated_classifier(torch.rand(64, 1, 28, 28) * 2 - 1)
    clf.save_pretrained(tmp_path / "clf")
    code = _cli(["noise-floor", "--classifier", str(tmp_path / "clf"), "--samples", "100,400", "--heldout", "800",
                 "--repeats", "3", "--out", str(tmp_path / "o")])
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads((tmp_path / "o" / "noise_floor.json").read_text())
    small, big = doc["floors"]
    assert (small["n"], big["n"], small["pool"]) == (100, 400, 800)
    assert small["std"] > 0 and len(set(small["values"])) == 3          # distinct random subsets
    assert small["mean"] > big["mean"] > 0                              # the small-sample bias shrinks with n
    assert "n=100: FD floor" in out.out
    code = _cli(["noise-floor", "--samples", "10,900", "--heldout", "800", "--out", str(tmp_path / "o")])
    assert code == 2 and "--samples: each count must lie in [2, --heldout=800], got [900]" in capsys.readouterr().err


def test_default_noise_floor_pool_exceeds_the_sample_count():
    assert cli_eval.default_heldout(100) == 10000 and cli_eval.default_heldout(10000) == 30000
    assert cli_eval.default_heldout(50000) == 60000


def test_cli_rejects_an_unknown_device(tmp_path, capsys):
    assert _cli(["qualitative", "--device", "foo", "--out", str(tmp_path)]) == 2
    assert "--device: 'foo' is not a torch device; use cpu, cuda or cuda:N" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
