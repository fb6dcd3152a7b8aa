"""``nested_diffusion.anytime(pipe, ...)`` on stock pipelines: the updates, stopping within one model call, and
decoding that matches the stock pipeline's own (images and Wan videos). Tiny random-weight fixtures.

Decoded results are compared with the stock pipeline's ``output_type="pt"`` output of the same run: the same
decoder on the same latents, so equal up to the postprocessing's clamp (tolerance 1e-6 absolute, float32)."""
from __future__ import annotations

import threading

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from fixtures_any import BUILDERS  # noqa: E402
from fixtures_modern import tiny_flux, tiny_taesd  # noqa: E402

import nested_diffusion  # noqa: E402
from nested_diffusion.pipelines.nested_scheduler import NestedScheduler, NestedSchedulerError  # noqa: E402
from test_nested_scheduler import Recorder, family_kw, flux_kw  # noqa: E402

torch.set_num_threads(1)


def call_kw(family):
    kw = flux_kw() if family == "flux" else family_kw(family)
    kw.pop("output_type")
    return kw


@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


def stock_pixels(pipe, kw, steps, scheduler=None):
    orig = pipe.scheduler
    pipe.scheduler = scheduler or orig
    try:
        out = pipe(**kw, num_inference_steps=steps, output_type="pt", generator=torch.Generator().manual_seed(0))
    finally:
        pipe.scheduler = orig
    return out.frames if hasattr(out, "frames") else out.images


@pytest.mark.parametrize("family", ["flux"] + list(BUILDERS))
def test_one_outer_step_decodes_to_the_stock_pipelines_output(family, flux):
    pipe = flux if family == "flux" else BUILDERS[family]()
    kw = call_kw(family)
    ups = list(nested_diffusion.anytime(pipe, **kw, outer_steps=1, inner_steps=3,
                                        generator=torch.Generator().manual_seed(0)))
    assert [u.nfe for u in ups] == [1, 2, 3] and ups[-1].final and ups[-1].source == "inner_result"
    assert [u.source for u in ups[:2]] == ["x0_preview"] * 2
    ref = stock_pixels(pipe, kw, 3)
    img = (ups[-1].x0 / 2 + 0.5).clamp(0, 1)
    if family == "wan":                      # (B, C, F, H, W) from the VAE; the pipeline gives (B, F, C, H, W)
        img = img.permute(0, 2, 1, 3, 4)
    assert img.shape == ref.shape and (img - ref).abs().max() <= 1e-6
    assert type(pipe.scheduler).__name__ != "NestedScheduler"      # the stock scheduler is back


def test_updates_of_a_nested_run_and_its_final_image(flux):
    kw = call_kw("flux")
    ups = list(nested_diffusion.anytime(flux, **kw, outer_steps=3, inner_steps=2, outer_eta=0.0,
                                        generator=torch.Generator().manual_seed(0)))
    assert [(u.nfe, u.source, u.outer_step) for u in ups] == [
        (1, "x0_preview", 1), (2, "inner_result", 1), (4, "inner_result", 2), (6, "inner_result", 3)]
    assert [u.final for u in ups] == [False, False, False, True] and ups[-1].elapsed >= ups[0].elapsed
    assert all(u.decoder == "vae" and u.x0.shape == (1, 3, 16, 16) for u in ups)
    ref = stock_pixels(flux, kw, 2, NestedScheduler(flux.scheduler, outer_steps=3, inner_steps=2, outer_eta=0.0))
    assert ((ups[-1].x0 / 2 + 0.5).clamp(0, 1) - ref).abs().max() <= 1e-6
    assert (ups[1].x0 - ups[-1].x0).abs().max() > 0.01


def test_stopping_within_one_model_call(flux):
    kw = call_kw("flux")
    rec = Recorder(flux.transformer)
    try:
        for u in nested_diffusion.anytime(flux, **kw, outer_steps=3, inner_steps=2, outer_eta=0.0):
            break                                       # the consumer leaves after the first update
        assert len(rec.calls) == 1 and u.nfe == 1
        rec.calls.clear()
        ups = list(nested_diffusion.anytime(flux, **kw, outer_steps=3, inner_steps=2, outer_eta=0.0, max_nfe=5))
        assert len(rec.calls) == 4 and ups[-1].nfe == 4 and ups[-1].source == "inner_result"  # run 3 cannot finish
        rec.calls.clear()
        event = threading.Event()
        seen = []
        for u in nested_diffusion.anytime(flux, **kw, outer_steps=3, inner_steps=2, outer_eta=0.0, stop=event):
            seen.append(u.nfe)
            if u.nfe == 2:
                event.set()                             # as another thread would
        assert seen == [1, 2] and len(rec.calls) == 2
    finally:
        rec.close()
    assert type(flux.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"


def test_tiny_previews_and_full_vae_results(flux):
    tiny = tiny_taesd(16)
    ups = list(nested_diffusion.anytime(flux, **call_kw("flux"), outer_steps=2, inner_steps=3, outer_eta=0.0,
                                        preview_vae=tiny))
    assert [u.decoder for u in ups] == ["tiny", "tiny", "vae", "vae"]


def test_wan_gives_anytime_videos():
    pipe = BUILDERS["wan"]()
    kw = call_kw("wan")
    ups = list(nested_diffusion.anytime(pipe, **kw, outer_steps=2, inner_steps=2, previews="none",
                                        generator=torch.Generator().manual_seed(0)))
    assert [(u.nfe, u.source) for u in ups] == [(2, "inner_result"), (4, "inner_result")]
    assert all(u.x0.shape == (1, 3, 5, 16, 16) for u in ups)           # every finished run is a 5-frame video
    ref = stock_pixels(pipe, kw, 2, NestedScheduler(pipe.scheduler, outer_steps=2, inner_steps=2, grid="sigma_min"))
    assert ((ups[-1].x0 / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4) - ref).abs().max() <= 1e-6


def test_bad_arguments_are_refused_before_any_model_call(flux):
    rec = Recorder(flux.transformer)
    try:
        kw = call_kw("flux")
        with pytest.raises(ValueError, match=r"num_inference_steps: not an argument of anytime\(\)"):
            nested_diffusion.anytime(flux, **kw, num_inference_steps=4)
        with pytest.raises(ValueError, match=r"outer_steps: must be"):
            nested_diffusion.anytime(flux, **kw, outer_steps=-1)
        with pytest.raises(ValueError, match=r"max_nfe: must be an integer ≥ 1"):
            nested_diffusion.anytime(flux, **kw, max_nfe=0)
        with pytest.raises(ValueError, match=r"previews: 'some' is not valid"):
            nested_diffusion.anytime(flux, **kw, previews="some")
        from diffusers import FluxImg2ImgPipeline
        img2img = FluxImg2ImgPipeline.from_pipe(flux)
        img2img.set_progress_bar_config(disable=True)
        with pytest.raises(NestedSchedulerError, match=r"strength: 0\.6 is not available"):
            list(nested_diffusion.anytime(img2img, **kw, image=torch.zeros(1, 3, 16, 16), strength=0.6,
                                          outer_steps=2, inner_steps=2, decode=False))
    finally:
        rec.close()
    assert rec.calls == []
    assert type(img2img.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"


def test_family_table_entries_load_stock_pipelines_and_read_their_defaults(tmp_path):
    from nested_diffusion.families import family_of_pipeline, get_family
    from nested_diffusion.pipelines.any_pipeline import GENERIC_FAMILIES
    for name in BUILDERS:
        fam = get_family(name)
        assert fam.generic and fam.run_defaults() is GENERIC_FAMILIES[name].defaults()
        assert fam.pipeline_class().__name__ in GENERIC_FAMILIES[name].pipelines and fam.guidance_default() > 0
    BUILDERS["flux2"]().save_pretrained(tmp_path / "flux2")          # saved and loaded for real
    # the fixture has no text encoder (embeddings are passed), so it is loaded with them left out explicitly
    pipe = get_family("flux2").pipeline_class().from_pretrained(tmp_path / "flux2", text_encoder=None, tokenizer=None)
    pipe.set_progress_bar_config(disable=True)
    assert family_of_pipeline(pipe).name == "flux2"
    ups = list(nested_diffusion.anytime(pipe, **call_kw("flux2"), generator=torch.Generator().manual_seed(0)))
    d = get_family("flux2").run_defaults()                           # the family's defaults decide the run
    assert ups[-1].final and ups[-1].nfe == d.outer_steps * d.inner_steps and ups[-1].outer_steps == d.outer_steps
