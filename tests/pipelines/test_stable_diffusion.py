"""NestedStableDiffusionPipeline on tiny random-weight SD components: equivalences with the stock diffusers
pipeline, NFE accounting, the anytime iterator, callbacks, interrupt, budget and argument checks."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       DPMSolverSinglestepScheduler, EulerDiscreteScheduler)
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput  # noqa: E402

from fixtures_tiny import SD_CONFIG, tiny_sd  # noqa: E402
from nested_diffusion.pipelines import NestedStableDiffusionPipeline  # noqa: E402

PROMPT = "a photo of a cat"
BASE = dict(prompt=PROMPT, height=16, width=16, output_type="latent")
TOL = 1e-5  # relative float32 agreement; a wrong grid, noise stream or guidance order gives > 1e-3
GRID4 = [999, 749, 500, 250]  # the core "clean" grid for 4 steps from t = 999: round(linspace(999, 0, 5))[:-1]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| relative to max |b| (the tiny random UNet gives x̂0 of magnitude ~50 at t = 999)."""
    return float((a - b).abs().max() / b.abs().max())


@contextlib.contextmanager
def count_calls(*modules):
    counts = [0] * len(modules)
    handles = []
    for i, m in enumerate(modules):
        def hook(mod, inp, out, i=i):
            counts[i] += 1
        handles.append(m.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def stock():
    return tiny_sd()


@pytest.fixture(scope="module")
def pipe(stock):
    p = NestedStableDiffusionPipeline.from_pipe(stock)
    p.set_progress_bar_config(disable=True)
    return p


def stock_run(stock, scheduler, **kw):
    stock.scheduler = scheduler
    return stock(**{**BASE, **kw}).images


# ------------------------------------------------------------------------------------------ equivalences
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_outer_step_equals_stock_first_order_dpm_on_the_same_grid(prediction_type):
    # DPM-Solver++ order 1 == DDIM η = 0; final_sigmas_type="zero" makes the last step land on x̂0 (ᾱ = 1)
    stock = tiny_sd(prediction_type=prediction_type)
    nested = NestedStableDiffusionPipeline.from_pipe(stock)
    nested.set_progress_bar_config(disable=True)
    sched = DPMSolverMultistepScheduler(**SD_CONFIG, solver_order=1, final_sigmas_type="zero",
                                        prediction_type=prediction_type)
    ref = stock_run(stock, sched, timesteps=GRID4, generator=gen())
    out = nested(**BASE, outer_steps=1, inner_steps=4, inner_eta=0.0, generator=gen())
    assert out.nfe == 4 and out.final and out.source == "inner_result"
    assert rel_diff(out.images, ref) < TOL  # measured 6.1e-7 (ε), 2.2e-6 (v)
    img_ref = stock(**{**BASE, "output_type": "np"}, timesteps=GRID4, generator=gen()).images
    img = nested(**{**BASE, "output_type": "np"}, outer_steps=1, inner_steps=4, inner_eta=0.0, generator=gen()).images
    assert np.abs(img - img_ref).max() < 1e-5


def test_stochastic_inner_ddim_eta1_equals_stock_ddpm(stock, pipe):
    # DDIM η = 1 is ancestral DDPM with the posterior variance on the respaced grid; same generator stream
    sched = DDPMScheduler(**SD_CONFIG, clip_sample=False, variance_type="fixed_small")
    ref = stock_run(stock, sched, timesteps=GRID4, generator=gen(3))
    out = pipe(**BASE, outer_steps=1, inner_steps=4, inner_eta=1.0, generator=gen(3)).images
    assert rel_diff(out, ref) < TOL
    other = pipe(**BASE, outer_steps=1, inner_steps=4, inner_eta=1.0, generator=gen(4)).images
    assert rel_diff(other, ref) > 1e-2  # the noise matters: equality above is not a deterministic accident


@pytest.mark.parametrize("name,scheduler_cls", [("dpmpp_2m", DPMSolverMultistepScheduler),
                                                 ("dpmpp_2s", DPMSolverSinglestepScheduler)])
def test_one_outer_step_dpmpp_equals_stock(stock, pipe, name, scheduler_cls):
    sched = scheduler_cls(**SD_CONFIG, solver_order=2, final_sigmas_type="zero",
                                      lower_order_final=True)
    ref = stock_run(stock, sched, timesteps=GRID4, generator=gen())
    out = pipe(**BASE, outer_steps=1, inner_steps=4, inner_solver=name, generator=gen()).images
    assert rel_diff(out, ref) < TOL


def test_authors_grid_equals_stock_dpm_ending_at_alpha_bar_0(stock, pipe):
    # grid="authors": inner points round(linspace(t, 1, n)), the last step lands on ᾱ_0 (sigma_min), not x̂0
    sched = DPMSolverMultistepScheduler(**SD_CONFIG, solver_order=1,
                                                    final_sigmas_type="sigma_min")
    ref = stock_run(stock, sched, timesteps=[999, 666, 334, 1], generator=gen())
    out = pipe(**BASE, outer_steps=1, inner_steps=4, inner_eta=0.0, grid="authors", generator=gen()).images
    assert rel_diff(out, ref) < TOL
    clean = pipe(**BASE, outer_steps=1, inner_steps=4, inner_eta=0.0, generator=gen()).images
    assert rel_diff(clean, ref) > 1e-4


def test_one_step_inner_equals_k_step_ddim(stock, pipe):
    for eta in (0.0, 0.7):
        nested = pipe(**BASE, outer_steps=4, inner_steps=1, outer_eta=eta, generator=gen(1)).images
        vanilla = pipe(**BASE, outer_steps=1, inner_steps=4, inner_eta=eta, generator=gen(1)).images
        assert torch.equal(nested, vanilla)  # same arithmetic, same noise draws: bit-identical
    sched = DPMSolverMultistepScheduler(**SD_CONFIG, solver_order=1, final_sigmas_type="zero")
    ref = stock_run(stock, sched, timesteps=GRID4, generator=gen(1))
    assert rel_diff(pipe(**BASE, outer_steps=4, inner_steps=1, outer_eta=0.0, generator=gen(1)).images, ref) < TOL


class ScaledAttention:
    """An attention processor taking an extra keyword, to check that cross_attention_kwargs reach the UNet."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0
        self.base = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, gain=1.0):
        return gain * self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def test_guidance_rescale_and_cross_attention_kwargs_match_stock(stock, pipe):
    # (clip_skip is passed to encode_prompt as in stock, but stock diffusers 0.42.1 itself fails on it with
    # transformers 5.24 — CLIPTextModel has no .text_model — so it is not exercised here)
    sched = DPMSolverMultistepScheduler(**SD_CONFIG, solver_order=1, final_sigmas_type="zero")
    kw = dict(guidance_scale=5.0, guidance_rescale=0.7, negative_prompt="a dog", cross_attention_kwargs={"gain": 0.5})
    original = stock.unet.attn_processors
    stock.unet.set_attn_processor(ScaledAttention())  # shared with the nested pipeline
    try:
        ref = stock_run(stock, sched, timesteps=GRID4, generator=gen(), **kw)
        out = pipe(**BASE, outer_steps=1, inner_steps=4, inner_eta=0.0, generator=gen(), **kw).images
        assert rel_diff(out, ref) < TOL
        kw["cross_attention_kwargs"] = {"gain": 1.0}
        other = pipe(**BASE, outer_steps=1, inner_steps=4, inner_eta=0.0, generator=gen(), **kw).images
        assert rel_diff(other, ref) > 1e-3
    finally:
        stock.unet.set_attn_processor(original)
    plain = pipe(**BASE, outer_steps=1, inner_steps=4, inner_eta=0.0, generator=gen()).images
    assert rel_diff(plain, ref) > 1e-3


def test_scheduler_instance_as_inner_solver_matches_builtin(stock, pipe):
    cfg = SD_CONFIG
    pairs = [(DPMSolverMultistepScheduler(**cfg), "dpmpp_2m", {}, TOL),
             (DPMSolverSinglestepScheduler(**cfg), "dpmpp_2s", {}, TOL),
             (EulerDiscreteScheduler(**cfg), "ddim", {"inner_eta": 0.0}, TOL)]  # VE coordinates
    for sched, name, extra, tol in pairs:
        a = pipe(**BASE, outer_steps=2, inner_steps=3, inner_solver=sched, outer_eta=0.0, generator=gen()).images
        b = pipe(**BASE, outer_steps=2, inner_steps=3, inner_solver=name, outer_eta=0.0, generator=gen(),
                 **extra).images
        assert rel_diff(a, b) < tol, type(sched).__name__
        assert sched.num_inference_steps is None  # the given instance is only a template: never stepped
    ddpm = DDPMScheduler(**cfg, clip_sample=False)  # stochastic: noise comes from the same generator
    a = pipe(**BASE, outer_steps=2, inner_steps=3, inner_solver=ddpm, generator=gen(5)).images
    b = pipe(**BASE, outer_steps=2, inner_steps=3, inner_solver=ddpm, generator=gen(5)).images
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ NFE and anytime
@pytest.mark.parametrize("solver,inner,scale", [("ddim", [2, 3, 1], 7.5), ("dpmpp_2s", 3, 1.0)])
def test_nfe_equals_unet_calls(pipe, solver, inner, scale):
    with count_calls(pipe.unet) as calls:
        out = pipe(**BASE, outer_steps=3, inner_steps=inner, inner_solver=solver, guidance_scale=scale,
                   generator=gen())
    expected = sum(inner) if isinstance(inner, list) else 3 * inner
    assert out.nfe == calls[0] == expected == pipe.nested_sampler.total_nfe


def test_iter_anytime_yields_each_update_and_decodes_only_consumed_ones(pipe, monkeypatch):
    decodes = []
    original = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda *a, **k: decodes.append(1) or original(*a, **k))
    with count_calls(pipe.unet) as calls:
        outs = list(pipe.iter_anytime(PROMPT, height=16, width=16, outer_steps=3, inner_steps=2, output_type="np",
                                      generator=gen()))
    # first inner run: both x̂0 previews; afterwards one update per finished inner run
    assert [o.nfe for o in outs] == [1, 2, 4, 6] and calls[0] == 6 and len(decodes) == 4
    assert [o.source for o in outs] == ["x0_preview", "inner_result", "inner_result", "inner_result"]
    assert [o.final for o in outs] == [False, False, False, True]
    assert all(isinstance(o, StableDiffusionPipelineOutput) and o.images.shape == (1, 16, 16, 3) for o in outs)
    final = pipe(PROMPT, height=16, width=16, outer_steps=3, inner_steps=2, output_type="np", generator=gen())
    assert len(decodes) == 5 and np.array_equal(final.images, outs[-1].images)  # __call__ decodes once
    decodes.clear()
    with count_calls(pipe.unet) as calls:
        for o in pipe.iter_anytime(PROMPT, height=16, width=16, outer_steps=3, inner_steps=2, output_type="np",
                                   generator=gen()):
            if o.nfe >= 4:
                break
    assert calls[0] == 4 and len(decodes) == 3  # stopping early computes and decodes nothing more
    kinds = {mode: len(list(pipe.iter_anytime(**BASE, outer_steps=3, inner_steps=2, previews=mode)))
             for mode in ("none", "all")}
    assert kinds == {"none": 3, "all": 6}


def test_callback_fires_per_update_and_can_replace_embeddings(pipe):
    seen = []

    def cb(p, i, t, kw):
        seen.append((i, t, sorted(kw), kw["latents"].shape))
        return {}

    out = pipe(**BASE, outer_steps=3, inner_steps=2, generator=gen(), callback_on_step_end=cb,
               callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert [s[0] for s in seen] == [0, 1, 2, 3] and [s[1] for s in seen] == [999, 999, 666, 333]
    assert seen[0][2] == ["latents", "prompt_embeds"] and seen[0][3] == (1, 4, 8, 8)
    other = pipe(**{**BASE, "prompt": "a red dog"}, outer_steps=3, inner_steps=2, generator=gen())

    def swap(p, i, t, kw):  # from update 0 on, condition on another prompt's embeddings
        return {"prompt_embeds": p.encode_prompt("a red dog", p.device, 1, False)[0]} if i == 0 else {}

    swapped = pipe(**BASE, outer_steps=3, inner_steps=2, generator=gen(), callback_on_step_end=swap,
                   callback_on_step_end_tensor_inputs=["prompt_embeds"])
    assert rel_diff(swapped.images, out.images) > 1e-3 and rel_diff(swapped.images, other.images) > 1e-6
    marked = pipe(**BASE, outer_steps=3, inner_steps=2, generator=gen(),
                  callback_on_step_end=lambda p, i, t, kw: {"latents": kw["latents"] * 0 + i})
    assert torch.all(marked.images == 3)  # a returned "latents" replaces the reported x̂0


def test_interrupt_returns_last_finished_update(pipe):
    updates = list(pipe.iter_anytime(**BASE, outer_steps=3, inner_steps=2, generator=gen()))

    def stop_at_2(p, i, t, kw):
        if i == 2:
            p._interrupt = True
        return {}

    with count_calls(pipe.unet) as calls:
        out = pipe(**BASE, outer_steps=3, inner_steps=2, generator=gen(), callback_on_step_end=stop_at_2)
    assert calls[0] == 4 and out.nfe == 4 and not out.final and pipe.interrupt
    assert torch.equal(out.images, updates[2].images)
    assert pipe(**BASE, outer_steps=1, inner_steps=2, generator=gen()).final  # the flag resets on each call


def test_budget_stops_with_the_best_result_within_it(pipe):
    full = list(pipe.iter_anytime(**BASE, outer_steps=3, inner_steps=3, generator=gen()))
    with count_calls(pipe.unet) as calls:
        out = pipe(**BASE, outer_steps=3, inner_steps=3, max_nfe=7, generator=gen())
    assert out.nfe == 6 and calls[0] == 6 and torch.equal(out.images, full[-2].images)  # 3rd run would need 9
    early = pipe(**BASE, outer_steps=3, inner_steps=3, max_nfe=2, generator=gen())
    assert early.nfe == 2 and early.source == "x0_preview" and torch.equal(early.images, full[1].images)
    with pytest.raises(RuntimeError, match="no result"):
        pipe(**BASE, outer_steps=1, inner_steps=2, deadline=1e-9, generator=gen())


# ------------------------------------------------------------------------------------------ arguments
def test_authors_argument_names_are_aliases(pipe):
    ours = pipe(**BASE, outer_steps=2, inner_steps=3, inner_solver="ddim", inner_eta=0.5, outer_eta=0.3,
                generator=gen())
    theirs = pipe(**BASE, num_inference_steps=2, num_inner_steps=3, inner_scheduler="DDIM", inner_eta=0.5, eta=0.3,
                  generator=gen())
    assert torch.equal(ours.images, theirs.images) and theirs.nfe == 6
    dpm = pipe(**BASE, num_inference_steps=2, num_inner_steps=3, inner_scheduler="DPMSolver", generator=gen())
    assert torch.equal(dpm.images, pipe(**BASE, outer_steps=2, inner_steps=3, inner_solver="dpmpp_2s",
                                        generator=gen()).images)
    with pytest.raises(ValueError, match="outer_steps=2 and num_inference_steps=3"):
        pipe(**BASE, outer_steps=2, num_inference_steps=3)


def test_outer_eta_defaults_to_sqrt_one_minus_alpha_bar_with_dpm_solver(pipe):
    auto = pipe(**BASE, outer_steps=2, inner_steps=2, inner_solver="dpmpp_2s", generator=gen()).images
    rule = pipe(**BASE, outer_steps=2, inner_steps=2, inner_solver="dpmpp_2s",
                outer_eta="sqrt_one_minus_alpha_bar", generator=gen()).images
    zero = pipe(**BASE, outer_steps=2, inner_steps=2, inner_solver="dpmpp_2s", outer_eta=0.0, generator=gen()).images
    assert torch.equal(auto, rule) and rel_diff(zero, auto) > 1e-3
    ddim = pipe(**BASE, outer_steps=2, inner_steps=2, generator=gen()).images  # DDIM inner: outer η = 0
    assert torch.equal(ddim, pipe(**BASE, outer_steps=2, inner_steps=2, outer_eta=0.0, generator=gen()).images)


def test_per_image_generators_batches_and_output_types(pipe):
    solo = [pipe(**BASE, outer_steps=2, inner_steps=2, generator=gen(s)).images for s in (7, 8)]
    both = pipe(**{**BASE, "prompt": [PROMPT, PROMPT]}, outer_steps=2, inner_steps=2,
                generator=[gen(7), gen(8)]).images
    assert torch.allclose(both, torch.cat(solo), rtol=0, atol=1e-4 * float(both.abs().max()))
    from nested_diffusion import NoiseSource  # per-sample seeds: the same image whatever the batch

    seeded = pipe(**{**BASE, "prompt": [PROMPT, "a dog"]}, outer_steps=2, inner_steps=2,
                  generator=NoiseSource([3, 4])).images
    alone = pipe(**BASE, outer_steps=2, inner_steps=2, generator=NoiseSource([3])).images
    assert torch.allclose(seeded[:1], alone, rtol=0, atol=1e-4 * float(alone.abs().max()))
    many = pipe(**{**BASE, "prompt": ["a cat", "a dog"]}, num_images_per_prompt=2, negative_prompt="red",
                outer_steps=1, inner_steps=1, generator=gen())
    assert many.images.shape == (4, 4, 8, 8)
    lat = torch.randn(1, 4, 8, 8, generator=gen(9))  # latents = x_T as drawn from the generator (η = 0: no more noise)
    assert torch.equal(pipe(**BASE, outer_steps=2, inner_steps=2, inner_eta=0.0, latents=lat).images,
                       pipe(**BASE, outer_steps=2, inner_steps=2, inner_eta=0.0, generator=gen(9)).images)
    embeds = pipe.encode_prompt(PROMPT, pipe.device, 1, True)
    via_embeds = pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], height=16, width=16,
                      output_type="latent", outer_steps=2, inner_steps=2, generator=gen(9)).images
    assert torch.allclose(via_embeds, pipe(**BASE, outer_steps=2, inner_steps=2, generator=gen(9)).images)
    pil = pipe(PROMPT, height=16, width=16, outer_steps=1, inner_steps=1).images
    assert pil[0].size == (16, 16)
    pt, nsfw = pipe(PROMPT, height=16, width=16, outer_steps=1, inner_steps=1, output_type="pt", return_dict=False)
    assert pt.shape == (1, 3, 16, 16) and nsfw is None


def test_safety_checker_is_optional_and_used_when_present(stock):
    class FakeExtractor:
        def __call__(self, images, return_tensors="pt"):
            out = type("Features", (), {})()
            out.pixel_values = torch.zeros(len(images), 3, 4, 4)
            out.to = lambda device: out
            return out

    def fake_checker(images, clip_input):
        return images * 0, [True] * images.shape[0]  # flag and black out everything

    p = NestedStableDiffusionPipeline.from_pipe(stock)
    p.set_progress_bar_config(disable=True)
    p.safety_checker, p.feature_extractor = fake_checker, FakeExtractor()
    out = p(PROMPT, height=16, width=16, outer_steps=1, inner_steps=2, output_type="np")
    assert out.nsfw_content_detected == [True] and np.all(out.images == 0)


def test_from_pretrained_and_torch_dtype(stock, pipe, tmp_path):
    stock.scheduler = DDIMScheduler.from_config(stock.scheduler.config)
    stock.save_pretrained(tmp_path)
    loaded = NestedStableDiffusionPipeline.from_pretrained(tmp_path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, NestedStableDiffusionPipeline)
    a = loaded(**BASE, outer_steps=2, inner_steps=2, generator=gen()).images
    # save/load crosses a library boundary (diffusers/transformers rebuild the modules and may cast or re-tie
    # weights on load): 1e-5 of the largest |latent|, as the stock-equivalence tests, not bit equality
    assert rel_diff(a, pipe(**BASE, outer_steps=2, inner_steps=2, generator=gen()).images) <= 1e-5
    f64 = NestedStableDiffusionPipeline.from_pretrained(tmp_path, torch_dtype=torch.float64, local_files_only=True)
    f64.set_progress_bar_config(disable=True)
    lat = torch.randn(1, 4, 8, 8, generator=gen())  # float64 randn is another stream: share x_T, use η = 0
    a = loaded(**BASE, outer_steps=2, inner_steps=2, inner_eta=0.0, latents=lat).images
    b = f64(**BASE, outer_steps=2, inner_steps=2, inner_eta=0.0, latents=lat).images
    assert b.dtype == torch.float64 and rel_diff(b.float(), a) < 1e-3
    assert f64.to(torch.float32).unet.dtype == torch.float32


BAD = [
    (dict(outer_steps=0), ValueError, "outer_steps"),
    (dict(inner_steps=0), ValueError, "inner_steps"),
    (dict(inner_steps=[2, 0], outer_steps=2), ValueError, "inner_steps"),
    (dict(outer_steps=2.5), TypeError, "outer_steps"),
    (dict(outer_steps=999, inner_steps=2), ValueError, "inner_steps"),  # the run from t=1 cannot take 2 steps
    (dict(inner_solver="euler"), ValueError, "inner_solver"),
    (dict(inner_solver=DDIMScheduler()), ValueError, "timesteps="),
    (dict(inner_solver="dpmpp_2m", inner_eta=0.5), ValueError, "inner_eta"),
    (dict(inner_eta=-1.0), ValueError, "inner_eta"),
    (dict(outer_eta="sometimes"), ValueError, "outer_eta"),
    (dict(height=20), ValueError, "height"),
    (dict(width=0), ValueError, "width"),
    (dict(prompt=["a", "b"], negative_prompt=["c", "d", "e"]), ValueError, "negative_prompt"),
    (dict(prompt=None), ValueError, "prompt"),
    (dict(prompt=3), TypeError, "prompt"),
    (dict(num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
    (dict(generator=[torch.Generator()] * 2), ValueError, "generator"),
    (dict(latents=torch.zeros(1, 4, 4, 4)), ValueError, "latents"),
    (dict(max_nfe=0), ValueError, "max_nfe"),
    (dict(deadline=-1), ValueError, "deadline"),
    (dict(output_type="jpeg"), ValueError, "output_type"),
    (dict(previews="some"), ValueError, "previews"),
    (dict(grid="uniform"), ValueError, "grid"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
    (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), ValueError, "callback_on_step_end_tensor_inputs"),
    (dict(inner_solver=DPMSolverMultistepScheduler(beta_schedule="linear")), ValueError, "noise schedule"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_arguments_raise_before_any_model_call(pipe, kwargs, error, match):
    with count_calls(pipe.text_encoder, pipe.unet, pipe.vae) as calls:
        with pytest.raises(error, match=match):
            pipe(**{**BASE, "output_type": "np", **kwargs})
        with pytest.raises(error, match=match):
            pipe.iter_anytime(**{**BASE, "output_type": "np", **kwargs})  # raises on the call, not on iteration
    assert calls == [0, 0, 0]


def test_clip_skip_reaches_the_prompt_encoder(pipe, monkeypatch):
    """clip_skip is forwarded to encode_prompt like stock diffusers (whose own clip_skip path fails on
    transformers 5, so the encoder is recorded rather than run with it)."""
    seen = {}
    original = pipe.encode_prompt

    def recording(*args, **kwargs):
        seen["clip_skip"] = kwargs.get("clip_skip")
        kwargs["clip_skip"] = None
        return original(*args, **kwargs)
    monkeypatch.setattr(pipe, "encode_prompt", recording)
    pipe(**BASE, outer_steps=1, inner_steps=2, generator=gen(), clip_skip=2)
    assert seen["clip_skip"] == 2
