import json
import os

import pytest
from PIL import Image

from nested_diffusion import bundled, cli


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_writes_all_files(tmp_path, capsys):
    out = tmp_path / "o"
    code, stdout, _ = run(["generate", "--out", str(out), "--classes", "0,sandal", "--outer", "2", "--inner", "3",
                           "--threads", "1", "--vanilla"], capsys)
    assert code == 0
    for d in (out, out / "vanilla"):
        assert {p.name for p in d.iterdir() if p.is_file()} == {"final.png", "progression.png", "progression.gif",
                                                               "updates.json"}
    doc = json.loads((out / "updates.json").read_text())
    assert [u["nfe"] for u in doc["updates"]] == [1, 2, 3, 6]
    assert [u["source"] for u in doc["updates"]] == ["x0_preview", "x0_preview", "inner_result", "inner_result"]
    assert doc["settings"]["classes"] == ["T-shirt/top", "Sandal"] and doc["settings"]["seeds"] == [0, 1]
    van = json.loads((out / "vanilla" / "updates.json").read_text())
    assert [u["nfe"] for u in van["updates"]] == [1, 2, 3, 4, 5, 6]
    grid = Image.open(out / "progression.png")
    assert grid.size[0] > grid.size[1]            # 2 rows (samples) × 4 columns (updates)
    gif = Image.open(out / "progression.gif")
    assert gif.n_frames == 4
    assert "nfe    6/6" in stdout and "wrote" in stdout


def test_budget_limits_the_run(tmp_path, capsys):
    code, _, _ = run(["generate", "--out", str(tmp_path), "--classes", "3", "--outer", "3", "--inner", "2",
                      "--budget", "5", "--quiet", "--threads", "1"], capsys)
    doc = json.loads((tmp_path / "updates.json").read_text())
    assert code == 0 and doc["updates"][-1]["nfe"] == 4 and not doc["updates"][-1]["final"]


@pytest.mark.parametrize("argv,match", [
    (["--classes", "hat"], "classes: unknown class 'hat'"),
    (["--classes", "11"], "classes: 11 is not a class index"),
    (["--outer", "0"], "--outer: must be ≥ 1, got 0"),
    (["--inner", "-3"], "--inner: must be ≥ 1, got -3"),
    (["--budget", "0"], "--budget: must be ≥ 1, got 0"),
    (["--guidance", "-1"], "--guidance: must be ≥ 0"),
    (["--inner", "2000"], "--inner: 2000 inner steps in outer step 1 of 5"),
    (["--solver", "ddpm", "--inner-eta", "0.5"], "--inner-eta: only the DDIM solver takes η"),
    (["--schedule", "progressive", "--outer", "5"], "--outer: 5 sets a uniform split; --schedule progressive takes --nfe"),
    (["--nfe", "30"], "--nfe: 30 NFE leave nothing for the final run"),
    (["--schedule", "uniform", "--nfe", "99"], "--nfe: 99 NFE do not split evenly over 5 outer steps"),
    (["--nfe", "100", "--outer", "5", "--inner", "30"], "--nfe: 100 is not --outer 5 × --inner 30"),
    (["--first", "10", "--inner", "10"], "--first: only for a named schedule other than uniform"),
    (["--schedule", "zigzag"], "invalid choice: 'zigzag'"),
])
def test_bad_arguments_are_rejected_clearly(tmp_path, capsys, argv, match):
    try:
        code, _, err = run(["generate", "--out", str(tmp_path), "--quiet"] + argv, capsys)
    except SystemExit as e:  # argparse exits with code 2
        code, err = e.code, capsys.readouterr().err
    assert code == 2 and match in err
    assert not (tmp_path / "updates.json").exists()


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--out", str(blocker / "sub"), "--quiet"])
    assert e.value.code == 2 and "which is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--out", str(blocker), "--quiet"])
    assert e.value.code == 2 and "--out: " in capsys.readouterr().err


def test_a_rejected_generate_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    assert cli.main(["generate", "--out", str(out), "--classes", "hat", "--quiet"]) == 2
    assert "classes: unknown class 'hat'" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_ctrl_c_keeps_and_writes_the_latest_result(tmp_path, capsys, monkeypatch):
    real = bundled.make_denoiser

    def interrupting(model, guidance):
        den = real(model, guidance)
        inner = den.model

        def net(x, t, c):
            if den.nfe >= 4:
                raise KeyboardInterrupt
            return inner(x, t, c)
        den.model = net
        return den
    monkeypatch.setattr(bundled, "make_denoiser", interrupting)
    code, _, err = run(["generate", "--out", str(tmp_path), "--classes", "1", "--outer", "3", "--inner", "2",
                        "--quiet", "--threads", "1"], capsys)
    assert code == 130 and "interrupted" in err
    doc = json.loads((tmp_path / "updates.json").read_text())
    assert doc["interrupted"] and [u["nfe"] for u in doc["updates"]] == [1, 2, 4]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_the_default_is_the_ramp_schedule_at_guidance_1_25(tmp_path, capsys):
    code, stdout, _ = run(["generate", "--out", str(tmp_path), "--classes", "3", "--threads", "1"], capsys)
    assert code == 0 and "3 outer (10+20+70 inner from t=999, 899, 799)" in stdout and "guidance 1.25" in stdout
    doc = json.loads((tmp_path / "updates.json").read_text())
    st = doc["settings"]
    assert (st["schedule"], st["inner"], st["outer_times"], st["guidance"]) == ("ramp", [10, 20, 70],
                                                                               [999, 899, 799], 1.25)
    finished = [u["nfe"] for u in doc["updates"] if u["source"] == "inner_result" or u["final"]]
    assert finished == [10, 30, 100]  # the first finished image after 10 NFE
    code, _, _ = run(["generate", "--out", str(tmp_path / "u"), "--classes", "3", "--threads", "1", "--quiet",
                      "--schedule", "uniform", "--nfe", "12", "--outer", "3"], capsys)
    st = json.loads((tmp_path / "u" / "updates.json").read_text())["settings"]
    assert code == 0 and (st["schedule"], st["inner"], st["outer_times"]) == ("uniform", [4, 4, 4], None)


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = capsys.readouterr().out
    for flag in ("--classes", "--seed", "--schedule", "--nfe", "--first", "--outer", "--inner", "--solver", "--inner-eta", "--outer-eta", "--guidance",
                 "--budget", "--deadline", "--grid", "--vanilla", "--model", "--out"):
        assert flag in text


def test_a_second_ctrl_c_while_writing_still_writes_every_file(tmp_path, monkeypatch):
    import os
    import signal
    from nested_diffusion import imaging
    real, calls = imaging.save_png, []

    def interrupting(arr, path):  # Ctrl+C arrives while the first file is being written
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)
        calls.append(path)
        return real(arr, path)
    monkeypatch.setattr("nested_diffusion.cli.recorder.save_png", interrupting)
    code = cli.main(["generate", "--out", str(tmp_path), "--classes", "1", "--outer", "1", "--inner", "2", "--quiet"])
    assert code == 130
    assert {p.name for p in tmp_path.iterdir()} == {"final.png", "progression.png", "progression.gif", "updates.json"}
