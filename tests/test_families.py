"""Adding a model family = its pipeline class (with ``run_defaults``) + one ``register_family``: a toy family
registered here is reached from Python, ``generate``, ``sample`` (named schedules included), ``eval``,
``calibrate`` and the ``serve`` backend with its own defaults — the one step docs/ARCHITECTURE.md describes."""
import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from fixtures_tiny import tiny_sd  # noqa: E402

from nested_diffusion import cli  # noqa: E402
from nested_diffusion.core.run import RunDefaults  # noqa: E402
from nested_diffusion.families import Family, family_names, get_family, register_family, unregister_family  # noqa
from nested_diffusion.pipelines import NestedStableDiffusionPipeline  # noqa: E402


class ToyPipeline(NestedStableDiffusionPipeline):
    """A 'new family': SD's code with other run defaults (2 × 3, DPM-Solver++(2M) inner)."""
    run_defaults = RunDefaults(outer_steps=2, inner_steps=3, nfe=6, inner_solver="dpmpp_2m", outer_eta=None)


@pytest.fixture()
def toy(tmp_path):
    register_family(Family("toy", "a toy family for the tests", "prompt", ToyPipeline, "sd"))
    folder = tmp_path / "toy"
    tiny_sd().save_pretrained(folder)
    yield folder
    unregister_family("toy")


def test_a_registered_family_reaches_every_surface(toy, tmp_path):
    fam = get_family("toy")
    assert "toy" in family_names() and fam.run_defaults().inner_solver == "dpmpp_2m" and fam.guidance_default() == 7.5
    pipe = fam.load(toy)                                                                     # Python
    assert isinstance(pipe, ToyPipeline)
    out = pipe(prompt=["a cat"], height=16, width=16, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert out.nfe == 6 and pipe.nested_sampler.config.outer_eta == "sqrt_one_minus_alpha_bar"
    gen = tmp_path / "gen"                                                                    # generate
    assert cli.main(["generate", "--pipeline", "toy", "--model-path", str(toy), "--prompt", "a cat", "--height",
                     "16", "--width", "16", "--out", str(gen), "--quiet"]) == 0
    s = json.loads((gen / "updates.json").read_text())["settings"]
    assert (s["family"], s["inner"], s["solver"]) == ("toy", [3, 3], "dpmpp_2m")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    samples = tmp_path / "samples"                                                            # sample
    assert cli.main(["sample", "--pipeline", "toy", "--model-path", str(toy), "--prompts", str(prompts),
                     "--height", "16", "--width", "16", "--num-samples", "2", "--batch-size", "2", "--step", "3",
                     "--out-dir", str(samples), "--device", "cpu", "--quiet"]) == 0
    manifest = json.loads((samples / "manifest.json").read_text())
    assert manifest["config"]["outer"] == 2 and manifest["config"]["inner"] == 3
    assert cli.main(["sample", "--pipeline", "toy", "--model-path", str(toy), "--prompts", str(prompts),
                     "--height", "16", "--width", "16", "--num-samples", "2", "--batch-size", "2", "--step", "5",
                     "--schedule", "progressive", "--nfe", "5", "--first", "1", "--out-dir", str(tmp_path / "s2"),
                     "--device", "cpu", "--quiet"]) == 0
    assert json.loads((tmp_path / "s2" / "manifest.json").read_text())["config"]["inner_steps"] == [1, 1, 3]
    ev = tmp_path / "eval"                                                                    # eval
    assert cli.main(["eval", "consistency", "--pipeline", "toy", "--model-path", str(toy), "--prompts", str(prompts),
                     "--height", "16", "--width", "16", "--samples", "2", "--chunk", "2", "--metrics", "mse",
                     "--configs", "2x3", "--total-nfe", "6", "--step", "1", "--device", "cpu", "--quiet",
                     "--out", str(ev)]) == 0
    assert list(ev.glob("*.json"))
    cal = tmp_path / "cal"                                                                    # calibrate
    assert cli.main(["calibrate", "--pipeline", "toy", "--model-path", str(toy), "--prompts", str(prompts),
                     "--height", "16", "--width", "16", "--feature-model", "random-rgb", "--samples", "20",
                     "--chunk", "20", "--threads", "1", "--out", str(cal), "--cache-dir", str(tmp_path / "cc")]) == 0
    made = next(cal.glob("*.json"))
    assert json.loads(made.read_text())["config"]["sampler"]["inner_steps"] == [3, 3]   # the toy's defaults
    from nested_diffusion.web import JobRequest, load_backend, stream_updates                # serve
    backend = load_backend("toy", toy, calibration=str(made))
    ups = list(stream_updates(backend, JobRequest(prompt="a cat", height=16, width=16)))
    shown = [u.expected_change for u in ups if u.expected_change is not None]
    assert ups[-1].nfe == 6 and shown and all(w.startswith("Expected change: ") for w in shown)
