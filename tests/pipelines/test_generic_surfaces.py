"""Generic families (stock diffusers pipelines through ``NestedScheduler``) under the evaluation runners: ``sample``
and ``eval`` through ``pipelines.factories_generic`` (``anytime(..., decode=False)`` + the stock decode).

The table's generic image families have no tokenizer in their tiny fixtures, so the command-line runs use a toy
generic family over FLUX.1's stock ``FluxPipeline`` (tiny, with tokenizers), registered for the test as
``tests/cli/test_generate_families.py`` does; the factory itself is also run on every image family of the table with
embeddings. Tolerance: the factory's decode of a run's final latents against ``anytime``'s own decoded final image
of the same run — the same decoder on the same latents: ≤ 1e-6 absolute (float32; measured 0)."""
from __future__ import annotations


import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from fixtures_any import BUILDERS  # noqa: E402
from fixtures_modern import tiny_flux  # noqa: E402
from test_anytime_any import call_kw  # noqa: E402

import nested_diffusion  # noqa: E402
from nested_diffusion import cli  # noqa: E402
from nested_diffusion.families import get_family  # noqa: E402
from nested_diffusion.pipelines.factories_generic import decode_latents, generic_factory, latent_shape  # noqa: E402

torch.set_num_threads(1)
IMAGE_FAMILIES = [n for n in BUILDERS if n != "wan"]


@pytest.mark.parametrize("name", IMAGE_FAMILIES)
def test_latent_shape_and_decode_match_anytime(name):
    from nested_diffusion.pipelines.any_pipeline import GENERIC_FAMILIES
    pipe = BUILDERS[name]()
    layout = GENERIC_FAMILIES[name].layout
    kw = call_kw(name)
    ups = list(nested_diffusion.anytime(pipe, **kw, outer_steps=2, inner_steps=2, previews="none",
                                        generator=torch.Generator().manual_seed(0)))
    lat = list(nested_diffusion.anytime(pipe, **kw, outer_steps=2, inner_steps=2, previews="none", decode=False,
                                        generator=torch.Generator().manual_seed(0)))
    assert tuple(lat[-1].x0.shape[1:]) == latent_shape(layout, pipe, 16, 16)
    img = decode_latents(layout, pipe, lat[-1].x0, 16, 16)
    assert img.shape == ups[-1].x0.shape and (img.float() - ups[-1].x0).abs().max() <= 1e-6


@pytest.fixture
def toy(tmp_path, monkeypatch):
    from nested_diffusion import families
    from nested_diffusion.pipelines import any_pipeline
    monkeypatch.setitem(any_pipeline.GENERIC_FAMILIES, "flux-stock", any_pipeline.GenericFamily(
        "flux-stock", ("FluxPipeline",), "NestedFluxPipeline", "flux"))
    families.register_family(families.Family("flux-stock", "FLUX.1 through NestedScheduler", "prompt",
                                             "FluxPipeline", "generic", generic=True))
    from diffusers import FluxPipeline
    FluxPipeline.from_pipe(tiny_flux()).save_pretrained(tmp_path / "flux")
    (tmp_path / "prompts.txt").write_text("a photo of a cat\nthe red dog\n")
    yield tmp_path
    families.unregister_family("flux-stock")


def test_factory_streams_what_anytime_gives(toy):
    pipe = get_family("flux-stock").load(toy / "flux")
    factory = generic_factory(pipe, ["a cat", "a dog"], height=16, width=16, outer_eta=0.0, family="flux-stock")
    sampler = factory.build(2, 3)
    assert (sampler.outer_steps, list(sampler.inner_steps), sampler.total_nfe) == (2, [3, 3], 6)
    ups = list(sampler.stream([0, 1], (2, *factory.sample_shape), cond=factory.cond_for([0, 1]), previews="none"))
    assert [u.nfe for u in ups] == [3, 6]
    ref = list(nested_diffusion.anytime(pipe, prompt=["a cat", "a dog"], height=16, width=16, outer_steps=2,
                                        inner_steps=3, outer_eta=0.0, previews="none", seed=[0, 1],
                                        generator=[torch.Generator().manual_seed(s) for s in (0, 1)]))
    assert (sampler.decode(ups[-1].x0) - ref[-1].x0.clamp(-1, 1)).abs().max() <= 1e-6
    prog = factory.make("progressive", 41)
    assert prog.total_nfe == 41 and prog.config.schedule == "progressive"


@pytest.mark.parametrize("schedule", ["uniform", "progressive"])
def test_sample_and_eval_run_a_generic_family(toy, schedule, capsys):
    model = ["--pipeline", "flux-stock", "--model-path", str(toy / "flux"), "--height", "16", "--width", "16",
             "--prompts", str(toy / "prompts.txt")]
    flags = (["--outer-steps", "2", "--inner-steps", "2"] if schedule == "uniform"
             else ["--schedule", "progressive", "--nfe", "5", "--first", "1"])
    code = cli.main(["sample", "--out-dir", str(toy / "s"), "--num-samples", "2", "--batch-size", "2", "--step",
                     "update", "--device", "cpu", "--threads", "1", "--quiet", *flags, *model])
    assert code == 0, capsys.readouterr().err
    assert list((toy / "s").rglob("*"))
    code = cli.main(["eval", "consistency", "--out", str(toy / "e"), "--samples", "2", "--chunk", "2", "--metrics",
                     "mse", "--step", "1", "--configs", "2x2" if schedule == "uniform" else "progressive",
                     "--total-nfe", "4" if schedule == "uniform" else "41", "--device", "cpu", "--quiet", *model])
    assert code == 0, capsys.readouterr().err
    code = cli.main(["eval", "consistency", "--out", str(toy / "e2"), "--samples", "2", "--configs", "2x2",
                     "--total-nfe", "4", "--solver", "heun", "--quiet", *model])
    err = capsys.readouterr().err
    assert code == 2 and "--solver: --pipeline flux-stock runs its own scheduler as the inner solver" in err, err
