"""nested-diffusion: anytime image generation with Nested Diffusion (Elata, Kawar, Michaeli, Elad — WACV 2024)."""
from .core.schedule import NoiseSchedule, get_schedule
from .core.denoisers import (ClassifierFreeGuidance, CountingDenoiser, Denoiser, DenoiserOutput, ModelDenoiser,
                        NonFiniteOutputError)
from .core.noise import NoiseSource
from .core.solvers import (DDIMSolver, DDPMLearnedSolver, DPMSolverPP2M, DPMSolverPP2S, Solver, SolverEvent,
                      get_solver, step_grid)
from .core.nested import AnytimeUpdate, NestedSampler, NestedSolver, vanilla_sampler
from .core.analytic import GaussianMixtureDenoiser

__version__ = "0.1.0"

__all__ = ["NoiseSchedule", "get_schedule", "ClassifierFreeGuidance", "CountingDenoiser", "Denoiser",
           "DenoiserOutput", "ModelDenoiser", "NonFiniteOutputError", "NoiseSource", "DDIMSolver",
           "DDPMLearnedSolver", "DPMSolverPP2M", "DPMSolverPP2S", "Solver", "SolverEvent", "get_solver",
           "step_grid", "AnytimeUpdate", "NestedSampler", "NestedSolver", "vanilla_sampler",
           "GaussianMixtureDenoiser", "__version__"]
