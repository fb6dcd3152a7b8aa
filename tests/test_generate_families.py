"""`nested-diffusion generate --pipeline FAMILY --model-path DIR` on every pipeline family of the family table:
tiny random-weight pipelines built here, saved with save_pretrained and loaded for real; the command writes the
bundled run's files, its final image is the pipeline's own for the same resolved run, and bad combinations are
refused before anything is loaded."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from fixtures_modern import tiny_flux, tiny_sd3, tiny_sdxl  # noqa: E402
from fixtures_tiny import tiny_dit, tiny_sd  # noqa: E402

from nested_diffusion import cli  # noqa: E402
from nested_diffusion.families import get_family  # noqa: E402

BUILD = {"sd": tiny_sd, "dit": tiny_dit, "sdxl": tiny_sdxl, "sd3": tiny_sd3, "flux": tiny_flux}
SIZE = {"sd": 16, "sdxl": 32, "sd3": 16, "flux": 16}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    for name, build in BUILD.items():
        build().save_pretrained(root / name)
    return root


def _argv(family, saved, out, *extra):
    cond = ["--classes", "1,207"] if family == "dit" else ["--prompt", "a cat", "--prompt", "a dog",
                                                         "--height", str(SIZE[family]), "--width", str(SIZE[family])]
    return ["generate", "--pipeline", family, "--model-path", str(saved / family), "--out", str(out), "--quiet",
            "--threads", "1", *cond, *extra]


@pytest.mark.parametrize("family", sorted(BUILD))
@pytest.mark.parametrize("schedule", [["--outer", "2", "--inner", "2"], ["--schedule", "progressive", "--nfe", "5",
                                                                        "--first", "1"]])
def test_generate_runs_every_family_and_matches_the_pipeline(family, schedule, saved, tmp_path):
    out = tmp_path / "out"
    assert cli.main(_argv(family, saved, out, *schedule)) == 0
    doc = json.loads((out / "updates.json").read_text())
    for name in ("final.png", "progression.png", "progression.gif"):
        assert (out / name).stat().st_size > 0
    s = doc["settings"]
    assert s["family"] == family and s["seeds"] == [0, 1]
    assert s["inner"] == ([2, 2] if "--outer" in schedule else [1, 1, 3])
    assert doc["updates"][-1]["final"] and doc["updates"][-1]["nfe"] == sum(s["inner"])
    if "--first" in schedule:
        return  # the pipeline call takes no `first` (generate used first=1: the inner steps are checked above)
    # the same resolved run through the pipeline's own call: the final image (tolerance: PNG uint8 rounding)
    fam = get_family(family)
    pipe = fam.load(saved / family)
    kw = dict(class_labels=[1, 207]) if family == "dit" else dict(prompt=["a cat", "a dog"], height=SIZE[family],
                                                                  width=SIZE[family])
    steps = dict(outer_steps=2, inner_steps=2)
    ref = pipe(**kw, **steps, output_type="np", generator=[torch.Generator().manual_seed(i) for i in (0, 1)]).images
    from PIL import Image
    from nested_diffusion.imaging import row
    final = np.asarray(Image.open(out / "final.png").convert("RGB"), dtype=np.int16)
    expect = row(torch.from_numpy(np.asarray(ref)).permute(0, 3, 1, 2) * 2 - 1, 1).astype(np.int16)
    # tolerance: the pipeline's own float images vs the recorder's; one uint8 level from float rounding
    assert final.shape == expect.shape and np.abs(final - expect).max() <= 1


@pytest.mark.parametrize("argv, match", [
    (["--pipeline", "sd", "--prompt", "a cat"], "--model-path: required with --pipeline sd"),
    (["--pipeline", "sd", "--model-path", "MISSING", "--prompt", "a"], "--model-path: no diffusers pipeline"),
    (["--pipeline", "sd", "--model-path", "SD"], "--prompt: required with --pipeline sd"),
    (["--pipeline", "dit", "--model-path", "DIT", "--prompt", "a cat"], "--prompt/--negative-prompt: --pipeline dit"),
    (["--pipeline", "dit", "--model-path", "DIT"], "--classes: required with --pipeline dit"),
    (["--pipeline", "sd3", "--model-path", "SD3", "--prompt", "a", "--solver", "ddpm"],
     "--solver: unknown flow solver 'ddpm'; valid: euler, heun"),
    (["--pipeline", "flux", "--model-path", "FLUX", "--prompt", "a", "--grid", "authors"],
     "--grid: unknown flow convention 'authors'"),
    (["--pipeline", "sd", "--model-path", "SD", "--prompt", "a", "--calibration", "feature"],
     "--calibration: 'feature' names the bundled model's"),
    (["--model-path", "SD"], "--model-path: only with --pipeline FAMILY"),
    (["--pipeline", "sdxl", "--model", "x", "--prompt", "a"], "--model: a TinyUNet folder is for the bundled model"),
])
def test_generate_refuses_what_a_family_cannot_do(argv, match, saved, tmp_path, capsys):
    paths = {"SD": saved / "sd", "DIT": saved / "dit", "SD3": saved / "sd3", "FLUX": saved / "flux",
             "MISSING": tmp_path / "none"}
    argv = [str(paths.get(a, a)) for a in argv]
    code = cli.main(["generate", "--out", str(tmp_path / "o"), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err, err


def test_generate_runs_a_generic_family_through_the_stock_pipeline(saved, tmp_path, monkeypatch):
    """A generic family (a stock diffusers pipeline through NestedScheduler): FLUX.1's stock FluxPipeline as a
    toy one here (the generic families of the table have no tokenizer in their tiny fixtures). Its final image is
    NestedFluxPipeline's for the same run (measured ≤ 2.5e-7 apart on latents: one uint8 level at most)."""
    from nested_diffusion import families
    from nested_diffusion.pipelines import any_pipeline
    monkeypatch.setitem(any_pipeline.GENERIC_FAMILIES, "flux-stock", any_pipeline.GenericFamily(
        "flux-stock", ("FluxPipeline",), "NestedFluxPipeline", "flux"))
    families.register_family(families.Family("flux-stock", "FLUX.1 through NestedScheduler", "prompt",
                                             "FluxPipeline", "generic", generic=True))
    try:
        out = tmp_path / "g"
        argv = ["generate", "--pipeline", "flux-stock", "--model-path", str(saved / "flux"), "--out", str(out),
                "--quiet", "--prompt", "a cat", "--prompt", "a dog", "--height", "16", "--width", "16",
                "--outer", "2", "--inner", "3", "--outer-eta", "0"]
        assert cli.main(argv) == 0
        s = json.loads((out / "updates.json").read_text())["settings"]
        assert s["family"] == "flux-stock" and s["inner"] == [3, 3] and "FlowMatchEulerDiscreteScheduler" in s["solver"]
        assert cli.main(argv[:-6] + ["--solver", "heun"]) == 2
        pipe = get_family("flux").load(saved / "flux")
        ref = pipe(prompt=["a cat", "a dog"], height=16, width=16, outer_steps=2, inner_steps=3, outer_eta=0.0,
                   output_type="np", generator=[torch.Generator().manual_seed(i) for i in (0, 1)]).images
        from PIL import Image
        from nested_diffusion.imaging import row
        final = np.asarray(Image.open(out / "final.png").convert("RGB"), dtype=np.int16)
        expect = row(torch.from_numpy(np.asarray(ref)).permute(0, 3, 1, 2) * 2 - 1, 1).astype(np.int16)
        assert final.shape == expect.shape and np.abs(final - expect).max() <= 1
    finally:
        families.unregister_family("flux-stock")
