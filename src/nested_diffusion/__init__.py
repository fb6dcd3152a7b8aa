"""nested-diffusion: anytime image generation with Nested Diffusion (Elata, Kawar, Michaeli, Elad — WACV 2024)."""
from .schedule import NoiseSchedule, get_schedule
from .denoisers import (ClassifierFreeGuidance, CountingDenoiser, Denoiser, DenoiserOutput, ModelDenoiser,
                        NonFiniteOutputError)
from .noise import NoiseSource
from .solvers import (DDIMSolver, DDPMLearnedSolver, DPMSolverPP2M, DPMSolverPP2S, Solver, SolverEvent,
                      get_solver, step_grid)
from .nested import AnytimeUpdate, NestedSampler, NestedSolver, vanilla_sampler
from .analytic import GaussianMixtureDenoiser

__version__ = "0.1.0"

__all__ = ["NoiseSchedule", "get_schedule", "ClassifierFreeGuidance", "CountingDenoiser", "Denoiser",
           "DenoiserOutput", "ModelDenoiser", "NonFiniteOutputError", "NoiseSource", "DDIMSolver",
           "DDPMLearnedSolver", "DPMSolverPP2M", "DPMSolverPP2S", "Solver", "SolverEvent", "get_solver",
           "step_grid", "AnytimeUpdate", "NestedSampler", "NestedSolver", "vanilla_sampler",
           "GaussianMixtureDenoiser", "__version__"]
