"""Nested Diffusion for flow-matching models (SD3, FLUX): the outer step is the flow DDIM step from the inner
result x̂0, x' = (1 − σ') x̂0 + σ' ε̂ (an Euler step with velocity (x − x̂0)/σ), or its stochastic η variant.

``FlowNestedSolver`` reuses ``NestedSolver``'s loop (events, previews, NFE accounting) and replaces its grid and
outer step; ``FlowNestedSampler`` reuses ``NestedSampler.stream``/``sample`` (budget, deadline, stop, previews).
Times are the unshifted u ∈ (0, 1] of ``flow_schedule``; updates report t = u of the outer point.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .eta import EtaSpec
from .flow_schedule import FLOW_CLEAN, FlowSchedule, check_flow_convention, flow_grid
from .flow_solvers import flow_eta
from .flow_steps import flow_ddim_step, flow_noise_scale
from .nested import NestedSampler, NestedSolver
from .registry import FLOW, check_eta, get_solver
from .solvers import Solver


class FlowNestedSolver(NestedSolver):
    """Outer flow DDIM(η_outer) over n outer steps of ``schedule``; each outer denoising is a full inner run.
    ``outer_times``: explicit outer times u (strictly descending from the run's start), e.g. a named schedule's."""

    name = "flow_nested"

    def __init__(self, schedule: FlowSchedule, inner: Solver | str = "euler", inner_steps: int | Sequence[int] = 10,
                 outer_eta: EtaSpec = 0.0, inner_eta: EtaSpec | None = None, convention: str = "clean",
                 outer_times: Sequence[float] | None = None):
        if not isinstance(schedule, FlowSchedule):
            raise TypeError(f"schedule: expected a FlowSchedule, got {type(schedule).__name__}")
        super().__init__(inner, inner_steps, 0.0, inner_eta, None, None)
        self.outer_times = None if outer_times is None else [float(u) for u in outer_times]
        self.schedule, self.convention = schedule, check_flow_convention(convention)
        self.outer_eta = check_eta(outer_eta, "outer_eta", FLOW)

    @staticmethod
    def resolve_inner(inner, inner_eta):
        return get_solver(inner, inner_eta, inner=True, arg="inner_solver", eta_name="inner_eta", kind=FLOW)

    def grid(self, t_start, n, convention, name="outer_steps"):
        self.steps_per_outer(n)  # validates a per-step list
        if self.outer_times is not None:
            return self._explicit_times(t_start, n)[:-1] + [FLOW_CLEAN]
        return flow_grid(self.schedule, t_start, n, self.convention or convention, name)

    def max_steps(self, t_start, convention):
        return 10 ** 9

    def outer_step(self, S, x, x0_hat, k, t, t_next, n, noise) -> torch.Tensor:
        s, s_next = S.sigma(t), S.sigma(t_next)
        eta = flow_eta(self.outer_eta, k, t, S, n, "outer_eta")
        z = noise.randn_like(x) if flow_noise_scale(s, s_next, eta) > 0 else None
        return flow_ddim_step(x, x0_hat, s, s_next, eta, z)


class FlowNestedSampler(NestedSampler):
    """Anytime sampling of a flow-matching denoiser (a ``FlowDenoiser``); same options, ``stream`` and ``sample``
    as ``NestedSampler`` (its ``__init__``). ``grid``: "clean" or "sigma_min" (see ``flow_schedule``);
    ``t_start``: u in (0, 1]; inner solvers: the registry's flow kind ("euler" — also "ddim" —, "heun")."""

    kind = FLOW

    @staticmethod
    def _check_denoiser(denoiser) -> None:
        if not isinstance(getattr(denoiser, "schedule", None), FlowSchedule):
            raise TypeError("denoiser: must have a .schedule that is a FlowSchedule, e.g. a FlowDenoiser")

    def _solver(self, run) -> FlowNestedSolver:
        return FlowNestedSolver(self.denoiser.schedule, run.build_inner(), list(run.inner_steps), run.outer_eta,
                                None, run.grid, run.outer_times)


def flow_vanilla_sampler(denoiser: Any, steps: int, solver: Solver | str | None = None, eta: EtaSpec | None = None,
                         grid: str | None = None) -> FlowNestedSampler:
    """Plain flow sampling as the one-outer-step special case."""
    return FlowNestedSampler(denoiser, 1, steps, solver, eta, None, grid)
