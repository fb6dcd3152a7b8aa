"""NestedStableDiffusionXLPipeline, NestedStableDiffusion3Pipeline and NestedFluxPipeline on tiny random-weight
fixtures built at test time: equivalence with the stock diffusers pipelines, K×1 = K-step Euler/DDIM, NFE
accounting, anytime updates, cheap previews (AutoencoderTiny, latent_rgb), save/load, argument checks."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler  # noqa: E402

from fixtures_modern import SDXL_SCHEDULER, tiny_flux, tiny_sd3, tiny_sdxl, tiny_taesd  # noqa: E402
from nested_diffusion.pipelines import (NestedFluxPipeline, NestedStableDiffusion3Pipeline,  # noqa: E402
                                        NestedStableDiffusionXLPipeline)
from nested_diffusion.pipelines.previews import fit_latent_rgb, latent_rgb_decode  # noqa: E402

BASE = dict(prompt="a photo of a cat", height=16, width=16, output_type="latent")
GRID4 = [999, 749, 500, 250]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def count_calls(module):
    counts = [0]
    handle = module.register_forward_hook(lambda *a: counts.__setitem__(0, counts[0] + 1))
    try:
        yield counts
    finally:
        handle.remove()


def nested_of(cls, stock):
    p = cls.from_pipe(stock)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def sdxl():
    stock = tiny_sdxl()
    return stock, nested_of(NestedStableDiffusionXLPipeline, stock)


@pytest.fixture(scope="module")
def sd3():
    stock = tiny_sd3()
    return stock, nested_of(NestedStableDiffusion3Pipeline, stock)


@pytest.fixture(scope="module")
def flux():
    stock = tiny_flux()
    return stock, nested_of(NestedFluxPipeline, stock)


# ------------------------------------------------------------------------------------------ equivalences
@pytest.mark.parametrize("scheduler", ["euler", "dpm1"])
def test_sdxl_one_outer_step_reproduces_stock(sdxl, scheduler):
    """Stock SDXL with its Euler scheduler (VE coordinates, x_T × init_noise_sigma) or first-order DPM-Solver++ on
    the grid GRID4 ending at σ = 0 ≡ nested 1×4 DDIM η = 0; and nested 4×1 ≡ the same 4 steps."""
    stock, nested = sdxl
    stock.scheduler = (EulerDiscreteScheduler.from_config(SDXL_SCHEDULER) if scheduler == "euler" else
                       DPMSolverMultistepScheduler.from_config(SDXL_SCHEDULER, solver_order=1,
                                                               final_sigmas_type="zero"))
    kw = dict(negative_prompt="a dog", guidance_scale=5.0, guidance_rescale=0.3)
    ref = stock(**BASE, **kw, timesteps=GRID4, generator=gen()).images
    for k, n in ((1, 4), (4, 1)):
        out = nested(**BASE, **kw, outer_steps=k, inner_steps=n, inner_eta=0.0, outer_eta=0.0, generator=gen())
        assert out.nfe == 4
        # x̂0 latents of the random UNet reach ~50: relative float32 agreement (measured 9.8e-7, 6.6e-7)
        assert float((out.images - ref).abs().max() / ref.abs().max()) < 1e-5
    img_ref = stock(**{**BASE, "output_type": "np"}, **kw, timesteps=GRID4, generator=gen()).images
    img = nested(**{**BASE, "output_type": "np"}, **kw, outer_steps=1, inner_steps=4, inner_eta=0.0,
                 generator=gen()).images
    assert np.abs(img - img_ref).max() <= 1e-5


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_one_outer_step_reproduces_stock_and_k_by_1_equals_k_step_euler(family, sd3, flux):
    stock, nested = {"sd3": sd3, "flux": flux}[family]
    kw = dict(negative_prompt="a dog") if family == "sd3" else dict(guidance_scale=3.5)
    for n in (1, 5):
        ref = stock(**BASE, **kw, num_inference_steps=n, generator=gen()).images
        out = nested(**BASE, **kw, outer_steps=1, inner_steps=n, generator=gen())
        assert out.nfe == n and out.final
        assert float((out.images - ref).abs().max()) <= 1e-5  # measured 1.9e-6 (SD3), 7.2e-7 (FLUX)
        grid_k = nested(**BASE, **kw, outer_steps=n, inner_steps=1, outer_eta=0.0, generator=gen()).images
        assert float((grid_k - ref).abs().max()) <= 1e-5
    img_ref = stock(**{**BASE, "output_type": "np"}, **kw, num_inference_steps=3, generator=gen()).images
    img = nested(**{**BASE, "output_type": "np"}, **kw, outer_steps=1, inner_steps=3, generator=gen()).images
    assert np.abs(img - img_ref).max() <= 1e-5


def test_flux_true_cfg_and_sd3_dynamic_shift_reproduce_stock(flux, sd3):
    from diffusers import FlowMatchEulerDiscreteScheduler

    stock, nested = flux
    kw = dict(negative_prompt="a dog", true_cfg_scale=2.0)
    ref = stock(**BASE, **kw, num_inference_steps=3, generator=gen()).images
    with count_calls(nested.transformer) as calls:
        out = nested(**BASE, **kw, outer_steps=1, inner_steps=3, generator=gen())
    assert out.nfe == 3 and calls[0] == 6  # real CFG: two transformer calls per NFE, as stock
    assert float((out.images - ref).abs().max()) <= 1e-5
    stock, nested = sd3
    original = stock.scheduler
    stock.scheduler = nested.scheduler = FlowMatchEulerDiscreteScheduler.from_config(original.config,
                                                                                     use_dynamic_shifting=True)
    try:
        ref = stock(**BASE, num_inference_steps=4, generator=gen()).images
        out = nested(**BASE, outer_steps=1, inner_steps=4, generator=gen()).images  # μ from the image size
        static = float((stock(**BASE, num_inference_steps=4, generator=gen(), mu=2.0).images - ref).abs().max())
    finally:
        stock.scheduler = nested.scheduler = original
    assert float((out - ref).abs().max()) <= 1e-5 and static > 1e-3


def test_flux_guidance_embedding_is_used(flux):
    _, nested = flux
    a = nested(**BASE, outer_steps=2, inner_steps=2, guidance_scale=3.5, generator=gen()).images
    b = nested(**BASE, outer_steps=2, inner_steps=2, guidance_scale=1.0, generator=gen()).images
    assert float((a - b).abs().max()) > 1e-4


# ------------------------------------------------------------------------------------------ anytime and NFE
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_nfe_updates_and_callbacks(family, sdxl, sd3, flux):
    stock, nested = {"sdxl": sdxl, "sd3": sd3, "flux": flux}[family]
    model = nested.unet if family == "sdxl" else nested.transformer
    solver = "dpmpp_2m" if family == "sdxl" else "heun"
    seen = []
    with count_calls(model) as calls:
        outs = list(nested.iter_anytime(**BASE, outer_steps=3, inner_steps=2, inner_solver=solver, generator=gen(),
                                        callback_on_step_end=lambda p, i, t, kw: seen.append(i) or {}))
    per_run = 2 if family == "sdxl" else 3  # Heun: 2n − 1 NFE
    assert calls[0] == 3 * per_run == outs[-1].nfe == nested.nested_sampler.total_nfe
    assert [o.source for o in outs][-3:] == ["inner_result"] * 3 and outs[-1].final
    assert seen == list(range(len(outs)))
    full = list(nested.iter_anytime(**BASE, outer_steps=3, inner_steps=2, inner_solver=solver, generator=gen()))
    budget = nested(**BASE, outer_steps=3, inner_steps=2, inner_solver=solver, max_nfe=2 * per_run + 1,
                    generator=gen())
    assert budget.nfe == 2 * per_run and torch.equal(budget.images, full[-2].images)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_interrupt_and_callback_embeddings(family, sd3, flux):
    _, nested = {"sd3": sd3, "flux": flux}[family]
    kw = dict(BASE, outer_steps=3, inner_steps=2)
    updates = list(nested.iter_anytime(**kw, generator=gen()))

    def stop_at_2(p, i, t, k):
        if i == 2:
            p._interrupt = True
        return {}
    with count_calls(nested.transformer) as calls:
        out = nested(**kw, generator=gen(), callback_on_step_end=stop_at_2)
    assert calls[0] == 4 and out.nfe == 4 and not out.final and torch.equal(out.images, updates[2].images)
    other = nested(**{**kw, "prompt": "a red dog"}, generator=gen()).images
    embeds = {}

    def swap(p, i, t, k):  # from update 0 on, condition on the other prompt (read from a run of it)
        return {"prompt_embeds": embeds["e"]} if i == 0 else {}

    def grab(p, i, t, k):
        embeds.setdefault("e", k["prompt_embeds"])
        return {}
    nested(**{**kw, "prompt": "a red dog"}, generator=gen(), callback_on_step_end=grab,
           callback_on_step_end_tensor_inputs=["prompt_embeds"])
    swapped = nested(**kw, generator=gen(), callback_on_step_end=swap,
                     callback_on_step_end_tensor_inputs=["prompt_embeds"]).images
    assert float((swapped - updates[-1].images).abs().max()) > 1e-4
    assert float((swapped - other).abs().max()) > 1e-7  # the first NFE still saw the original prompt


# ------------------------------------------------------------------------------------------ previews
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_cheap_previews_decode_only_previews_and_the_final_uses_the_full_vae(family, sdxl, sd3, flux, monkeypatch):
    _, nested = {"sdxl": sdxl, "sd3": sd3, "flux": flux}[family]
    tiny = tiny_taesd(4 if family == "sdxl" else 16)
    full_calls, tiny_calls = [], []
    full_decode, tiny_decode = nested.vae.decode, tiny.decode
    monkeypatch.setattr(nested.vae, "decode", lambda *a, **k: full_calls.append(1) or full_decode(*a, **k))
    monkeypatch.setattr(tiny, "decode", lambda *a, **k: tiny_calls.append(1) or tiny_decode(*a, **k))
    kw = dict(BASE, output_type="np", outer_steps=3, inner_steps=3)
    outs = list(nested.iter_anytime(**kw, preview_vae=tiny, generator=gen()))
    assert [o.decoder for o in outs] == ["tiny", "tiny", "vae", "vae", "vae"]
    assert len(tiny_calls) == 2 and len(full_calls) == 3
    full_calls.clear(), tiny_calls.clear()
    outs = list(nested.iter_anytime(**kw, preview_vae=tiny, preview_results=True, generator=gen()))
    assert [o.decoder for o in outs] == ["tiny"] * 4 + ["vae"] and len(full_calls) == 1
    plain = list(nested.iter_anytime(**kw, generator=gen()))
    assert all(o.decoder == "vae" for o in plain)  # default: full VAE everywhere
    assert np.array_equal(plain[-1].images, outs[-1].images)  # the final image does not depend on previews
    rgb = list(nested.iter_anytime(**kw, preview="latent_rgb", generator=gen()))
    assert [o.decoder for o in rgb][:2] == ["latent_rgb"] * 2 and rgb[0].images.shape == plain[0].images.shape
    assert nested.latent_rgb_factors.shape == (5 if family == "sdxl" else 17, 3)  # fitted once, cached


def test_latent_rgb_fit_recovers_a_linear_decoder():
    """On a VAE that *is* linear per latent pixel the least-squares fit is exact."""
    A = torch.randn(4, 3, generator=gen(1))
    b = torch.tensor([0.1, -0.2, 0.3])
    images = torch.nn.functional.interpolate(torch.rand(6, 3, 4, 4, generator=gen(2)) * 2 - 1, size=(16, 16),
                                             mode="nearest")
    pinv = torch.linalg.pinv(A)  # (3, 4): an "encoder" whose latents z satisfy z·A + b = the pooled colours

    def encode(x):
        return torch.einsum("bchw,cd->bdhw", torch.nn.functional.avg_pool2d(x, 2) - b.view(1, 3, 1, 1), pinv)
    factors = fit_latent_rgb(encode, 2, images)
    z = encode(images)
    pooled = torch.nn.functional.avg_pool2d(images, 2)
    approx = torch.einsum("bchw,cd->bdhw", z, factors[:-1]) + factors[-1].view(1, 3, 1, 1)
    assert float((approx - pooled).abs().max()) < 1e-4
    assert latent_rgb_decode(factors, z, 2).shape == images.shape


# ------------------------------------------------------------------------------------------ loading, arguments
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_from_pretrained_round_trip_and_float64(family, sdxl, sd3, flux, tmp_path):
    stock, nested = {"sdxl": sdxl, "sd3": sd3, "flux": flux}[family]
    cls = type(nested)
    stock.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, cls)
    a = loaded(**BASE, outer_steps=2, inner_steps=2, generator=gen()).images
    same = nested(**BASE, outer_steps=2, inner_steps=2, generator=gen()).images
    # Save/load crosses a library boundary: diffusers/transformers rebuild the modules and may cast, re-tie or
    # re-initialise buffers on load (FLUX differs by ~4.8e-7 of the latent scale under newer transformers), so
    # not bit equality but 1e-5 of the largest |latent|, the tolerance of the stock-equivalence tests here.
    assert float((a - same).abs().max() / same.abs().max()) <= 1e-5
    f64 = cls.from_pretrained(tmp_path, torch_dtype=torch.float64, local_files_only=True)
    f64.set_progress_bar_config(disable=True)
    lat = torch.randn(a.shape, generator=gen())  # float64 randn is another stream: share x_T, deterministic steps
    det = dict(outer_eta=0.0, inner_eta=0.0)
    b = f64(**BASE, outer_steps=2, inner_steps=2, latents=lat, **det).images
    c = loaded(**BASE, outer_steps=2, inner_steps=2, latents=lat, **det).images
    assert b.dtype == torch.float64 and float((b.float() - c).abs().max() / c.abs().max()) < 1e-3


BAD = [
    (dict(outer_steps=0), ValueError, "outer_steps"),
    (dict(inner_steps=[2, 0], outer_steps=2), ValueError, "inner_steps"),
    (dict(inner_solver="dpmpp_2s"), ValueError, "inner_solver"),
    (dict(inner_solver="heun", inner_eta=0.5), ValueError, "inner_eta"),
    (dict(outer_eta="sometimes"), ValueError, "outer_eta"),
    (dict(grid="authors"), ValueError, "grid"),
    (dict(height=18), ValueError, "height"),
    (dict(max_nfe=0), ValueError, "max_nfe"),
    (dict(preview="fast"), ValueError, "preview"),
    (dict(preview="tiny"), ValueError, "preview_vae"),
    (dict(latents=torch.zeros(1, 3, 3)), ValueError, "latents"),
    (dict(inner_solver=EulerDiscreteScheduler()), ValueError, "inner_solver"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_bad_arguments_raise_before_any_model_call(family, sd3, flux, kwargs, error, match):
    _, nested = {"sd3": sd3, "flux": flux}[family]
    with count_calls(nested.transformer) as calls:
        with pytest.raises(error, match=match):
            nested(**{**BASE, "output_type": "np", **kwargs})
    assert calls[0] == 0


@pytest.mark.parametrize("kwargs,match", [(dict(inner_solver="heun"), "inner_solver"), (dict(preview="x"), "preview"),
                                          (dict(outer_eta="fresh"), "outer_eta"), (dict(grid="sigma_min"), "grid")])
def test_sdxl_bad_arguments(sdxl, kwargs, match):
    _, nested = sdxl
    with count_calls(nested.unet) as calls:
        with pytest.raises(ValueError, match=match):
            nested(**{**BASE, **kwargs})
    assert calls[0] == 0
