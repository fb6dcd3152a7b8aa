"""NestedDiTPipeline on a tiny random-weight DiT: equivalence with stock DiTPipeline and with
DDPMScheduler(variance_type="learned_range"), guidance channels, labels, NFE, save/load, bad arguments."""
from __future__ import annotations

import contextlib

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402
from diffusers import DDPMScheduler, DiTPipeline, DPMSolverMultistepScheduler  # noqa: E402
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput  # noqa: E402

from fixtures_tiny import DIT_CONFIG, tiny_dit  # noqa: E402
from nested_diffusion.pipelines import NestedDiTPipeline  # noqa: E402

TOL = 1e-5  # relative float32 agreement


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel_diff(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@contextlib.contextmanager
def record_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs), with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def stock():
    return tiny_dit()


@pytest.fixture(scope="module")
def pipe(stock):
    p = NestedDiTPipeline.from_pipe(stock)
    p.set_progress_bar_config(disable=True)
    return p


def manual_learned_range(stock, labels, grid, scale, channels, generator):
    """Reference loop: DDPMScheduler(learned_range) on the grid, DiT-style [cond, null] guidance."""
    sched = DDPMScheduler(**DIT_CONFIG, variance_type="learned_range", clip_sample=False)
    sched.set_timesteps(timesteps=grid)
    b = len(labels)
    x = torch.randn((b, 4, 8, 8), generator=generator)
    y = torch.tensor(labels + [1000] * b)
    with torch.no_grad():
        for t in sched.timesteps:
            out = stock.transformer(torch.cat([x, x]), timestep=t.expand(2 * b), class_labels=y).sample
            c, u = out[:b], out[b:]
            eps = torch.cat([u[:, :channels] + scale * (c[:, :channels] - u[:, :channels]), c[:, channels:4]], 1)
            x = sched.step(torch.cat([eps, c[:, 4:]], 1), t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("channels", [4, 3])
def test_learned_variance_inner_equals_ddpm_learned_range(stock, pipe, channels):
    out = pipe(class_labels=[1, 3], guidance_scale=4.0, outer_steps=1, inner_steps=5, output_type="latent",
               guided_channels=None if channels == 4 else 3, generator=gen())
    grid = [999, 749, 500, 250, 0]  # round(linspace(999, 0, 5)): the learned-variance grid ends at t = 0
    ref = manual_learned_range(stock, [1, 3], grid, 4.0, channels, gen())
    assert rel_diff(out.images, ref) < TOL  # measured 2.6e-7 relative (2.4e-4 on |x| ≈ 940)
    assert out.nfe == 5 and out.source == "inner_result"


def test_one_outer_step_ddim_equals_stock_dit_pipeline(stock, pipe):
    # stock DiTPipeline guides all 4 channels, drops the variance; DPM-Solver++ order 1 == DDIM η = 0, and its
    # "linspace" spacing gives the core clean grid [999, 749, 500, 250]
    stock.scheduler = DPMSolverMultistepScheduler(**DIT_CONFIG, solver_order=1, final_sigmas_type="zero",
                                                  timestep_spacing="linspace")
    ref = stock(class_labels=[1, 2], guidance_scale=4.0, num_inference_steps=4, generator=gen(), output_type="pt")
    out = pipe(class_labels=[1, "great white shark"], guidance_scale=4.0, outer_steps=1, inner_steps=4,
               inner_solver="ddim", inner_eta=0.0, guided_channels=None, generator=gen(), output_type="pt")
    assert isinstance(out, ImagePipelineOutput) and out.images.shape == (2, 3, 16, 16)
    assert float((out.images - ref.images).abs().max()) < 1e-5  # measured 2.4e-7 on images in [0, 1]
    three = pipe(class_labels=[1, 2], guidance_scale=4.0, outer_steps=1, inner_steps=4, inner_solver="ddim",
                 inner_eta=0.0, generator=gen(), output_type="pt")  # default: DiT's 3-channel guidance
    assert float((three.images - ref.images).abs().max()) > 1e-3


def test_one_step_ddpm_inner_equals_deterministic_ddim(pipe):
    nested = pipe(class_labels=[5], outer_steps=4, inner_steps=1, output_type="latent", generator=gen()).images
    ddim = pipe(class_labels=[5], outer_steps=1, inner_steps=4, inner_solver="ddim", inner_eta=0.0,
                output_type="latent", generator=gen()).images
    assert torch.equal(nested, ddim)


def test_ddpm_scheduler_instance_receives_the_learned_variance(pipe):
    sched = DDPMScheduler(**DIT_CONFIG, variance_type="learned_range", clip_sample=False)
    a = pipe(class_labels=[1, 3], outer_steps=2, inner_steps=3, inner_solver=sched, output_type="latent",
             generator=gen()).images
    b = pipe(class_labels=[1, 3], outer_steps=2, inner_steps=3, output_type="latent", generator=gen()).images
    assert rel_diff(a, b) < TOL
    fixed = DDPMScheduler(**DIT_CONFIG, variance_type="fixed_small", clip_sample=False)
    c = pipe(class_labels=[1, 3], outer_steps=2, inner_steps=3, inner_solver=fixed, output_type="latent",
             generator=gen()).images
    assert rel_diff(c, b) > 1e-3  # the variance actually matters


def test_nfe_null_class_and_anytime_stream(pipe):
    with record_calls(pipe.transformer) as calls:
        outs = list(pipe.iter_anytime(class_labels=[7, 8], outer_steps=3, inner_steps=2, output_type="np",
                                      generator=gen()))
    assert [o.nfe for o in outs] == [1, 2, 4, 6] and len(calls) == 6 and outs[-1].final
    assert calls[0]["class_labels"].tolist() == [7, 8, 1000, 1000]  # [cond, null], null = 1000
    with record_calls(pipe.transformer) as calls:
        out = pipe(class_labels=[7], guidance_scale=1.0, outer_steps=2, inner_steps=3, max_nfe=4, generator=gen())
    assert out.nfe == 3 and len(calls) == 3 and calls[0]["class_labels"].tolist() == [7]  # no CFG at scale 1
    seen = []
    pipe(class_labels=[7], outer_steps=2, inner_steps=2, output_type="latent", generator=gen(),
         callback_on_step_end=lambda p, i, t, kw: seen.append((i, kw["latents"].shape)) or {})
    assert seen == [(0, (1, 4, 8, 8)), (1, (1, 4, 8, 8)), (2, (1, 4, 8, 8))]


def test_authors_names_and_defaults(pipe):
    ours = pipe(class_labels=[2], outer_steps=2, inner_steps=3, outer_eta=0.0, output_type="latent",
                generator=gen()).images
    theirs = pipe(class_labels=[2], num_inference_steps=2, num_inner_steps=3, eta=0.0, output_type="latent",
                  generator=gen()).images
    assert torch.equal(ours, theirs)
    assert pipe(class_labels=2, output_type="latent", max_nfe=1, generator=gen()).nfe == 1
    assert pipe.nested_sampler.total_nfe == 200 and pipe.nested_sampler.outer_steps == 4  # 4 × 50 default


def test_save_load_keeps_labels_and_model_without_learned_sigma(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = NestedDiTPipeline.from_pretrained(tmp_path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.labels == pipe.labels and loaded.labels["goldfish"] == 1
    a = loaded(class_labels=["tiger shark"], outer_steps=2, inner_steps=2, output_type="latent", generator=gen())
    b = pipe(class_labels=[3], outer_steps=2, inner_steps=2, output_type="latent", generator=gen())
    # save/load crosses a library boundary (diffusers rebuilds the transformer and may cast or re-initialise
    # buffers on load): 1e-5 of the largest |latent|, as the stock-equivalence tests, not bit equality
    assert rel_diff(a.images, b.images) <= 1e-5
    plain = NestedDiTPipeline.from_pipe(tiny_dit(learned_sigma=False))  # falls back to the posterior variance
    plain.set_progress_bar_config(disable=True)
    out = plain(class_labels=[1], outer_steps=2, inner_steps=3, output_type="latent", generator=gen())
    assert torch.isfinite(out.images).all() and out.nfe == 6
    assert isinstance(DiTPipeline.from_pretrained(tmp_path, local_files_only=True), DiTPipeline)


BAD = [
    (dict(class_labels=["zebra"]), "class_labels"),
    (dict(class_labels=[1000]), "class_labels"),
    (dict(class_labels=[]), "class_labels"),
    (dict(outer_steps=0), "outer_steps"),
    (dict(inner_steps=-2), "inner_steps"),
    (dict(inner_solver="heun"), "inner_solver"),
    (dict(guided_channels=5), "guided_channels"),
    (dict(generator=[torch.Generator()] * 3), "generator"),
    (dict(latents=torch.zeros(1, 4, 4, 4)), "latents"),
    (dict(output_type="gif"), "output_type"),
    (dict(max_nfe=0), "max_nfe"),
    (dict(callback_on_step_end_tensor_inputs=["prompt_embeds"]), "callback_on_step_end_tensor_inputs"),
    (dict(inner_solver=DDPMScheduler(beta_schedule="scaled_linear")), "noise schedule"),
]


@pytest.mark.parametrize("kwargs,match", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_arguments_raise_before_any_model_call(pipe, kwargs, match):
    with record_calls(pipe.transformer) as calls:
        with pytest.raises(ValueError, match=match):
            pipe(**{"class_labels": [1, 2], **kwargs})
    assert calls == []


def test_remaining_arguments(pipe):
    from nested_diffusion import NoiseSource

    kw = dict(outer_steps=2, inner_steps=3, output_type="latent")
    solo = [pipe(class_labels=[c], generator=NoiseSource([s]), **kw).images for c, s in ((1, 11), (2, 12))]
    both = pipe(class_labels=[1, 2], generator=NoiseSource([11, 12]), **kw).images  # per-sample seeds: batch-free
    assert torch.allclose(both, torch.cat(solo), rtol=0, atol=1e-5 * float(both.abs().max()))
    lists = pipe(class_labels=[1, 2], generator=[gen(3), gen(4)], **kw).images
    assert torch.allclose(lists[1:], pipe(class_labels=[2], generator=gen(4), **kw).images, rtol=0,
                          atol=1e-5 * float(lists.abs().max()))
    lat = torch.randn(1, 4, 8, 8, generator=gen(6))
    assert torch.equal(pipe(class_labels=[1], latents=lat, inner_solver="ddim", inner_eta=0.0, **kw).images,
                       pipe(class_labels=[1], generator=gen(6), inner_scheduler="ddim", inner_eta=0.0, **kw).images)
    (pil,) = pipe(class_labels=[1], outer_steps=1, inner_steps=1, return_dict=False)
    assert pil[0].size == (16, 16)
    assert pipe(class_labels=[1], deadline=60.0, generator=gen(), **kw).final
    assert len(list(pipe.iter_anytime(class_labels=[1], previews="none", generator=gen(), **kw))) == 2
    authors = pipe(class_labels=[1], grid="authors", generator=gen(), **kw)
    assert authors.final and pipe.nested_sampler.times == [999, 500, -1]  # round(linspace(999, 1, 3))[:-1] + end
    a = pipe(class_labels=[1], generator=gen(), outer_eta=lambda k, t, abar: 0.5 * (1 - abar) ** 0.5, **kw).images
    b = pipe(class_labels=[1], generator=gen(), outer_eta=[0.5 * (1 - pipe.scheduler.alphas_cumprod[t].item()) ** 0.5
                                                          for t in (999, 500)], **kw).images
    assert rel_diff(a, b) < TOL and rel_diff(a, pipe(class_labels=[1], generator=gen(), **kw).images) > 1e-3
