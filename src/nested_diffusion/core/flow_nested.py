"""Nested Diffusion for flow-matching models (SD3, FLUX): the outer step is the flow DDIM step from the inner
result x̂0, x' = (1 − σ') x̂0 + σ' ε̂ (an Euler step with velocity (x − x̂0)/σ), or its stochastic η variant.

``FlowNestedSolver`` reuses ``NestedSolver``'s loop (events, previews, NFE accounting) and replaces its grid and
outer step; ``FlowNestedSampler`` reuses ``NestedSampler.stream``/``sample`` (budget, deadline, stop, previews).
Times are the unshifted u ∈ (0, 1] of ``flow_schedule``; updates report t = u of the outer point.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .eta import EtaSpec, validate_eta
from .flow_registry import get_flow_solver
from .flow_schedule import FlowSchedule, check_flow_convention, flow_grid
from .flow_solvers import flow_eta
from .flow_steps import FRESH_NOISE, flow_ddim_step, flow_noise_scale
from .grids import check_step_counts
from .nested import NestedSampler, NestedSolver
from .solvers import Solver


class FlowNestedSolver(NestedSolver):
    """Outer flow DDIM(η_outer) over n outer steps of ``schedule``; each outer denoising is a full inner run."""

    name = "flow_nested"

    def __init__(self, schedule: FlowSchedule, inner: Solver | str = "euler", inner_steps: int | Sequence[int] = 10,
                 outer_eta: EtaSpec = 0.0, inner_eta: EtaSpec | None = None, convention: str = "clean"):
        if not isinstance(schedule, FlowSchedule):
            raise TypeError(f"schedule: expected a FlowSchedule, got {type(schedule).__name__}")
        super().__init__(inner, inner_steps, 0.0, inner_eta, None)
        self.schedule, self.convention = schedule, check_flow_convention(convention)
        self.outer_eta = outer_eta if outer_eta == FRESH_NOISE else validate_eta(outer_eta, "outer_eta")

    @staticmethod
    def resolve_inner(inner, inner_eta):
        return get_flow_solver(inner, inner_eta)

    def grid(self, t_start, n, convention, name="outer_steps"):
        self.steps_per_outer(n)  # validates a per-step list
        return flow_grid(self.schedule, t_start, n, self.convention or convention, name)

    def max_steps(self, t_start, convention):
        return 10 ** 9

    def outer_step(self, S, x, x0_hat, k, t, t_next, n, noise) -> torch.Tensor:
        s, s_next = S.sigma(t), S.sigma(t_next)
        eta = flow_eta(self.outer_eta, k, t, S, n, "outer_eta")
        z = noise.randn_like(x) if flow_noise_scale(s, s_next, eta) > 0 else None
        return flow_ddim_step(x, x0_hat, s, s_next, eta, z)


class FlowNestedSampler(NestedSampler):
    """Anytime sampling of a flow-matching denoiser (a ``FlowDenoiser``); same ``stream``/``sample`` as
    ``NestedSampler``. ``grid``: "clean" or "sigma_min" (see ``flow_schedule``); ``t_start``: u in (0, 1]."""

    def __init__(self, denoiser: Any, outer_steps: int, inner_steps: int | Sequence[int],
                 inner_solver: Solver | str = "euler", inner_eta: EtaSpec | None = None,
                 outer_eta: EtaSpec = 0.0, grid: str = "clean", t_start: float | None = None):
        check_flow_convention(grid)
        if not isinstance(getattr(denoiser, "schedule", None), FlowSchedule):
            raise TypeError("denoiser: must have a .schedule that is a FlowSchedule, e.g. a FlowDenoiser")
        check_step_counts(inner_steps, "inner_steps")
        self.denoiser, self.grid_convention = denoiser, grid
        self.t_start = 1.0 if t_start is None else float(t_start)
        if not 0.0 < self.t_start <= 1.0:
            raise ValueError(f"t_start: a flow time must lie in (0, 1], got {t_start}")
        self.solver = FlowNestedSolver(denoiser.schedule, inner_solver, inner_steps, outer_eta, inner_eta, grid)
        self.outer_steps = outer_steps
        self.times = self.solver.grid(self.t_start, outer_steps, grid)
        self.inner_steps = self.solver.steps_per_outer(outer_steps)
        self.total_nfe = self.solver.nfe(outer_steps)


def flow_vanilla_sampler(denoiser: Any, steps: int, solver: Solver | str = "euler", eta: EtaSpec | None = None,
                         grid: str = "clean") -> FlowNestedSampler:
    """Plain flow sampling as the one-outer-step special case."""
    return FlowNestedSampler(denoiser, 1, steps, solver, eta, 0.0, grid)
