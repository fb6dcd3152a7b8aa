"""``NestedScheduler``: an unmodified stock diffusers pipeline samples with Nested Diffusion once its scheduler is
wrapped. Tiny random-weight pipelines (fixtures_modern, fixtures_any), text conditioning passed as embeddings.

Tolerances: one outer step with the pipeline's own step count runs the stock schedule through the stock
scheduler, so it is compared bit for bit. A K × N run against a reference loop written here (calling the
transformer directly, σ computed here in float64) differs only by float32 rounding of σ and of the outer step's
arithmetic: ≤ 1e-5 relative to the output's magnitude. Against the project's own nested pipelines (the core's
flow / VP samplers, other operation order and float precision of the same maths, e.g. the core's VP ᾱ in
float64 against Euler's σ in float32): ≤ 1e-5 relative (measured: 1e-7 to 1e-6)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from fixtures_any import BUILDERS, embeds  # noqa: E402
from fixtures_modern import tiny_flux, tiny_sd3, tiny_sdxl  # noqa: E402

from nested_diffusion.pipelines.nested_scheduler import NestedScheduler, NestedSchedulerError  # noqa: E402

torch.set_num_threads(1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def latents_of(out) -> torch.Tensor:
    if isinstance(out, tuple):
        return out[0]
    return out.frames if hasattr(out, "frames") else out.images


def flux_kw(batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(3)
    return dict(prompt_embeds=torch.randn(batch, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(batch, 32,
                                                                                                       generator=g),
                height=16, width=16, output_type="latent", guidance_scale=3.5)


def family_kw(family: str) -> dict:
    kw = dict(embeds(family), height=16, width=16, output_type="latent")
    if family == "wan":
        kw["num_frames"] = 5
    return kw


@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


class Recorder:
    """Records the keyword arguments of every transformer call (a forward pre-hook)."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()})

    def close(self):
        self.handle.remove()


def run(pipe, scheduler, kw, steps, seed=0):
    orig = pipe.scheduler
    pipe.scheduler = scheduler if scheduler is not None else orig
    try:
        return latents_of(pipe(**kw, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed)))
    finally:
        pipe.scheduler = orig


# ------------------------------------------------------------------------------------------ one outer step ≡ stock
@pytest.mark.parametrize("family", ["flux"] + list(BUILDERS))
def test_one_outer_step_is_the_stock_pipeline_bit_for_bit(family, flux):
    pipe = flux if family == "flux" else BUILDERS[family]()
    kw = flux_kw() if family == "flux" else family_kw(family)
    stock = run(pipe, None, kw, 4)
    one = run(pipe, NestedScheduler(pipe.scheduler, outer_steps=1), kw, 4)
    nested = run(pipe, NestedScheduler(pipe.scheduler, outer_steps=3), kw, 4)
    assert torch.equal(one, stock)
    assert (nested - stock).abs().max() > 0.05          # the nested run is another sampler (not vacuous)


# ------------------------------------------------------------------------------------------ K × N ≡ a reference loop
def flow_reference(transformer, cond: dict, x: torch.Tensor, K: int, N: int, sigma_of) -> torch.Tensor:
    """Nested Diffusion written out: outer u_k = linspace(1, 1/K, K); inner run k = Euler over
    σ(u_k · linspace(1, 1/N, N)) then 0; outer step x' = (1 − σ')x̂0 + σ'ε̂ to the next run's first σ."""
    starts = np.linspace(1.0, 1.0 / K, K)
    runs = [[sigma_of(u * b) for b in np.linspace(1.0, 1.0 / N, N)] + [0.0] for u in starts]
    for k, sig in enumerate(runs):
        x_start = x
        for s, s_next in zip(sig[:-1], sig[1:]):
            t = torch.full((x.shape[0],), float(np.float32(s)) * 1000, dtype=x.dtype)
            v = transformer(**{**cond, "hidden_states": x, "timestep": t / 1000}, return_dict=False)[0]
            x = x + (float(np.float32(s_next)) - float(np.float32(s))) * v
        if k + 1 < K:
            s0, s1 = runs[k][0], runs[k + 1][0]
            eps = (x_start - (1 - s0) * x) / s0
            x = (1 - s1) * x + s1 * eps
    return x


def exp_shift(mu: float):
    return lambda u: math.exp(mu) / (math.exp(mu) + (1.0 / u - 1.0))


@pytest.mark.parametrize("family", ["flux", "flux2"])
def test_k_by_n_equals_a_reference_nested_loop_on_the_transformer(family, flux):
    pipe = flux if family == "flux" else BUILDERS[family]()
    kw = flux_kw() if family == "flux" else family_kw(family)
    K, N = 3, 4
    rec = Recorder(pipe.transformer)
    try:
        got = run(pipe, NestedScheduler(pipe.scheduler, outer_steps=K), kw, N)
    finally:
        rec.close()
    assert len(rec.calls) == K * N
    first = rec.calls[0]
    cond = {k: v for k, v in first.items() if k not in ("hidden_states", "timestep", "return_dict")}
    seq = first["hidden_states"].shape[1]
    if family == "flux":
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift
        c = pipe.scheduler.config
        mu = calculate_shift(seq, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    else:
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu
        mu = compute_empirical_mu(image_seq_len=seq, num_steps=N)
    with torch.no_grad():
        ref = flow_reference(pipe.transformer, cond, first["hidden_states"], K, N, exp_shift(mu))
    if family == "flux2":   # the pipeline returns the packed tokens; the reference works on the same tokens
        got = got.reshape(ref.shape) if got.shape != ref.shape else got
    assert rel(got, ref) <= 1e-5


# ------------------------------------------------------------------------------------------ ≡ the project's pipelines
def test_generic_flux_equals_nested_flux_pipeline(flux):
    from nested_diffusion.pipelines import NestedFluxPipeline
    kw = flux_kw()
    generic = run(flux, NestedScheduler(flux.scheduler, outer_steps=3, outer_eta=0.0), kw, 4)
    ours = NestedFluxPipeline.from_pipe(flux)
    ours.set_progress_bar_config(disable=True)
    ref = ours(**kw, outer_steps=3, inner_steps=4, outer_eta=0.0, generator=torch.Generator().manual_seed(0)).images
    assert rel(generic, ref) <= 1e-5


def test_generic_flux_progressive_schedule_and_fresh_outer_noise(flux):
    from nested_diffusion.pipelines import NestedFluxPipeline
    kw = flux_kw()
    ours = NestedFluxPipeline.from_pipe(flux)
    ours.set_progress_bar_config(disable=True)
    sched = NestedScheduler(flux.scheduler, schedule="progressive", nfe=7, first=2, outer_eta=0.0)
    generic = run(flux, sched, kw, 3)
    assert sched.run.inner_steps == (2, 2, 3) and sched.run.outer_times == (1.0, 0.9, 0.8)
    assert len(sched.timesteps) == 7
    from nested_diffusion.core.schedules import Schedule
    ref = ours(**kw, schedule=Schedule("progressive", (2, 2, 3), (1.0, 0.9, 0.8)), outer_eta=0.0,
               generator=torch.Generator().manual_seed(0)).images
    assert rel(generic, ref) <= 1e-5
    # stochastic outer η: its own per-sample seeds; the same seeds give the same image, other seeds another
    a = run(flux, NestedScheduler(flux.scheduler, outer_steps=3, outer_eta="fresh", seed=[5]), kw, 4)
    b = run(flux, NestedScheduler(flux.scheduler, outer_steps=3, outer_eta="fresh", seed=[5]), kw, 4)
    c = run(flux, NestedScheduler(flux.scheduler, outer_steps=3, outer_eta="fresh", seed=[6]), kw, 4)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3


def test_generic_sd3_equals_nested_sd3_pipeline():
    from nested_diffusion.pipelines import NestedStableDiffusion3Pipeline
    pipe = tiny_sd3()
    g = torch.Generator().manual_seed(4)
    kw = dict(prompt_embeds=torch.randn(1, 8, 64, generator=g), pooled_prompt_embeds=torch.randn(1, 64, generator=g),
              negative_prompt_embeds=torch.randn(1, 8, 64, generator=g),
              negative_pooled_prompt_embeds=torch.randn(1, 64, generator=g), height=16, width=16,
              output_type="latent", guidance_scale=3.0)
    generic = run(pipe, NestedScheduler(pipe.scheduler, outer_steps=3, outer_eta=0.0), kw, 4)
    ours = NestedStableDiffusion3Pipeline.from_pipe(pipe)
    ours.set_progress_bar_config(disable=True)
    ref = ours(**kw, outer_steps=3, inner_steps=4, outer_eta=0.0, generator=torch.Generator().manual_seed(0)).images
    assert rel(generic, ref) <= 1e-5


def test_generic_sdxl_equals_nested_sdxl_pipeline_with_an_euler_inner_scheduler():
    from diffusers import EulerDiscreteScheduler

    from nested_diffusion.pipelines import NestedStableDiffusionXLPipeline
    pipe = tiny_sdxl()
    g = torch.Generator().manual_seed(4)
    kw = dict(prompt_embeds=torch.randn(1, 8, 64, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g),
              negative_prompt_embeds=torch.randn(1, 8, 64, generator=g),
              negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g), height=16, width=16,
              output_type="latent", guidance_scale=5.0)
    stock = run(pipe, None, kw, 4)
    assert torch.equal(run(pipe, NestedScheduler(pipe.scheduler, outer_steps=1), kw, 4), stock)
    generic = run(pipe, NestedScheduler(pipe.scheduler, outer_steps=3, outer_eta=0.0, grid="clean"), kw, 4)
    ours = NestedStableDiffusionXLPipeline.from_pipe(pipe)
    ours.set_progress_bar_config(disable=True)
    ref = ours(**kw, outer_steps=3, inner_steps=4, outer_eta=0.0, grid="clean",
               inner_solver=EulerDiscreteScheduler.from_config(pipe.scheduler.config),
               generator=torch.Generator().manual_seed(0)).images
    assert rel(generic, ref) <= 1e-5 and (generic - stock).abs().max() > 0.05


# ------------------------------------------------------------------------------------------ refused, clearly
def test_img2img_strength_is_refused_before_any_model_call(flux):
    from diffusers import FluxImg2ImgPipeline
    pipe = FluxImg2ImgPipeline.from_pipe(flux)
    pipe.set_progress_bar_config(disable=True)
    rec = Recorder(pipe.transformer)
    pipe.scheduler = NestedScheduler(flux.scheduler, outer_steps=3)
    try:
        with pytest.raises(NestedSchedulerError, match=r"strength: 0\.6 is not available with a NestedScheduler "
                                                        r"\(image-to-image / inpainting starts part-way"):
            pipe(**{k: v for k, v in flux_kw().items()}, image=torch.zeros(1, 3, 16, 16), strength=0.6,
                 num_inference_steps=4)
    finally:
        rec.close()
    assert rec.calls == []


def test_a_begin_index_is_refused():
    s = NestedScheduler(tiny_flux().scheduler, outer_steps=2)
    with pytest.raises(NestedSchedulerError, match=r"begin_index: 3; the pipeline starts part-way down the step "
                                                    r"list \(image-to-image or inpainting strength < 1\)"):
        s.set_begin_index(3)


def test_schedulers_without_custom_sigmas_work_only_at_one_outer_step(flux):
    from diffusers import FlowMatchHeunDiscreteScheduler
    heun = FlowMatchHeunDiscreteScheduler.from_config(flux.scheduler.config)
    with pytest.raises(NestedSchedulerError, match=r"scheduler: FlowMatchHeunDiscreteScheduler.set_timesteps takes "
                                                    r"no custom sigmas"):
        NestedScheduler(heun, outer_steps=2)
    NestedScheduler(heun, outer_steps=1)                          # the stock run is fine


def test_isinstance_branching_pipeline_is_refused():
    from diffusers import UniPCMultistepScheduler
    from diffusers.pipelines.hidream_image.pipeline_hidream_image import HiDreamImagePipeline

    from nested_diffusion.pipelines.nested_scheduler import check_pipeline
    pipe = object.__new__(HiDreamImagePipeline)                   # the class is what matters
    unipc = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
    with pytest.raises(NestedSchedulerError, match=r"scheduler: HiDreamImagePipeline branches on "
                                                    r"isinstance\(self.scheduler, UniPCMultistepScheduler\)"):
        check_pipeline(pipe, unipc)
    check_pipeline(pipe, tiny_flux().scheduler)                   # FlowMatchEuler takes no branch: allowed


def test_the_callers_own_sigmas_and_bad_options_are_refused(flux):
    kw = flux_kw()
    pipe_sched = NestedScheduler(flux.scheduler, outer_steps=2)
    with pytest.raises(NestedSchedulerError, match=r"sigmas: the pipeline passed its own sigmas"):
        run(flux, pipe_sched, dict(kw, sigmas=[1.0, 0.7, 0.2]), None)
    with pytest.raises(ValueError, match=r"outer_steps: must be"):
        NestedScheduler(flux.scheduler, outer_steps=0)
    with pytest.raises(NestedSchedulerError, match=r"inner_eta: 0\.5 is not available with "
                                                    r"FlowMatchEulerDiscreteScheduler"):
        NestedScheduler(flux.scheduler, outer_steps=2, inner_eta=0.5)
    with pytest.raises(NestedSchedulerError, match=r"save_pretrained: a NestedScheduler is a sampling-time wrapper"):
        NestedScheduler(flux.scheduler).save_pretrained("x")

