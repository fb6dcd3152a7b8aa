"""Exact equivalences the nested sampler must satisfy (these fail on any grid or coefficient error)."""
import math

import numpy as np
import pytest
import torch

from nested_diffusion import (DDIMSolver, DPMSolverPP2M, DPMSolverPP2S, GaussianMixtureDenoiser,
                              ModelDenoiser, NestedSampler, NestedSolver, NoiseSchedule, NoiseSource,
                              vanilla_sampler)
from nested_diffusion.core.steps import ddim_step, ddpm_learned_step, learned_range_log_variance


class SmoothEps:
    """A deterministic, nonlinear fake ε-network (depends on x and t) for exact-equivalence checks."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t, cond):
        self.calls += 1
        return torch.tanh(0.7 * x + 0.001 * t.float().view(-1, *[1] * (x.dim() - 1))) * 0.9


def make_denoiser(schedule="linear"):
    net = SmoothEps()
    return ModelDenoiser(net, schedule, "epsilon"), net


def hand_ddim(den, x, times, eta=0.0, noise=None):
    S = den.schedule
    for t, tn in zip(times[:-1], times[1:]):
        x0 = den(x, t).x0
        x = ddim_step(x, x0, S.alpha_bar(t), S.alpha_bar(tn), eta, None if noise is None else noise.randn_like(x))
    return x


@pytest.mark.parametrize("grid", ["clean", "authors"])
@pytest.mark.parametrize("K", [1, 3, 7])
def test_nested_with_one_step_ddim_inner_equals_K_step_ddim(grid, K):
    den, _ = make_denoiser()
    sampler = NestedSampler(den, K, 1, "ddim", 0.0, 0.0, grid=grid)
    x_T = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    out = sampler.sample(range(4), x_T.shape, x_T=x_T).x0
    times = sampler.times  # outer grid; 1-step inner from t_k is one DDIM step to x̂0 = D(x_{t_k})
    ref = hand_ddim(den, x_T, times)
    if grid == "authors":  # the inner step lands on ᾱ_0, not x̂0: the last point is x at t = 0
        x = x_T
        S = den.schedule
        for t, tn in zip(times[:-1], times[1:]):
            inner = ddim_step(x, den(x, t).x0, S.alpha_bar(t), S.alpha_bar(0))
            x = ddim_step(x, inner, S.alpha_bar(t), S.alpha_bar(tn))
        ref = x
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    if grid == "clean":  # and the clean outer grid is exactly the vanilla K-step DDIM grid
        van = vanilla_sampler(den, K, eta=0.0).sample(  # deterministic DDIM (the inner default is 0.85)
            range(4), x_T.shape, x_T=x_T).x0
        torch.testing.assert_close(out, van, rtol=0, atol=1e-5)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "dpmpp_2s", "ddpm"])
def test_one_outer_step_equals_vanilla(solver):
    den, _ = make_denoiser()
    eta = 0.5 if solver == "ddim" else None
    nested = NestedSampler(den, 1, 12, solver, eta, outer_eta=0.7)  # outer η is irrelevant with one outer step
    vanilla = vanilla_sampler(den, 12, solver, eta)
    a = nested.sample([5, 6], (2, 1, 4, 4)).x0
    b = vanilla.sample([5, 6], (2, 1, 4, 4)).x0
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and vanilla DDIM equals a hand-written loop on the documented grid
    if solver == "ddim":
        noise = NoiseSource([5, 6])
        x = noise.randn((1, 4, 4))
        times = [int(v) for v in np.round(np.linspace(999, 0, 13)[:-1])] + [-1]
        torch.testing.assert_close(b, hand_ddim(den, x, times, 0.5, noise), rtol=0, atol=1e-6)


def test_dpmpp_first_order_equals_ddim():
    den, _ = make_denoiser("scaled_linear")
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    from nested_diffusion.core.steps import dpmpp_first_order
    S = den.schedule
    for t, tn in [(999, 800), (600, 420), (37, 0), (20, -1)]:
        x0 = den(x, t).x0
        torch.testing.assert_close(dpmpp_first_order(x, x0, S.alpha_bar(t), S.alpha_bar(tn)),
                                   ddim_step(x, x0, S.alpha_bar(t), S.alpha_bar(tn)), rtol=1e-5, atol=1e-5)
    # one step of 2M (always first order) and two points of 2S on one interval equal DDIM
    noise = NoiseSource([0, 1])
    a = list(DPMSolverPP2M().run(den, x, 500, 1, noise))[-1].x0
    b = list(DDIMSolver().run(den, x, 500, 1, noise))[-1].x0
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_second_order_solvers_converge_faster_than_ddim():
    """On a Gaussian mixture ODE (exact denoiser), halving the step size cuts DDIM's error ~2x (first order) and
    DPM-Solver++ 2M/2S's error by more (second order); at 80 steps both are far closer to the reference."""
    gm = GaussianMixtureDenoiser(torch.tensor([[1.5, 0.0], [-1.0, 1.0]]), [0.4, 0.6], schedule="linear")
    noise = NoiseSource(range(256))
    x = noise.randn((2,))
    ref = list(DPMSolverPP2M().run(gm, x, 999, 999, noise))[-1].x0
    err = {}
    for s in (DDIMSolver(), DPMSolverPP2M(), DPMSolverPP2S()):
        err[s.name] = [(list(s.run(gm, x, 999, n, noise))[-1].x0 - ref).pow(2).mean().sqrt().item()
                       for n in (40, 80)]
    assert 1.7 < err["ddim"][0] / err["ddim"][1] < 2.3, err
    assert err["dpmpp_2m"][0] / err["dpmpp_2m"][1] > 3.0, err
    assert err["dpmpp_2s"][0] / err["dpmpp_2s"][1] > 2.5, err
    assert err["dpmpp_2m"][1] < 0.2 * err["ddim"][1] and err["dpmpp_2s"][1] < 0.5 * err["ddim"][1], err


def test_learned_variance_step_equals_closed_form_posterior():
    """Mean and variance of the ancestral step equal q(x_{t'} | x_t, x0) from Gaussian conditioning."""
    S = NoiseSchedule.from_name("linear")
    g = torch.Generator().manual_seed(3)
    x, x0 = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    for t, tn in [(999, 750), (300, 299), (40, 0)]:
        a, an = S.alpha_bar(t), S.alpha_bar(tn)
        alpha = a / an                      # x_t | x_{t'} ~ N(√α x_{t'}, (1−α) I)
        prec = 1 / (1 - an) + alpha / (1 - alpha)
        mean = (math.sqrt(an) * x0 / (1 - an) + math.sqrt(alpha) * x / (1 - alpha)) / prec
        zero = torch.zeros_like(x)
        v = torch.rand(x.shape, generator=g) * 2 - 1
        torch.testing.assert_close(ddpm_learned_step(x, x0, v, a, an, zero), mean, rtol=1e-5, atol=1e-6)
        logvar = learned_range_log_variance(a, an, v)
        lo, hi = math.log(1 / prec), math.log(1 - alpha)  # v = −1: posterior β̃; v = +1: β
        torch.testing.assert_close(logvar, (1 - (v + 1) / 2) * lo + (v + 1) / 2 * hi, rtol=1e-5, atol=1e-6)
        one = torch.ones_like(x)
        torch.testing.assert_close(ddpm_learned_step(x, x0, v, a, an, one) - mean,
                                   torch.exp(0.5 * logvar), rtol=1e-5, atol=1e-6)


def test_learned_variance_solver_uses_the_model_variance_and_ends_at_x0():
    class VarNet:
        def __call__(self, x, t, cond):
            return torch.cat([torch.tanh(x), torch.full_like(x, 0.3)], 1)
    den = ModelDenoiser(VarNet(), "linear", "epsilon", learned_variance=True)
    s = vanilla_sampler(den, 10, "ddpm")
    ups = list(s.stream([1, 2], (2, 1, 3, 3)))
    assert [u.nfe for u in ups] == list(range(1, 11))
    # the last grid point is t = 0 and the final update is x̂0 there, with no noise added
    from nested_diffusion.core.solvers import DDPMLearnedSolver
    assert DDPMLearnedSolver().grid(999, 10, "clean")[-2:] == [0, -1]


@pytest.mark.parametrize("steps", [[3, 5, 2], 4])
def test_nfe_spent_is_the_sum_of_inner_steps(steps):
    den, net = make_denoiser()
    s = NestedSampler(den, 3, steps, "dpmpp_2s")
    ups = list(s.stream(0, (2, 1, 4, 4)))
    expected = sum(steps) if isinstance(steps, list) else 3 * steps
    assert ups[-1].nfe == expected == s.total_nfe == net.calls == den.nfe
    assert ups[-1].final and ups[-1].source == "inner_result"


def test_same_seed_same_image_for_batch_1_and_8():
    den, _ = make_denoiser()
    s = NestedSampler(den, 3, 4, "ddim", inner_eta=0.85, outer_eta="sqrt_one_minus_alpha_bar")
    batch = s.sample(list(range(100, 108)), (8, 1, 4, 4)).x0
    for i in (0, 5, 7):
        single = s.sample([100 + i], (1, 1, 4, 4)).x0
        torch.testing.assert_close(single[0], batch[i], rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


def test_three_level_nesting_is_composition():
    """Nested(outer 2) ∘ Nested(outer 2) ∘ DDIM(3): NFE = 2·2·3 and the result equals a hand-composed loop."""
    den, net = make_denoiser()
    level3 = NestedSolver(DDIMSolver(0.0), inner_steps=3)
    s = NestedSampler(den, 2, 2, inner_solver=level3)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ups = list(s.stream([0, 1], x_T.shape, x_T=x_T))
    assert ups[-1].nfe == 12 == net.calls
    S = den.schedule

    def run_ddim(x, t, n):
        times = [int(v) for v in np.round(np.linspace(t, 0, n + 1)[:-1])] + [-1]
        return hand_ddim(den, x, times)

    def run_nested(x, t, n, inner):
        times = [int(v) for v in np.round(np.linspace(t, 0, n + 1)[:-1])] + [-1]
        for tk, tn in zip(times[:-1], times[1:]):
            x = ddim_step(x, inner(x, tk), S.alpha_bar(tk), S.alpha_bar(tn))
        return x

    ref = run_nested(x_T, 999, 2, lambda x, t: run_nested(x, t, 2, lambda y, u: run_ddim(y, u, 3)))
    torch.testing.assert_close(ups[-1].x0, ref, rtol=0, atol=1e-5)
