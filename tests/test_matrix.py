"""The matrix of issue "one run, every surface, every family": surfaces {Python, generate, sample, eval, calibrate,
serve backend} × families {bundled + every pipeline family, tiny random-weight pipelines saved to disk} ×
schedules {uniform, progressive} × {no calibration, a matching one}. Each cell either runs (and, with a matching
calibration, shows the expected change) or is refused with the one error README.md lists ("Every model family
from the command line"): ``sample`` and ``eval`` take no calibration (they record images, not predictions;
argparse refuses the option); ``calibrate`` makes one, and measures a given one (``--evaluate``) for the bundled
model only."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from fixtures_modern import tiny_flux, tiny_sd3, tiny_sdxl  # noqa: E402
from fixtures_tiny import tiny_dit, tiny_sd  # noqa: E402

from nested_diffusion import NestedSampler, cli  # noqa: E402
from nested_diffusion.core.change_fit import fit_calibration  # noqa: E402
from nested_diffusion.core.expected_change import SIGNALS, load_calibration  # noqa: E402
from nested_diffusion.core.nested import calibration_settings  # noqa: E402
from nested_diffusion.core.run import resolve_run  # noqa: E402
from nested_diffusion.families import family_names, get_family  # noqa: E402

BUILD = {"sd": tiny_sd, "dit": tiny_dit, "sdxl": tiny_sdxl, "sd3": tiny_sd3, "flux": tiny_flux}
SIZE = {"sd": 16, "sdxl": 32, "sd3": 16, "flux": 16}
FAMILIES = ("bundled",) + tuple(BUILD)
SCHEDULES = {"uniform": dict(outer_steps=2, inner_steps=2), "progressive": dict(schedule="progressive", nfe=5,
                                                                                 first=1)}
FLAGS = {"uniform": ["--outer", "2", "--inner", "2"], "progressive": ["--schedule", "progressive", "--nfe", "5",
                                                                      "--first", "1"]}
SURFACES = ("python", "generate", "sample", "eval", "calibrate", "serve")
CELLS = [(s, f, k, c) for s in SURFACES for f in FAMILIES for k in SCHEDULES for c in ("none", "matching")]


GENERIC = tuple(n for n in family_names() if get_family(n).generic)


def test_the_matrix_covers_every_family_of_the_table():
    # generic families (stock pipelines through NestedScheduler) run in Python (tests/pipelines/test_anytime_any.py),
    # generate (tests/cli/test_generate_families.py), sample and eval (tests/pipelines/test_generic_surfaces.py),
    # serve (tests/web/test_generic_web.py), calibrate (tests/pipelines/test_generic_calibrate.py); the video
    # family runs in Python only (tests below, README)
    assert set(FAMILIES) | set(GENERIC) == set(family_names()) and GENERIC


def refused_surfaces(family):
    """Where a generic family is refused: nowhere for the image families (sample/eval:
    tests/pipelines/test_generic_surfaces.py; serve: tests/web/test_generic_web.py; calibrate:
    tests/pipelines/test_generic_calibrate.py); `sample`, `eval`, `calibrate` and `serve` for the video family
    (they show or record images)."""
    video = get_family(family).surfaces == ("python",)
    return ["sample", "eval", "calibrate", "serve"] if video else []


REFUSALS = [(s, f) for f in GENERIC for s in refused_surfaces(f)]


def test_generic_image_families_reach_every_surface():
    for f in GENERIC:
        surfaces = get_family(f).surfaces
        assert surfaces == (SURFACES if f != "wan" else ("python",)), (f, surfaces)


@pytest.mark.parametrize("surface,family", REFUSALS)
def test_generic_families_are_refused_where_they_do_not_run(surface, family, tmp_path, capsys):
    folder = str(tmp_path / "weights")
    argv = {"sample": ["sample", "--out-dir", str(tmp_path / "s"), "--num-samples", "1", "--prompts", folder],
            "eval": ["eval", "consistency", "--out", str(tmp_path / "e"), "--prompts", folder],
            "calibrate": ["calibrate", "--out", str(tmp_path / "c"), "--prompts", folder, "--feature-model",
                          "random-rgb"]}
    words = f"--pipeline: {family} is a generic family"
    if surface == "serve":
        from nested_diffusion.web import load_backend
        with pytest.raises(ValueError, match=words):
            load_backend(family, folder)
        return
    code = cli.main(argv[surface] + ["--pipeline", family, "--model-path", folder])
    err = capsys.readouterr().err
    assert code == 2 and words in err and f"not in `{surface}`" in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    d = tmp_path_factory.mktemp("matrix")
    for name, build in BUILD.items():
        get_family(name).pipeline_class().from_pipe(build()).save_pretrained(d / name)
    (d / "prompts.txt").write_text("a photo of a cat\nthe red dog\n")
    return d


def cond_flags(family, disk, prompts_file=False):
    if family == "bundled":
        return []
    fam = get_family(family)
    path = ["--pipeline", family, "--model-path", str(disk / family)]
    if not fam.takes_prompt:
        return path + (["--class-labels", "1,2"] if prompts_file else ["--classes", "1,2"])
    size = ["--height", str(SIZE[family]), "--width", str(SIZE[family])]
    return path + size + (["--prompts", str(disk / "prompts.txt")] if prompts_file else ["--prompt", "a photo of a cat"])


def matching_calibration(family, schedule, disk, path):
    """A calibration fitted on made-up runs for exactly this family's configuration of ``schedule`` (what a
    calibrate run would write; fitting on real runs is the calibrate cells' job)."""
    fam = get_family(family)
    run = resolve_run(defaults=fam.run_defaults(), **SCHEDULES[schedule])
    guidance = run.guidance if run.guidance is not None else fam.guidance_default()
    if fam.is_bundled:
        from nested_diffusion.bundled.expected_change import model_identity
        model = model_identity(fam.load(None), guidance)
    else:
        from nested_diffusion.pipelines.expected_change import call_identity
        pipe = fam.load(disk / family)
        size = {} if family == "dit" else dict(height=SIZE[family], width=SIZE[family])
        model = call_identity(pipe, guidance, **size)
    config = {"sampler": calibration_settings(run, 1000, "first"), "model": model}
    steps = run.inner_steps
    nfe = list(range(1, steps[0] + 1)) + list(np.cumsum(steps)[1:])
    g = torch.Generator().manual_seed(0)
    S = torch.rand(40, len(nfe), len(SIGNALS), generator=g) + 0.05
    left = torch.linspace(0.3, 0.0, len(nfe))
    targets = {"rmse": left * (1 + torch.rand(40, len(nfe), generator=g)), "semantic": left / 10 + 0 * S[..., 0]}
    path.write_text(json.dumps(fit_calibration(S, targets, nfe, config, features=()).to_dict()))
    return path


def python_cell(family, schedule, cal, disk):
    fam = get_family(family)
    if fam.is_bundled:
        from nested_diffusion.bundled import make_denoiser
        run = resolve_run(defaults=fam.run_defaults(), **SCHEDULES[schedule])
        if cal is not None:
            run = run.replace(calibration=load_calibration(cal))
        ups = list(NestedSampler.from_run(make_denoiser(fam.load(None), run.guidance), run)
                   .stream([0, 1], (2, 1, 28, 28), torch.tensor([1, 2])))
        return [u.expected_change for u in ups]
    pipe = fam.load(disk / family)
    cond = dict(class_labels=[1, 2]) if family == "dit" else dict(prompt=["a photo of a cat"], height=SIZE[family],
                                                                   width=SIZE[family])
    from nested_diffusion.core.schedules import Schedule
    run = resolve_run(defaults=fam.run_defaults(), **SCHEDULES[schedule])   # the pipelines take no `first`:
    steps = dict(schedule=Schedule(run.schedule, run.inner_steps, run.outer_times))  # pass the resolved split
    outs = list(pipe.iter_anytime(**cond, **steps, output_type="latent", calibration=None if cal is None else str(cal),
                                  generator=torch.Generator().manual_seed(0)))
    return [o.expected_change for o in outs]


def run_cli(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("surface,family,schedule,calibration", CELLS,
                         ids=["-".join(c) for c in CELLS])
def test_cell(surface, family, schedule, calibration, disk, tmp_path, capsys):
    cal = matching_calibration(family, schedule, disk, tmp_path / "cal.json") if calibration == "matching" else None
    if surface == "python":
        changes = python_cell(family, schedule, cal, disk)
        assert changes and all((c is not None) == (cal is not None) for c in changes)
        return
    if surface == "generate":
        argv = ["generate", "--out", str(tmp_path / "g"), "--quiet", "--threads", "1", *FLAGS[schedule],
                *cond_flags(family, disk), "--calibration", "none" if cal is None else str(cal)]
        if family == "bundled":
            argv += ["--classes", "1,2"]
        code, err = run_cli(argv, capsys)
        assert code == 0, err
        ups = json.loads((tmp_path / "g" / "updates.json").read_text())["updates"]
        assert ups and all((u["expected_change"] is not None) == (cal is not None) for u in ups)
        return
    if surface == "serve":
        from nested_diffusion.web import JobRequest, load_backend, stream_updates
        from nested_diffusion.web.render import NO_CALIBRATION_WORDS
        backend = load_backend(family, None if family == "bundled" else disk / family,
                               calibration="none" if cal is None else str(cal))
        size = {} if family in ("bundled", "dit") else dict(height=SIZE[family], width=SIZE[family])
        ups = list(stream_updates(backend, JobRequest(classes="1,2", prompt="a photo of a cat", **size,
                                                      **SCHEDULES[schedule])))
        words = [u.expected_change for u in ups if u.expected_change is not None]
        assert words and all((w != NO_CALIBRATION_WORDS) == (cal is not None) for w in words)
        return
    sample_flags = [a.replace("--outer", "--outer-steps").replace("--inner", "--inner-steps") for a in FLAGS[schedule]]
    common = {"sample": ["sample", "--out-dir", str(tmp_path / "s"), "--num-samples", "2", "--batch-size", "2",
                         "--step", "update", "--device", "cpu", "--threads", "1", "--quiet", *sample_flags,
                         *cond_flags(family, disk, prompts_file=True)],
              "eval": ["eval", "consistency", "--out", str(tmp_path / "e"), "--samples", "2", "--chunk", "2",
                       "--metrics", "mse", "--step", "1", "--configs", "2x2" if schedule == "uniform" else "progressive",
                       "--total-nfe", "4" if schedule == "uniform" else "41", "--device", "cpu", "--quiet",
                       *cond_flags(family, disk, prompts_file=True)],
              "calibrate": ["calibrate", "--out", str(tmp_path / "c"), "--cache-dir", str(tmp_path / "cc"),
                            "--samples", "20", "--chunk", "20", "--threads", "1", *FLAGS[schedule],
                            *cond_flags(family, disk, prompts_file=True)]
              + ([] if family == "bundled" else ["--feature-model", "random-rgb"])
              + (["--signals", "pixel"] if family == "bundled" else [])}[surface]
    if cal is not None:
        if surface == "calibrate":   # calibrate makes one; measuring one is --evaluate, for the bundled model only
            argv = common + ["--evaluate", str(cal), "--heldout", "20"]
            code, err = run_cli(argv, capsys)
            if family == "bundled":
                assert code == 0, err
            else:
                assert code == 2 and "--heldout: 20 held-out samples are evaluated for --pipeline bundled only" in err
            return
        with pytest.raises(SystemExit) as e:  # the documented refusal: the option does not exist there
            cli.main(common + ["--calibration", str(cal)])
        assert e.value.code == 2 and "unrecognized arguments: --calibration" in capsys.readouterr().err
        return
    code, err = run_cli(common, capsys)
    assert code == 0, err
    if surface == "calibrate":
        assert list((tmp_path / "c").glob("*.json"))
