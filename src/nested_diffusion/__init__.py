"""nested-diffusion: anytime image generation with Nested Diffusion (Elata, Kawar, Michaeli, Elad — WACV 2024).

Layers (docs/ARCHITECTURE.md): ``core`` (the library core: schedules, steps, solvers, the nested sampler) ←
``inverse``, ``evaluation`` ← ``pipelines`` (diffusers) ← ``bundled`` (the Fashion-MNIST model) ← ``cli``.
"""
from .core.noise_schedule import NoiseSchedule, get_schedule
from .core.denoisers import (ClassifierFreeGuidance, CountingDenoiser, Denoiser, DenoiserOutput, ModelDenoiser,
                             NonFiniteOutputError)
from .core.noise import DeviceNoiseSource, NoiseSource
from .core.events import INNER_RESULT, X0_PREVIEW, AnytimeInfo, AnytimeUpdate, SolverEvent
from .core.grids import step_grid
from .core.solvers import DDIMSolver, DDPMLearnedSolver, DPMSolverPP2M, DPMSolverPP2S, Solver
from .core.registry import FLOW, VP, SolverSpec, get_solver, register_solver, solver_names, unregister_solver
from .core.run import RunConfig, RunDefaults, resolve_run
from .core.nested import NestedSampler, NestedSolver, vanilla_sampler
from .core.schedules import Schedule, make_schedule, schedule_names
from .core.analytic import GaussianMixtureDenoiser
from .core.expected_change import Calibration, ExpectedChange, load_calibration
from .core.change_fit import fit_calibration
from .core.flow_schedule import FlowSchedule
from .core.flow_solvers import FlowDenoiser, FlowEulerSolver, FlowHeunSolver
from .core.flow_nested import FlowNestedSampler, FlowNestedSolver, flow_vanilla_sampler
from .core.flow_analytic import GaussianMixtureVelocity

__version__ = "0.2.0"


def __getattr__(name: str):
    """``anytime`` (any stock diffusers pipeline) and ``NestedScheduler`` load diffusers only when first used."""
    if name == "anytime":
        from .pipelines.any_pipeline import anytime
        return anytime
    if name == "NestedScheduler":
        from .pipelines.nested_scheduler import NestedScheduler
        return NestedScheduler
    raise AttributeError(f"module 'nested_diffusion' has no attribute {name!r}")

__all__ = ["RunConfig", "RunDefaults", "resolve_run", "VP", "FLOW", "Schedule", "make_schedule", "schedule_names", "NoiseSchedule", "get_schedule", "ClassifierFreeGuidance", "CountingDenoiser", "Denoiser",
           "DenoiserOutput", "ModelDenoiser", "NonFiniteOutputError", "NoiseSource", "DeviceNoiseSource", "INNER_RESULT", "X0_PREVIEW",
           "AnytimeInfo", "AnytimeUpdate", "SolverEvent", "step_grid", "DDIMSolver", "DDPMLearnedSolver",
           "DPMSolverPP2M", "DPMSolverPP2S", "Solver", "SolverSpec", "get_solver", "register_solver",
           "solver_names", "unregister_solver", "NestedSampler", "NestedSolver", "vanilla_sampler",
           "GaussianMixtureDenoiser", "Calibration", "ExpectedChange", "load_calibration", "fit_calibration",
           "FlowSchedule", "FlowDenoiser", "FlowEulerSolver", "FlowHeunSolver",
           "FlowNestedSampler", "FlowNestedSolver", "flow_vanilla_sampler",
           "GaussianMixtureVelocity", "__version__"]
