"""DDRM (Kawar et al., NeurIPS 2022) as a Solver, so it can be the inner process of nested diffusion (the seed's
Algorithm 3: every outer step runs a complete DDRM from the outer state x_t, then takes a plain DDIM step).

Units and conventions
- The state is the usual VP x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε. DDRM's case logic runs in VE spectral coordinates
  x̄ = Vᵀ(x_t/√ᾱ_t) with σ_t = √((1−ᾱ_t)/ᾱ_t); VE ↔ VP always uses √ᾱ_t (not DDRM's 1/σ_T shortcut).
- σ_y is the measurement noise std in the model's [−1, 1] pixel units: y = Hx + σ_y n. A noise std σ in [0, 1]
  image units (DDRM's ``--sigma_0``) is σ_y = 2σ.
- No x0 clipping inside DDRM (build model denoisers with clip_x0=None); no final projection onto y: the output
  is the denoiser's x̂0 at the last grid point.

Grid (one NFE per step): the points round(linspace(t, 0, n)), then the clean end. A run starts with a denoiser
call at its own start time t (Algorithm 3's x′_t = x_t) and its last call is at t = 0, like DDRM's
``0, skip, …, T−skip`` grid: from t = 950 with n = 20 the points are exactly 950, 900, …, 0.

Initialisation: a run that starts at the top time ``top_t`` (default T−1, the samplers' default start) turns the
given standard-normal state into DDRM's p(x_T | y) sample (§4 of the DDRM paper), reusing that state as the noise
(no extra draw). A run that starts below ``top_t`` (an inner run of nested DDRM) keeps the outer state as it is:
re-initialising would erase the null-space content the outer process has built, and for components with
s_i σ_t < σ_y the initial law would need a negative variance.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..core.denoisers import Denoiser
from ..core.nested import NestedSampler
from ..core.noise import NoiseSource, as_noise_source
from ..core.events import SolverEvent, step_event
from ..core.grids import check_convention, zero_ending_grid
from ..core.solvers import Solver
from .operators import SVDOperator, check_sigma_y

DEFAULT_ETA = 0.85
DEFAULT_ETA_B = 1.0
INTERMEDIATE_INITS = ("keep", "reinit_measured")


def ve_sigma(a: float) -> float:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t), 0 at the clean end."""
    return 0.0 if a >= 1.0 else math.sqrt((1.0 - a) / a)


def ddrm_grid(t_start: int, n: int) -> list[int]:
    """round(linspace(t_start, 0, n)) followed by CLEAN: n denoiser calls, the first at t_start, the last at 0."""
    if isinstance(t_start, bool) or not isinstance(t_start, (int, np.integer)) or t_start < 0:
        raise ValueError(f"t_start: must be an integer time ≥ 0, got {t_start!r}")
    return zero_ending_grid(int(t_start), n)


def reference_t_start(num_train_timesteps: int, steps: int) -> int:
    """The top time of DDRM's reference grid 0, skip, …, T − skip with skip = T // steps (950 for T=1000, 20)."""
    return int(num_train_timesteps) - int(num_train_timesteps) // int(steps)


def _check_eta(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be a number in [0, 1], got {value!r}")
    return float(value)


class Measurement:
    """An operator with its measurement y (B, m) and σ_y, and the spectral quantities DDRM needs:
    s (padded to n), Uᵀy (padded) and ȳ = Uᵀy / s (0 where s = 0)."""

    def __init__(self, operator: SVDOperator, y: torch.Tensor, sigma_y: float):
        if not isinstance(operator, SVDOperator):
            raise TypeError(f"operator: expected an SVDOperator (e.g. SuperResolution), got {type(operator).__name__}")
        self.operator, self.sigma_y = operator, check_sigma_y(sigma_y)
        self.y = operator.measurement_rows(y, "y")
        if not bool(torch.isfinite(self.y).all()):
            raise ValueError("y: the measurement contains NaN or inf")
        s = operator.add_zeros(operator.singulars()[None])[0]            # float64, (n,)
        self.s64 = s
        self.inv_s64 = torch.where(s > 0, 1.0 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
        self._cache: dict = {}

    @property
    def batch_size(self) -> int:
        return self.y.shape[0]

    def tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(s, Uᵀy, ȳ) in like's dtype/device: shapes (n,), (B, n), (B, n)."""
        key = (like.dtype, like.device)
        if key not in self._cache:
            op = self.operator
            y = self.y.to(dtype=like.dtype, device=like.device)
            uty = op.add_zeros(op.Ut(y))
            inv = self.inv_s64.to(dtype=like.dtype, device=like.device)
            self._cache[key] = (self.s64.to(dtype=like.dtype, device=like.device), uty, uty * inv)
        return self._cache[key]

    def cases(self, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (n,) at the level σ (float64 comparisons): noisier than y (s σ > σ_y) and less noisy than y
        (0 < s σ < σ_y). The rest — s = 0, or the tie s σ = σ_y — is treated as missing."""
        s, sy = self.s64, self.sigma_y
        measured = s > 0
        return measured & (s * sigma > sy), measured & (s * sigma < sy)

    def check_state(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.operator.shape:
            raise ValueError(f"x: the operator works on images of shape {self.operator.shape}, got a state of "
                             f"shape {tuple(x.shape)}")
        if x.shape[0] != self.batch_size:
            raise ValueError(f"y: {self.batch_size} measurements for a batch of {x.shape[0]} samples")


def ddrm_init(meas: Measurement, x: torch.Tensor, a: float) -> torch.Tensor:
    """DDRM's top-step sample of p(x_T | y), with z = Vᵀx taken from the standard-normal state x:
    x̄_i = ȳ_i + √(σ_T² − σ_y²/s_i²) z_i where s_i σ_T > σ_y, else σ_T z_i; returns √ᾱ_T V x̄ (VP units)."""
    op, sig = meas.operator, ve_sigma(a)
    s, uty, ybar = meas.tensors(x)
    noisier, _ = meas.cases(sig)
    std = torch.where(noisier, (sig ** 2 - meas.sigma_y ** 2 * meas.inv_s64 ** 2).clamp_min(0).sqrt(),
                      torch.full_like(meas.s64, sig)).to(x)
    z = op.Vt(x)
    xb = torch.where(noisier.to(x.device), ybar + std * z, std * z)
    return math.sqrt(a) * op.V(xb).reshape(x.shape)


def ddrm_reinit_measured(meas: Measurement, x: torch.Tensor, a: float, noise: NoiseSource) -> torch.Tensor:
    """Ablation: re-draw only the measured components noisier than y from DDRM's marginal at level a
    (fresh noise), keeping every other component of the state."""
    op, sig = meas.operator, ve_sigma(a)
    _, _, ybar = meas.tensors(x)
    noisier, _ = meas.cases(sig)
    std = (sig ** 2 - meas.sigma_y ** 2 * meas.inv_s64 ** 2).clamp_min(0).sqrt().to(x)
    z = noise.randn_like(x).reshape(x.shape[0], -1)
    xb = torch.where(noisier.to(x.device), math.sqrt(a) * (ybar + std * z), op.Vt(x))   # VP spectral coordinates
    return op.V(xb).reshape(x.shape)


def ddrm_update(meas: Measurement, x: torch.Tensor, x0: torch.Tensor, a: float, a_next: float, eta: float,
                eta_b: float, noise: NoiseSource) -> torch.Tensor:
    """One DDRM step from level a to a_next given the denoiser's x̂0 (DDRM eq. 7–8, per spectral component;
    the cases use the target level σ′). Returns the VP state at a_next; at the clean end it is x̂0 itself."""
    if a_next >= 1.0:
        return x0
    op, sig, sig_n, sy = meas.operator, ve_sigma(a), ve_sigma(a_next), meas.sigma_y
    B = x.shape[0]
    s, uty, ybar = meas.tensors(x)
    x0b = op.Vt(x0)
    eps_b = op.Vt((x / math.sqrt(a) - x0) / sig)        # ε̄ = Vᵀ(x̃_t − x̂0)/σ_t
    z = noise.randn_like(x).reshape(B, -1)
    c = math.sqrt(1.0 - eta ** 2) * sig_n
    noisier, less = meas.cases(sig_n)
    # missing (s = 0 or tie): DDIM(η) on the null space
    out = x0b + c * eps_b + eta * sig_n * z
    if sy > 0 and bool(less.any()):  # less noisy than y: pulled towards y (needs σ_y > 0)
        out = torch.where(less.to(x.device), x0b + c * (uty - s * x0b) / sy + eta * sig_n * z, out)
    if bool(noisier.any()):          # noisier than y: centred on (1−η_b) x̂0 + η_b ȳ
        std = (sig_n ** 2 - (eta_b * sy) ** 2 * meas.inv_s64 ** 2).clamp_min(0).sqrt().to(x)
        out = torch.where(noisier.to(x.device), (1.0 - eta_b) * x0b + eta_b * ybar + std * z, out)
    return math.sqrt(a_next) * op.V(out).reshape(x.shape)


def _warn_if_clipping(denoiser: Any) -> None:
    for d in (denoiser, getattr(denoiser, "inner", None)):
        if getattr(d, "clip_x0", None) is not None:
            warnings.warn(f"DDRM expects an unclipped x̂0 but the denoiser clips it to ±{d.clip_x0}; build it with "
                          f"clip_x0=None (e.g. make_denoiser(model, clip_x0=None))", stacklevel=3)
            return


class DDRMSolver(Solver):
    """DDRM with measurement y = H x + σ_y n as a Solver (η = η_A = η_C, η_b as in DDRM's runner).

    ``top_t``: a run starting at t ≥ top_t applies DDRM's y-based initialisation to the given (standard-normal)
    state; default None = the schedule's last index T−1, the default start of NestedSampler. Runs starting lower
    keep their state (``intermediate_init="keep"``, Algorithm 3) or, as an ablation, re-draw the measured
    components that are noisier than y (``"reinit_measured"``). The grid convention argument is ignored: DDRM
    always uses round(linspace(t, 0, n)) + clean end (see the module docstring)."""

    name = "ddrm"

    def __init__(self, operator: SVDOperator, y: torch.Tensor, sigma_y: float = 0.0, eta: float = DEFAULT_ETA,
                 eta_b: float = DEFAULT_ETA_B, top_t: int | None = None, intermediate_init: str = "keep"):
        self.measurement = Measurement(operator, y, sigma_y)
        self.operator, self.sigma_y = operator, self.measurement.sigma_y
        self.eta, self.eta_b = _check_eta(eta, "eta"), _check_eta(eta_b, "eta_b")
        if top_t is not None and (isinstance(top_t, bool) or not isinstance(top_t, (int, np.integer)) or top_t < 0):
            raise ValueError(f"top_t: must be None or an integer time ≥ 0, got {top_t!r}")
        self.top_t = None if top_t is None else int(top_t)
        if intermediate_init not in INTERMEDIATE_INITS:
            raise ValueError(f"intermediate_init: {intermediate_init!r} is not valid; use one of {INTERMEDIATE_INITS}")
        self.intermediate_init = intermediate_init

    @property
    def y(self) -> torch.Tensor:
        return self.measurement.y

    def max_steps(self, t_start: int, convention: str) -> int:
        return t_start + 1

    def grid(self, t_start: int, n: int, convention: str = "clean", name: str = "steps") -> list[int]:
        check_convention(convention)
        return ddrm_grid(t_start, n)

    def resolved_top(self, denoiser: Denoiser) -> int:
        T = denoiser.schedule.num_train_timesteps
        if self.top_t is not None and self.top_t > T - 1:
            raise ValueError(f"top_t: {self.top_t} exceeds the schedule's last time index {T - 1}")
        return T - 1 if self.top_t is None else self.top_t

    def run(self, denoiser: Denoiser, x: torch.Tensor, t_start: int, n: int, noise: NoiseSource, cond: Any = None,
            convention: str = "clean") -> Iterator[SolverEvent]:
        times, S, meas = self.grid(t_start, n, convention), denoiser.schedule, self.measurement
        meas.check_state(x)
        top = self.resolved_top(denoiser)
        _warn_if_clipping(denoiser)
        if t_start >= top:
            x = ddrm_init(meas, x, S.alpha_bar(t_start))
        elif self.intermediate_init == "reinit_measured":
            x = ddrm_reinit_measured(meas, x, S.alpha_bar(t_start), noise)
        for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
            x0 = denoiser(x, t, cond).x0
            x = ddrm_update(meas, x, x0, S.alpha_bar(t), S.alpha_bar(t_next), self.eta, self.eta_b, noise)
            yield step_event(i, n, x, x0, t)


def ddrm_restore(denoiser: Denoiser, operator: SVDOperator, y: torch.Tensor, sigma_y: float = 0.0,
                 steps: int = 20, seeds: NoiseSource | Sequence[int] | int = 0, eta: float = DEFAULT_ETA,
                 eta_b: float = DEFAULT_ETA_B, t_start: int | None = None, cond: Any = None,
                 x_T: torch.Tensor | None = None, grad: bool = False) -> torch.Tensor:
    """Vanilla DDRM: a plain loop (independent of the nested machinery) from t_start (default T−1; use
    ``reference_t_start(T, steps)`` for DDRM's 950, 900, …, 0 grid) with the y-based initialisation.
    ``seeds``: one per measurement (or a base seed), drawn exactly as NestedSampler draws them, so
    ``ddrm_sampler(..., outer_steps=1, inner_steps=steps)`` gives the same result bit for bit. The model runs
    without autograd unless ``grad=True``."""
    with torch.set_grad_enabled(grad):
        return _ddrm_loop(denoiser, operator, y, sigma_y, steps, seeds, eta, eta_b, t_start, cond, x_T)


def _ddrm_loop(denoiser, operator, y, sigma_y, steps, seeds, eta, eta_b, t_start, cond, x_T) -> torch.Tensor:
    meas = Measurement(operator, y, sigma_y)
    eta, eta_b = _check_eta(eta, "eta"), _check_eta(eta_b, "eta_b")
    T = denoiser.schedule.num_train_timesteps
    t0 = T - 1 if t_start is None else t_start
    if isinstance(t0, bool) or not isinstance(t0, (int, np.integer)) or not 0 < t0 < T:
        raise ValueError(f"t_start: must lie in [1, {T - 1}], got {t_start!r}")
    times = ddrm_grid(int(t0), steps)
    B = meas.batch_size
    noise = as_noise_source(seeds, B, meas.y.device, meas.y.dtype)
    if noise.batch_size != B:
        raise ValueError(f"seeds: {noise.batch_size} seeds for {B} measurements")
    x = noise.randn(operator.shape) if x_T is None else x_T.to(device=meas.y.device, dtype=meas.y.dtype)
    meas.check_state(x)
    _warn_if_clipping(denoiser)
    S = denoiser.schedule
    x = ddrm_init(meas, x, S.alpha_bar(times[0]))
    for t, t_next in zip(times[:-1], times[1:]):
        x0 = denoiser(x, t, cond).x0
        x = ddrm_update(meas, x, x0, S.alpha_bar(t), S.alpha_bar(t_next), eta, eta_b, noise)
    return x


def ddrm_sampler(denoiser: Denoiser, operator: SVDOperator, y: torch.Tensor, sigma_y: float = 0.0,
                 outer_steps: int = 3, inner_steps: int | Sequence[int] = 10, eta: float = DEFAULT_ETA,
                 eta_b: float = DEFAULT_ETA_B, outer_eta: float = 0.0, t_start: int | None = None,
                 grid: str = "clean", intermediate_init: str = "keep") -> NestedSampler:
    """Nested DDRM (Algorithm 3): NestedSampler with a DDRMSolver inner process and a plain DDIM(outer_eta) outer
    step; the y-based initialisation happens once, at t_start (default T−1). ``outer_steps=1`` is vanilla DDRM.
    Use ``.stream(seeds, (B, *operator.shape), cond, max_nfe=..., deadline=...)`` for anytime results."""
    T = denoiser.schedule.num_train_timesteps
    t0 = T - 1 if t_start is None else t_start
    inner = DDRMSolver(operator, y, sigma_y, eta, eta_b, top_t=t0, intermediate_init=intermediate_init)
    return NestedSampler(denoiser, outer_steps, inner_steps, inner_solver=inner, outer_eta=outer_eta, grid=grid,
                         t_start=t0)
