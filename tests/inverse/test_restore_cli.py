"""The ``restore`` subcommand (through its own parser, as cli.py will wire it) and the Table 2 script."""
import argparse
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nested_diffusion.cli import restore as cli_restore
from nested_diffusion.bundled.table2 import run_table2
from nested_diffusion.bundled import FashionClassifier


def restore(argv, capsys):
    p = argparse.ArgumentParser(prog="nested-diffusion")
    sub = p.add_subparsers(dest="command", required=True)
    cli_restore.add_parser(sub)
    code = cli_restore.run(p.parse_args(["restore", *argv]))
    out = capsys.readouterr()
    return code, out.out, out.err


def write_png(path, size=(28, 28), mode="L"):
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    arr = (((xx - size[0] / 2) ** 2 + (yy - size[1] / 2) ** 2) < (min(size) / 3) ** 2).astype(np.uint8) * 220
    Image.fromarray(arr).convert(mode).save(path)
    return path


def test_restore_from_a_png_writes_everything_and_reports_metrics(tmp_path, capsys):
    src = write_png(tmp_path / "disk.png")
    out = tmp_path / "o"
    code, stdout, err = restore(["--image", str(src), "--degradation", "sr", "--factor", "4", "--outer", "2",
                                 "--inner", "2", "--threads", "1", "--out", str(out)], capsys)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} >= {"clean.png", "degraded.png", "restored.png", "comparison.png",
                                                "final.png", "progression.png", "progression.gif", "updates.json",
                                                "metrics.json"}
    doc = json.loads((out / "updates.json").read_text())
    assert [u["nfe"] for u in doc["updates"]] == [1, 2, 4]
    assert all(math.isfinite(u["psnr"]) and u["consistency"] >= 0 for u in doc["updates"])
    metrics = json.loads((out / "metrics.json").read_text())
    res = metrics["results"]["nested"]
    assert res["nfe"] == 4 and math.isfinite(res["psnr"])
    # σ_y = 0: the chain pins the measurement; the residual is ≈ s·σ_{t=0} per measurement (no final projection)
    assert res["consistency_rms"] < 0.02
    assert f"PSNR {res['psnr']:.2f} dB" in stdout and "‖Hx̂−y‖" in stdout
    assert Image.open(out / "degraded.png").size == (28 * 4 + 4, 28 * 4 + 4)   # row() pads 2 px
    assert Image.open(out / "comparison.png").size[0] > 3 * 28 * 4      # clean | degraded | restored


def test_restore_resizes_colour_images_and_runs_vanilla_too(tmp_path, capsys):
    src = write_png(tmp_path / "big.png", size=(40, 30), mode="RGB")
    out = tmp_path / "o"
    code, stdout, err = restore(["--image", str(src), "--degradation", "inpaint", "--sigma-y", "0.1",
                                 "--outer", "2", "--inner", "1", "--vanilla", "--threads", "1", "--out", str(out)],
                                capsys)
    assert code == 0, err
    assert "note: resized 40×30 to 28×28" in stdout and "[vanilla] final after 2 NFE" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["results"]) == {"nested", "vanilla"} and metrics["results"]["vanilla"]["nfe"] == 2
    assert (out / "vanilla" / "restored.png").is_file()


@pytest.mark.parametrize("argv,match", [
    (["--degradation", "colorize"], "colorization needs a colour image"),
    (["--degradation", "sr", "--factor", "3"], "factor: 3 must divide the image size 28×28"),
    (["--degradation", "deblur_uniform", "--kernel-size", "4"], "odd"),
    (["--degradation", "inpaint_box", "--box", "20,20,10,10"], "does not fit"),
    (["--t-start", "1000"], r"--t-start: must lie in \[1, 999\]"),
])
def test_restore_rejects_bad_settings_with_a_clear_message(tmp_path, capsys, argv, match):
    src = write_png(tmp_path / "disk.png")
    code, _, err = restore(["--image", str(src), "--out", str(tmp_path / "o"), *argv], capsys)
    assert code == 2 and "error:" in err
    assert __import__("re").search(match, err)


def test_restore_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        restore(["--image", "x.png", "--sigma-y", "-0.5"], capsys)
    assert "--sigma-y: must lie in [0.0, inf], got -0.5" in capsys.readouterr().err
    code, _, err = restore(["--image", str(tmp_path / "missing.png"), "--out", str(tmp_path)], capsys)
    assert code == 2 and "--image: cannot read" in err


def test_restore_a_fashion_mnist_test_image(tmp_path, capsys):
    try:
        from nested_diffusion.bundled.data import find_data_dir
        find_data_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    code, stdout, err = restore(["--index", "0", "--degradation", "denoise", "--sigma-y", "1.0", "--outer", "2",
                                 "--inner", "2", "--threads", "1", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["settings"]["label"] == "Ankle boot"
    # denoising with σ_y = 1: a consistent restoration leaves a residual of about σ_y per pixel
    assert 0.5 < m["results"]["nested"]["consistency_rms"] < 1.5
    code, _, err = restore(["--index", "10000", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--index: 10000 is out of range" in err


def test_table2_script_runs_resumes_and_guards_its_cache(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(4, 1, 28, 28, generator=g) > 0.6).float() * 1.6 - 0.8
    torch.manual_seed(0)
    clf = FashionClassifier()
    kw = dict(n_images=4, outer=2, inner=1, vanilla_steps=2, batch_size=2, classifier=clf, images=images,
              progress=None)
    s = run_table2(tmp_path / "t2.json", **kw)
    assert s["chunks_computed"] == 8 and s["chunks_loaded"] == 0
    assert s["columns"] == ["nested_2x1@1", "nested_2x1@2", "ddrm_2"]
    doc = json.loads((tmp_path / "t2.json").read_text())
    assert set(doc["tasks"]) == {"denoise", "sr4", "inpaint50", "deblur"}
    for row in doc["tasks"].values():
        assert all(math.isfinite(v) for v in row["psnr"].values())
        assert all(v is not None and math.isfinite(v) for v in row["fd"].values())
    assert doc["tasks"]["sr4"]["consistency_rms"]["ddrm_2"] < 0.02     # a 2-step DDRM chain already pins y
    again = run_table2(tmp_path / "t2.json", **kw)
    assert again["chunks_computed"] == 0 and again["chunks_loaded"] == 8
    assert again["tasks"] == s["tasks"]
    with pytest.raises(ValueError, match="cache_dir: .* other settings"):
        run_table2(tmp_path / "t2.json", **{**kw, "seed": 1})


def test_table2_reports_plug_in_per_image_distances(tmp_path):
    """A distance (here pixel MSE; LPIPS on machines with its weights) is averaged per column; asking for one
    changes the settings, so a cache made without it is not reused."""
    from nested_diffusion.evaluation.consistency import MSEDistance
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(3, 1, 28, 28, generator=g) > 0.6).float() * 1.6 - 0.8
    kw = dict(n_images=3, tasks={"denoise": {"degradation": "denoise", "sigma_y": 0.2}}, outer=2, inner=1,
              vanilla_steps=2, batch_size=2, classifier=None, images=images, progress=None)
    plain = run_table2(tmp_path / "a.json", **kw)
    assert "mse" not in plain["tasks"]["denoise"]
    s = run_table2(tmp_path / "b.json", **kw, distances=[MSEDistance()])
    row = s["tasks"]["denoise"]
    for c in s["columns"]:
        # PSNR = −10 log10(MSE) per image; the mean MSE is at least 10^(−mean PSNR/10) (Jensen), equal if all agree
        assert row["mse"][c]["mean"] >= 10 ** (-row["psnr"][c] / 10) * (1 - 1e-6) and row["mse"][c]["sem"] >= 0
    with pytest.raises(ValueError, match="other settings"):
        run_table2(tmp_path / "a.json", **kw, distances=[MSEDistance()])


def test_restore_table_command(tmp_path, capsys, monkeypatch):
    """`nested-diffusion restore-table` on two stand-in test images: JSON, plot, resume, task validation."""
    from nested_diffusion import cli
    g = torch.Generator().manual_seed(1)
    fake = (torch.rand(3, 1, 28, 28, generator=g) > 0.5).float() * 2 - 1
    monkeypatch.setattr("nested_diffusion.bundled.data.load_fashion_mnist", lambda split, data_dir=None: (fake, None))
    argv = ["restore-table", "--images", "2", "--batch", "1", "--outer", "2", "--inner", "1", "--vanilla-steps",
            "2", "--tasks", "sr4,denoise", "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("sr4: nested_2x1@1 ") and "ddrm_2" in out and "table2_psnr.png" in out
    doc = json.loads((tmp_path / "table2.json").read_text())
    assert list(doc["tasks"]) == ["sr4", "denoise"] and doc["chunks_computed"] == 4
    for row in doc["tasks"].values():      # paired differences: the mean of differences = difference of means
        for c in ("nested_2x1@1", "nested_2x1@2"):
            assert row["psnr_minus_vanilla"][c]["mean"] == pytest.approx(row["psnr"][c] - row["psnr"]["ddrm_2"])
    assert (tmp_path / "table2_psnr.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "table2.json").read_text())["chunks_loaded"] == 4
    assert cli.main([*argv[:-5], "--tasks", "sr4,colour", "--out", str(tmp_path)]) == 2
    assert "--tasks: unknown task(s) ['colour']; valid: denoise,sr4,inpaint50,deblur" in capsys.readouterr().err
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-home"))
    assert cli.main([*argv, "--lpips-net", "alex"]) == 2
    err = capsys.readouterr().err
    assert "lpips (alex): weights not found at" in err and "nothing is downloaded" in err

