"""Flow-matching denoiser adapter and inner solvers on partial grids (same event protocol as ``solvers``).

A flow solver's ``run(denoiser, x, u_start, n, noise, cond, convention)`` walks ``flow_grid`` from u_start to the
clean end and yields one ``SolverEvent`` per denoiser call (t = the unshifted time u of the call); the denoiser is
a ``FlowDenoiser`` (or anything with ``.schedule`` = a ``FlowSchedule`` returning x̂0).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from .denoisers import DenoiserOutput, NonFiniteOutputError
from .eta import EtaSpec, resolve_eta, validate_eta
from .events import INNER_RESULT, X0_PREVIEW, SolverEvent, step_event
from .flow_schedule import FlowSchedule, flow_grid
from .flow_steps import FRESH_NOISE, flow_ddim_step, flow_noise_scale, flow_velocity
from .solvers import Solver

FLOW_PREDICTIONS = ("velocity", "sample")


class FlowDenoiser:
    """A velocity-predicting network (v = ε − x0, SD3/FLUX) as a denoiser: x̂0 = x − σ v.

    ``model(x, sigma, cond)`` gets σ as a (B,) float32 tensor; the caller turns it into the network's own
    timestep convention (SD3: 1000 σ, FLUX: σ). ``prediction="sample"`` takes a network that returns x̂0."""

    def __init__(self, model: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor], schedule: FlowSchedule,
                 prediction: str = "velocity", check_finite: bool = True):
        if prediction not in FLOW_PREDICTIONS:
            raise ValueError(f"prediction: {prediction!r} is not valid; use one of {FLOW_PREDICTIONS}")
        if not isinstance(schedule, FlowSchedule):
            raise TypeError(f"schedule: expected a FlowSchedule, got {type(schedule).__name__}")
        self.model, self.schedule, self.prediction, self.check_finite = model, schedule, prediction, check_finite
        self.nfe = 0

    def __call__(self, x: torch.Tensor, u: float, cond: Any = None) -> DenoiserOutput:
        if not 0.0 < float(u) <= 1.0:
            raise ValueError(f"t: a flow time must lie in (0, 1], got {u}")
        sigma = self.schedule.sigma(u)
        out = self.model(x, torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device), cond)
        self.nfe += 1
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model output: expected shape {tuple(x.shape)} at u={u}, got {got}")
        if self.check_finite and not bool(torch.isfinite(out).all()):
            raise NonFiniteOutputError(u)
        out = out.to(x.dtype)
        return DenoiserOutput(out if self.prediction == "sample" else x - sigma * out)


class FlowSolver(Solver):
    """Base of the flow solvers: grids come from the denoiser's FlowSchedule."""

    name = "flow"

    def times(self, schedule: FlowSchedule, u_start: float, n: int, convention: str,
              name: str = "steps") -> list[float]:
        return flow_grid(schedule, u_start, n, convention, name)

    def max_steps(self, t_start, convention):
        return 10 ** 9  # continuous time: any number of steps fits


class FlowEulerSolver(FlowSolver):
    """Euler on the flow ODE (η = 0, what ``FlowMatchEulerDiscreteScheduler`` does), or its stochastic DDIM(η)
    analogue: η a number, per-step list, callable (i, u, ᾱ) → η, "sqrt_one_minus_alpha_bar", or "fresh"."""

    name = "euler"

    def __init__(self, eta: EtaSpec = 0.0):
        self.eta = eta if eta == FRESH_NOISE else validate_eta(eta)

    def run(self, denoiser, x, t_start, n, noise, cond=None, convention="clean") -> Iterator[SolverEvent]:
        S = denoiser.schedule
        times = self.times(S, t_start, n, convention)
        for i, (u, u_next) in enumerate(zip(times[:-1], times[1:])):
            out = denoiser(x, u, cond)
            s, s_next = S.sigma(u), S.sigma(u_next)
            eta = flow_eta(self.eta, i, u, S, n)
            z = noise.randn_like(x) if flow_noise_scale(s, s_next, eta) > 0 else None
            x = flow_ddim_step(x, out.x0, s, s_next, eta, z)
            yield step_event(i, n, x, out.x0, u)


def flow_eta(spec: EtaSpec, i: int, u: float, schedule: FlowSchedule, n: int, name: str = "eta") -> "float | str":
    """Resolve an η spec at a flow time (the VP rules see the equivalent ᾱ)."""
    return FRESH_NOISE if spec == FRESH_NOISE else resolve_eta(spec, i, u, schedule.alpha_bar(u), n, name)


class FlowHeunSolver(FlowSolver):
    """Heun's method (explicit trapezoid, 2nd order) on the flow ODE; the last step, to σ = 0, is Euler (the
    velocity (x − x̂0)/σ is undefined there), as in diffusers' Heun schedulers. n steps cost 2n − 1 NFE."""

    name = "heun"

    def nfe(self, n: int) -> int:
        return 2 * n - 1

    def run(self, denoiser, x, t_start, n, noise, cond=None, convention="clean") -> Iterator[SolverEvent]:
        S = denoiser.schedule
        times = self.times(S, t_start, n, convention)
        calls = 0
        for i, (u, u_next) in enumerate(zip(times[:-1], times[1:])):
            s, s_next = S.sigma(u), S.sigma(u_next)
            x0 = denoiser(x, u, cond).x0
            calls += 1
            if s_next <= 0.0:  # last step: Euler to the clean end
                yield SolverEvent(nfe=calls, x0=x0, source=INNER_RESULT, final=True, step=i, t=u)
                return
            v1 = flow_velocity(x, x0, s)
            yield SolverEvent(nfe=calls, x0=x0, source=X0_PREVIEW, step=i, t=u)
            x_euler = x + (s_next - s) * v1
            x0_next = denoiser(x_euler, u_next, cond).x0
            calls += 1
            x = x + (s_next - s) * 0.5 * (v1 + flow_velocity(x_euler, x0_next, s_next))
            yield SolverEvent(nfe=calls, x0=x0_next, source=X0_PREVIEW, step=i, t=u_next)
