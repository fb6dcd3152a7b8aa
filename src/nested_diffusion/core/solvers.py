"""Solvers that run from any integer time t_start to the clean sample in n steps, on an arbitrary partial grid.

Every solver is a generator ``run(denoiser, x, t_start, n, noise, cond, convention)`` yielding one
``SolverEvent`` per denoiser call, carrying its current anytime estimate of x0; the last event is ``final``
and holds the clean sample. Because a sampler run maps (x_t, t) to a clean estimate, it is itself a denoiser:
``nested.NestedSolver`` composes them.

Grid conventions (see README, "Grids"):
  "clean"   — points round(linspace(t, 0, n+1))[:-1], the last step lands exactly on x̂0 (ᾱ = 1).
  "authors" — points round(linspace(t, 1, n)), the last step lands on ᾱ at index 0 (as the authors' SD code).
Learned-variance DDPM always uses round(linspace(t, 0, n)) ending at t = 0 then x0 (as IDDPM/DiT respacing).
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Iterator

import torch

from .denoisers import Denoiser
from .eta import EtaSpec, resolve_eta, validate_eta
from .events import SolverEvent, step_event
from .grids import step_grid, zero_ending_grid
from .noise import NoiseSource
from .steps import ddim_sigma, ddim_step, ddpm_learned_step, dpmpp_first_order, dpmpp_second_order

_grad = threading.local()  # the grad mode of the outermost run in progress on this thread


def without_grad_by_default(run):
    """Wrap a solver's ``run`` generator so each of its steps executes with autograd off, unless the caller passes
    ``grad=True``; ``grad=None`` (default) inherits the enclosing run's choice, and the outermost run's default is
    off. Only the steps are wrapped: the caller's own code between events keeps its grad mode."""
    @functools.wraps(run)
    def wrapped(self, *args, grad: bool | None = None, **kwargs):
        outer = getattr(_grad, "on", None)
        want = bool(grad) if grad is not None else bool(outer)
        gen = run(self, *args, **kwargs)
        try:
            while True:
                _grad.on = want
                try:
                    with torch.set_grad_enabled(want):
                        event = next(gen)
                except StopIteration:
                    return
                finally:
                    _grad.on = outer
                yield event
        finally:
            gen.close()
    wrapped.grad_wrapped = True
    return wrapped

class Solver:
    """Base class: a solver has a name, a grid rule and an NFE cost for n steps. Subclasses implement ``run``
    as a generator of SolverEvents; it runs without autograd unless called with ``grad=True``."""

    name = "solver"
    first_order_grid = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and not getattr(run, "grad_wrapped", False):
            cls.run = without_grad_by_default(run)

    def nfe(self, n: int) -> int:
        return n

    def max_steps(self, t_start: int, convention: str) -> int:
        return t_start

    def grid(self, t_start: int, n: int, convention: str, name: str = "steps") -> list[int]:
        return step_grid(t_start, n, convention, name)

    def run(self, denoiser: Denoiser, x: torch.Tensor, t_start: int, n: int, noise: NoiseSource,
            cond: Any = None, convention: str = "clean") -> Iterator[SolverEvent]:
        raise NotImplementedError


class DDIMSolver(Solver):
    """DDIM (Song et al. 2021) with η: a number, a per-step list, a callable (i, t, ᾱ_t) → η, or
    "sqrt_one_minus_alpha_bar" for the seed's η_t = √(1 − ᾱ_t)."""

    name = "ddim"

    def __init__(self, eta: EtaSpec = 0.0):
        self.eta = validate_eta(eta)

    def run(self, denoiser, x, t_start, n, noise, cond=None, convention="clean"):
        times, S = self.grid(t_start, n, convention), denoiser.schedule
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            out = denoiser(x, t, cond)
            a, a_next = S.alpha_bar(t), S.alpha_bar(t_next)
            eta = resolve_eta(self.eta, i, t, a, n)
            z = noise.randn_like(x) if ddim_sigma(a, a_next, eta) > 0 else None
            x = ddim_step(x, out.x0, a, a_next, eta, z)
            yield step_event(i, n, x, out.x0, t)


class DDPMLearnedSolver(Solver):
    """Ancestral DDPM with the model's learned variance (IDDPM learned_range), on round(linspace(t, 0, n)).

    Models without a variance output fall back to the posterior variance β̃ (DDPM's "fixed small")."""

    name = "ddpm"

    def max_steps(self, t_start, convention):
        return t_start + 1

    def grid(self, t_start, n, convention, name="steps"):
        return zero_ending_grid(t_start, n, convention, name)

    def run(self, denoiser, x, t_start, n, noise, cond=None, convention="clean"):
        times, S = self.grid(t_start, n, convention), denoiser.schedule
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            out = denoiser(x, t, cond)
            a, a_next = S.alpha_bar(t), S.alpha_bar(t_next)
            z = noise.randn_like(x) if a_next < 1.0 else None
            x = ddpm_learned_step(x, out.x0, out.var_values, a, a_next, z)
            yield step_event(i, n, x, out.x0, t)


class DPMSolverPP2M(Solver):
    """Multistep DPM-Solver++(2M) (Lu et al. 2022), data prediction, first order at the first and last step."""

    name = "dpmpp_2m"

    def run(self, denoiser, x, t_start, n, noise, cond=None, convention="clean"):
        times, S = self.grid(t_start, n, convention), denoiser.schedule
        prev_d, prev_a = None, None
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            d = denoiser(x, t, cond).x0
            a, a_next = S.alpha_bar(t), S.alpha_bar(t_next)
            final = i == n - 1
            if prev_d is None or final:
                x = dpmpp_first_order(x, d, a, a_next)
            else:
                x = dpmpp_second_order(x, d, prev_d, a, prev_a, a_next)
            prev_d, prev_a = d, a
            yield step_event(i, n, x, d, t)


class DPMSolverPP2S(Solver):
    """Singlestep DPM-Solver++(2S): grid points taken in pairs (s, u); a first-order step to u, then a
    second-order step from s over the pair. One NFE per grid point; order 1 for an unpaired or final step."""

    name = "dpmpp_2s"

    def run(self, denoiser, x, t_start, n, noise, cond=None, convention="clean"):
        times, S = self.grid(t_start, n, convention), denoiser.schedule
        i = 0
        while i < n:
            s, u = times[i], times[i + 1]
            a_s, a_u = S.alpha_bar(s), S.alpha_bar(u)
            d_s = denoiser(x, s, cond).x0
            if i + 1 == n:  # unpaired last point: first order to the end
                x = dpmpp_first_order(x, d_s, a_s, a_u)
                yield step_event(i, n, x, d_s, s)
                return
            yield step_event(i, n, x, d_s, s)
            x_u = dpmpp_first_order(x, d_s, a_s, a_u)
            d_u = denoiser(x_u, u, cond).x0
            end = times[i + 2]
            a_end = S.alpha_bar(end)
            if a_end >= 1.0:  # the pair ends at the clean sample: only a first-order step is defined
                x = dpmpp_first_order(x_u, d_u, a_u, a_end)
            else:
                x = dpmpp_second_order(x, d_s, d_u, a_s, a_u, a_end)
            yield step_event(i + 1, n, x, d_u, u)
            i += 2
