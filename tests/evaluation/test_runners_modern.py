"""The evaluation runners on the SDXL, SD3 and FLUX nested pipelines (modern_factory and `eval --pipeline`):
snapshots equal separately budgeted iter_anytime runs with the same seeds and prompts."""
from __future__ import annotations

import argparse
import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402

from fixtures_modern import tiny_flux, tiny_sd3, tiny_sdxl  # noqa: E402
from nested_diffusion.cli import eval as cli_eval  # noqa: E402
from nested_diffusion.evaluation.features import quantize  # noqa: E402
from nested_diffusion.evaluation.snapshots import collect_snapshots  # noqa: E402
from nested_diffusion.pipelines import (NestedFluxPipeline, NestedStableDiffusion3Pipeline,  # noqa: E402
                                        NestedStableDiffusionXLPipeline)
from nested_diffusion.pipelines.factories_modern import modern_factory  # noqa: E402

PROMPTS = ["a photo of a cat", "a red dog", "the blue cat"]
SEED = 3
BUILD = {"sdxl": (tiny_sdxl, NestedStableDiffusionXLPipeline), "sd3": (tiny_sd3, NestedStableDiffusion3Pipeline),
         "flux": (tiny_flux, NestedFluxPipeline)}


def nested(family):
    make, cls = BUILD[family]
    pipe = cls.from_pipe(make())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_snapshots_equal_separate_budgeted_runs(family, tmp_path):
    pipe = nested(family)
    fac = modern_factory(pipe, PROMPTS, height=16, width=16)
    marks = [2, 4, 6]
    snaps = collect_snapshots(fac, 3, 2, 4, SEED, marks, tmp_path, chunk=4)
    assert snaps.final.shape == (4, 3, 16, 16) and snaps.timing["denoiser_calls"] == 6
    for m in marks:
        last = None
        for last in pipe.iter_anytime(prompt=[PROMPTS[i % 3] for i in range(4)], outer_steps=3, inner_steps=2,
                                      height=16, width=16, max_nfe=m, output_type="pt",
                                      generator=[torch.Generator().manual_seed(SEED + i) for i in range(4)]):
            pass
        assert last.nfe == snaps.update_nfes[snaps.mark_index[marks.index(m)]]
        diff = (snaps.at(m).int() - quantize(last.images * 2 - 1).int()).abs()
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01
    assert fac.info["pipeline"] == family and fac.info["prompts"]["count"] == 3


def test_cli_consistency_with_the_flux_pipeline(tmp_path, capsys):
    tiny_flux().save_pretrained(tmp_path / "flux")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS))
    p = argparse.ArgumentParser()
    cli_eval.add_parser(p.add_subparsers(dest="command", required=True))
    argv = ["eval", "consistency", "--pipeline", "flux", "--model-path", str(tmp_path / "flux"), "--prompts",
            str(tmp_path / "prompts.txt"), "--height", "16", "--width", "16", "--metrics", "mse", "--samples", "4",
            "--chunk", "4", "--configs", "2x2,4x1", "--total-nfe", "4", "--step", "2", "--out", str(tmp_path / "c"),
            "--quiet"]
    assert cli_eval.run(p.parse_args(argv)) == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "c" / "consistency.json").read_text())
    assert doc["sampler"]["pipeline"] == "flux" and doc["sampler"]["solver"] == "euler"
    bad = argv[:4] + ["--model-path", str(tmp_path / "flux")]   # no --prompts
    assert cli_eval.run(p.parse_args(bad + ["--out", str(tmp_path / "bad")])) == 2
    assert "--prompts: required" in capsys.readouterr().err


def test_sample_command_with_the_sd3_pipeline(tmp_path, capsys):
    import numpy as np

    from nested_diffusion.cli.main import main as cli_main
    tiny_sd3().save_pretrained(tmp_path / "sd3")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS))
    argv = ["sample", "--pipeline", "sd3", "--model-path", str(tmp_path / "sd3"), "--prompts",
            str(tmp_path / "prompts.txt"), "--height", "16", "--width", "16", "--num-samples", "4", "--batch-size", "2",
            "--outer-steps", "2", "--inner-steps", "2", "--solver", "heun", "--step", "3", "--out-dir",
            str(tmp_path / "s"), "--merge-when-done", "--quiet"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    final = np.load(tmp_path / "s" / "merged" / "nfe_0006.npz")["arr_0"]   # Heun: 2 × (2·2 − 1) = 6 NFE
    assert final.shape == (4, 16, 16, 3) and final.dtype == np.uint8
