"""Pipeline glue without the big pipelines: diffusers-style noise, the SchedulerSolver adapter on an exact
Gaussian-mixture denoiser, argument resolution, and the lazy import of diffusers."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from nested_diffusion import GaussianMixtureDenoiser, NestedSampler, NoiseSource
from nested_diffusion.pipelines.adapters import pipeline_run, resolve_inner_solver
from nested_diffusion.pipelines.noise import GeneratorNoise, diffusers_randn, make_noise
from nested_diffusion.core.solvers import DDIMSolver, DDPMLearnedSolver, DPMSolverPP2M, DPMSolverPP2S


def test_core_and_pipelines_package_import_without_diffusers():
    code = ("import sys, nested_diffusion, nested_diffusion.pipelines, nested_diffusion.pipelines.adapters, "
            "nested_diffusion.pipelines.noise; assert 'diffusers' not in sys.modules, 'diffusers imported'; "
            "assert 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={"PYTHONPATH": ":".join(sys.path), "OMP_NUM_THREADS": "1"})


def test_generator_noise_matches_diffusers_randn_tensor():
    torch_utils = pytest.importorskip("diffusers.utils.torch_utils")
    shape, dev = (3, 4, 5, 5), torch.device("cpu")
    single = diffusers_randn(shape, torch.Generator().manual_seed(1), dev, torch.float32)
    # Ours vs diffusers' randn_tensor crosses a library boundary: both are the same generators' standard normal
    # draws, but diffusers may draw in another dtype or on another device and cast. 1e-6 absolute (draws are
    # |z| < 6, float32 spacing ≤ 4.8e-7 there) tolerates a rounding difference; other draws differ by O(1).
    assert (single - torch_utils.randn_tensor(shape, generator=torch.Generator().manual_seed(1))).abs().max() < 1e-6
    gens = lambda: [torch.Generator().manual_seed(s) for s in (4, 5, 6)]  # noqa: E731
    assert (diffusers_randn(shape, gens(), dev, torch.float32)
            - torch_utils.randn_tensor(shape, generator=gens())).abs().max() < 1e-6
    noise = GeneratorNoise(torch.Generator().manual_seed(1), 3)
    assert isinstance(noise, NoiseSource) and noise.batch_size == 3
    assert torch.equal(noise.randn(shape[1:]), single)
    rows = GeneratorNoise(gens(), 3).randn_like(single)
    assert torch.equal(rows[1], torch.randn(shape[1:], generator=torch.Generator().manual_seed(5)))


def test_generator_noise_rejects_bad_generators():
    with pytest.raises(ValueError, match="generator: a list of 2 generators for a batch of 3"):
        GeneratorNoise([torch.Generator(), torch.Generator()], 3)
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        GeneratorNoise(42, 1)
    with pytest.raises(ValueError, match="2 streams for a batch of 3"):
        make_noise(NoiseSource([1, 2]), 3, torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="batch of 2 does not match"):
        GeneratorNoise(None, 3).randn_like(torch.zeros(2, 1))


@pytest.fixture(scope="module")
def mixture():
    means = torch.tensor([[1.0, -1.0, 0.5, 0.0], [-1.0, 0.5, 0.0, 1.0]])
    return GaussianMixtureDenoiser(means, [0.3, 0.5], schedule="linear")


def _run(den, solver, inner=6, outer=1, seeds=(1, 2, 3), eta=0.0):
    sampler = NestedSampler(den, outer, inner, solver, None, eta)
    return sampler.sample(NoiseSource(list(seeds)), (len(seeds), 4)).x0


def test_scheduler_solver_matches_core_solvers_on_an_exact_denoiser(mixture):
    diffusers = pytest.importorskip("diffusers")
    cfg = dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    cases = [(diffusers.DPMSolverMultistepScheduler(**cfg), DPMSolverPP2M()),
             (diffusers.DPMSolverSinglestepScheduler(**cfg), DPMSolverPP2S()),
             (diffusers.EulerDiscreteScheduler(**cfg), DDIMSolver(0.0)),  # Euler in VE coordinates == DDIM η=0
             (diffusers.DPMSolverMultistepScheduler(**cfg, solver_order=1), DDIMSolver(0.0)),
             # ancestral DDPM (posterior variance) on round(linspace(t, 0, n)); noise from the same per-sample streams
             (diffusers.DDPMScheduler(**cfg, clip_sample=False), DDPMLearnedSolver())]
    for sched, core in cases:
        a = _run(mixture, resolve_inner_solver(sched, None), outer=2, inner=5)
        b = _run(mixture, core, outer=2, inner=5)
        assert float((a - b).abs().max()) < 1e-5, type(sched).__name__  # measured ≤ 2.3e-6 (float32 schedules)
    dpm = _run(mixture, resolve_inner_solver(cases[0][0], None), outer=2, inner=5)
    assert float((dpm - _run(mixture, DDIMSolver(0.0), outer=2, inner=5)).abs().max()) > 1e-3  # negative control


def test_scheduler_solver_rejections(mixture):
    diffusers = pytest.importorskip("diffusers")
    with pytest.raises(ValueError, match="inner_solver: DDIMScheduler cannot run an arbitrary partial grid"):
        resolve_inner_solver(diffusers.DDIMScheduler(), None)
    with pytest.raises(ValueError, match="order 2"):
        resolve_inner_solver(diffusers.HeunDiscreteScheduler(), None)
    with pytest.raises(ValueError, match="inner_eta: only the 'ddim' inner solver"):
        resolve_inner_solver(diffusers.DPMSolverMultistepScheduler(), 0.5)
    with pytest.raises(ValueError, match="noise schedule"):
        resolve_inner_solver(diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear"),
                             None).check_schedule(mixture.schedule)


def test_pipeline_run_names_defaults_and_errors():
    from nested_diffusion.core.run import RunDefaults
    sd = RunDefaults(outer_steps=5, inner_steps=20, inner_solver="ddim", outer_eta=None)  # Nested SD's defaults
    run = pipeline_run({}, sd)
    assert (run.outer_steps, run.inner_steps, run.outer_eta) == (5, (20,) * 5, 0.0) and run.build_inner().eta == 0.85
    run = pipeline_run(dict(num_inference_steps=3, num_inner_steps=7, inner_scheduler="DPMSolver"), sd)
    assert (run.outer_steps, run.inner_steps, run.outer_eta) == (3, (7,) * 3, "sqrt_one_minus_alpha_bar")
    assert isinstance(run.build_inner(), DPMSolverPP2S)
    no_auto = pipeline_run(dict(inner_solver="dpmpp_2m"), RunDefaults(inner_solver="ddim", outer_eta=0.0))
    assert no_auto.outer_eta == 0.0
    with pytest.raises(ValueError, match="inner_steps=4 and num_inner_steps=5"):
        pipeline_run(dict(inner_steps=4, num_inner_steps=5), sd)
    with pytest.raises(ValueError, match="inner_steps: a list needs one entry per outer step"):
        pipeline_run(dict(outer_steps=3, inner_steps=[1, 2]), sd)
    with pytest.raises(TypeError, match="inner_solver: expected a name"):
        resolve_inner_solver(3.0, None)
