"""DDRM mechanics: vanilla ≡ nested with one outer step (bit for bit), Algorithm 3's nesting, grids, NFE, the
initialisation rule (y-based at the top, keep the state below it) and bad input."""
import math

import pytest
import torch

from nested_diffusion import CountingDenoiser, ModelDenoiser, NestedSampler, NoiseSource
from nested_diffusion.inverse import (DDRMSolver, Deblurring, Denoising, Inpainting, SuperResolution, ddrm_grid,
                                      ddrm_init, ddrm_restore, ddrm_sampler, ddrm_update, measure,
                                      reference_t_start, uniform_kernel)
from nested_diffusion.inverse.ddrm import Measurement, ve_sigma
from nested_diffusion.core.grids import CLEAN
from nested_diffusion.core.steps import ddim_step


class SmoothEps:
    """A deterministic nonlinear fake ε-network, so exact-equivalence checks see a non-trivial denoiser."""

    def __call__(self, x, t, cond):
        return torch.tanh(0.6 * x + 0.0013 * t.float().view(-1, 1, 1, 1)) * 0.9 + 0.05 * x.mean((1, 2, 3), True)


class Spy:
    """Wraps a denoiser and records its inputs."""

    def __init__(self, den):
        self.den, self.schedule, self.inputs = den, den.schedule, []

    def __call__(self, x, t, cond=None):
        self.inputs.append((x.clone(), t))
        return self.den(x, t, cond)


def fake_denoiser(schedule="linear"):
    return ModelDenoiser(SmoothEps(), schedule, "epsilon")


SHAPE = (2, 8, 8)
OPERATORS = {
    "sr4": lambda: SuperResolution(SHAPE, 4),
    "inpaint": lambda: Inpainting.random(SHAPE, 0.5, 3),
    "deblur": lambda: Deblurring(SHAPE, uniform_kernel(5), zero_below=0.05),   # has zero singular values
    "denoise": lambda: Denoising(SHAPE),
}


def problem(name, sigma_y, B=3):
    op = OPERATORS[name]()
    x = torch.rand(B, *SHAPE, generator=torch.Generator().manual_seed(11)) * 2 - 1
    return op, measure(op, x, sigma_y, seed=5)


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize("sigma_y", [0.0, 0.3])
def test_nested_with_one_outer_step_is_vanilla_ddrm_bit_for_bit(name, sigma_y):
    op, y = problem(name, sigma_y)
    den = fake_denoiser()
    for t_start, steps in ((None, 7), (reference_t_start(1000, 20), 20)):
        van = ddrm_restore(den, op, y, sigma_y, steps=steps, seeds=[4, 5, 6], t_start=t_start)
        sampler = ddrm_sampler(den, op, y, sigma_y, outer_steps=1, inner_steps=steps, t_start=t_start)
        nested = sampler.sample([4, 5, 6], (3, *SHAPE)).x0
        assert torch.equal(van, nested)
        # the same through NestedSampler built by hand (default t_start = T−1 and top_t = None agree)
        if t_start is None:
            hand = NestedSampler(den, 1, steps, inner_solver=DDRMSolver(op, y, sigma_y)).sample([4, 5, 6],
                                                                                                (3, *SHAPE))
            assert torch.equal(van, hand.x0)
    assert bool(torch.isfinite(van).all())


def test_reference_grid_and_nfe():
    assert reference_t_start(1000, 20) == 950
    assert ddrm_grid(950, 20) == list(range(950, -1, -50)) + [CLEAN]
    assert ddrm_grid(999, 1) == [999, CLEAN]
    solver = DDRMSolver(Denoising((1, 2, 2)), torch.zeros(1, 4))
    assert solver.grid(300, 4, "authors") == ddrm_grid(300, 4) == [300, 200, 100, 0, CLEAN]
    assert solver.nfe(13) == 13 and solver.max_steps(9, "clean") == 10
    with pytest.raises(ValueError, match="steps: 11 steps do not fit"):
        ddrm_grid(9, 11)
    op, y = problem("sr4", 0.1)
    den = CountingDenoiser(fake_denoiser())
    sampler = ddrm_sampler(den, op, y, 0.1, outer_steps=3, inner_steps=4)
    updates = list(sampler.stream([0, 1, 2], (3, *SHAPE)))
    assert den.nfe == 12 == sampler.total_nfe
    assert [u.nfe for u in updates] == [1, 2, 3, 4, 8, 12]
    assert [u.source for u in updates] == ["x0_preview"] * 3 + ["inner_result"] * 3
    assert sampler.times == [999, 666, 333, CLEAN]


def hand_nested_ddrm(den, op, y, sigma_y, outer_times, n, seeds, eta=0.85, eta_b=1.0):
    """Algorithm 3 written out: y-based init once at the top; each inner DDRM run starts on the outer state."""
    S, meas = den.schedule, Measurement(op, y, sigma_y)
    noise = NoiseSource(seeds, dtype=y.dtype)
    x = noise.randn(op.shape)
    for k, (t, t_next) in enumerate(zip(outer_times[:-1], outer_times[1:])):
        xi = ddrm_init(meas, x, S.alpha_bar(t)) if k == 0 else x
        inner = ddrm_grid(t, n)
        for u, u_next in zip(inner[:-1], inner[1:]):
            x0 = den(xi, u).x0
            xi = ddrm_update(meas, xi, x0, S.alpha_bar(u), S.alpha_bar(u_next), eta, eta_b, noise)
        x = ddim_step(x, xi, S.alpha_bar(t), S.alpha_bar(t_next))   # outer DDIM (η = 0) from the inner x̂0
    return x


@pytest.mark.parametrize("name,sigma_y", [("inpaint", 0.0), ("deblur", 0.2), ("denoise", 0.6)])
def test_nested_ddrm_is_algorithm_3(name, sigma_y):
    op, y = problem(name, sigma_y)
    den = fake_denoiser()
    sampler = ddrm_sampler(den, op, y, sigma_y, outer_steps=3, inner_steps=4)
    out = sampler.sample([7, 8, 9], (3, *SHAPE)).x0
    ref = hand_nested_ddrm(den, op, y, sigma_y, sampler.times, 4, [7, 8, 9])
    assert torch.equal(out, ref)


def test_inner_runs_below_the_top_keep_the_outer_state():
    op, y = problem("sr4", 0.1)
    spy = Spy(fake_denoiser())
    sampler = ddrm_sampler(spy, op, y, 0.1, outer_steps=2, inner_steps=3)
    sampler.sample([1, 2, 3], (3, *SHAPE))
    S = spy.schedule
    # the second inner run's first call sees exactly the outer DDIM state built from the first run's output
    x_T = NoiseSource([1, 2, 3]).randn(SHAPE)
    first = ddrm_sampler(spy.den, op, y, 0.1, outer_steps=1, inner_steps=3).sample([1, 2, 3], (3, *SHAPE)).x0
    t0, t1 = sampler.times[:2]
    x_outer = ddim_step(x_T, first, S.alpha_bar(t0), S.alpha_bar(t1))
    x_seen, t_seen = spy.inputs[3]
    assert t_seen == t1 == 500 and torch.equal(x_seen, x_outer)
    # and the top run's first call did get the y-based initialisation (it is not the raw noise)
    assert spy.inputs[0][1] == 999 and not torch.equal(spy.inputs[0][0], x_T)


def test_top_initialisation_formula_on_inpainting():
    """Pixel-space check (V is a permutation): kept pixels √ᾱ(y + √(σ_T² − σ_y²) z), missing √(1−ᾱ) z."""
    op = Inpainting.random((1, 4, 4), 0.5, 1)
    y = torch.linspace(-1, 1, op.m)[None]
    spy = Spy(fake_denoiser())
    z = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    solver = DDRMSolver(op, y, 0.3, top_t=700)
    ev = next(solver.run(spy, z, 700, 2, NoiseSource([0])))
    a = spy.schedule.alpha_bar(700)
    sig = ve_sigma(a)
    x_in = spy.inputs[0][0].reshape(-1)
    keep = op.keep.reshape(-1)
    torch.testing.assert_close(x_in[keep], math.sqrt(a) * (y[0] + math.sqrt(sig ** 2 - 0.09) * z.reshape(-1)[keep]))
    torch.testing.assert_close(x_in[~keep], math.sqrt(1 - a) * z.reshape(-1)[~keep])
    assert ev.kind == "preview" and ev.t == 700
    # below top_t the state is passed on untouched; "reinit_measured" redraws only the measured pixels
    spy.inputs.clear()
    next(DDRMSolver(op, y, 0.3, top_t=701).run(spy, z, 700, 2, NoiseSource([0])))
    assert torch.equal(spy.inputs[0][0], z)
    spy.inputs.clear()
    next(DDRMSolver(op, y, 0.3, top_t=701, intermediate_init="reinit_measured").run(spy, z, 700, 2,
                                                                                      NoiseSource([0])))
    x_re = spy.inputs[0][0].reshape(-1)
    assert torch.equal(x_re[~keep], z.reshape(-1)[~keep]) and not torch.equal(x_re[keep], z.reshape(-1)[keep])


def test_budget_and_deadline_work_for_nested_ddrm():
    op, y = problem("inpaint", 0.0)
    sampler = ddrm_sampler(fake_denoiser(), op, y, 0.0, outer_steps=3, inner_steps=4)
    ups = list(sampler.stream([0, 1, 2], (3, *SHAPE), max_nfe=9))
    assert ups[-1].nfe == 8 and ups[-1].source == "inner_result"
    with pytest.raises(TimeoutError):
        sampler.sample([0, 1, 2], (3, *SHAPE), deadline=1e-9)


class Exploding:
    schedule = fake_denoiser().schedule

    def __call__(self, *a, **k):
        raise AssertionError("the model must not be called on bad input")


@pytest.mark.parametrize("call,exc,match", [
    (lambda op, y: DDRMSolver(op, y, -0.1), ValueError, r"sigma_y: .* ≥ 0 .*got -0.1"),
    (lambda op, y: ddrm_restore(Exploding(), op, y, -1.0), ValueError, "sigma_y"),
    (lambda op, y: ddrm_sampler(Exploding(), op, y, float("nan")), ValueError, "sigma_y"),
    (lambda op, y: DDRMSolver(op, y, 0.1, eta=1.5), ValueError, r"eta: must be a number in \[0, 1\]"),
    (lambda op, y: DDRMSolver(op, y, 0.1, eta_b=-0.1), ValueError, "eta_b"),
    (lambda op, y: DDRMSolver(op, y[:, :5], 0.1), ValueError, r"y: .*expects \(B, 8\)"),
    (lambda op, y: DDRMSolver("sr", y, 0.1), TypeError, "operator: expected an SVDOperator"),
    (lambda op, y: DDRMSolver(op, y, 0.1, intermediate_init="reinit"), ValueError, "intermediate_init"),
    (lambda op, y: ddrm_restore(Exploding(), op, y, 0.1, seeds=[1, 2]), ValueError, "seeds: 2 seeds for 3"),
    (lambda op, y: ddrm_restore(Exploding(), op, y, 0.1, t_start=1000), ValueError, r"t_start: must lie in"),
    (lambda op, y: ddrm_restore(Exploding(), op, y, 0.1, x_T=torch.zeros(3, 1, 8, 8)), ValueError,
     r"x: the operator works on images of shape \(2, 8, 8\)"),
    (lambda op, y: ddrm_sampler(Exploding(), op, y, 0.1, 2, 3).sample([0, 1], (2, *SHAPE)), ValueError,
     "y: 3 measurements for a batch of 2"),
    (lambda op, y: NestedSampler(Exploding(), 1, 2, inner_solver=DDRMSolver(op, y, 0.1, top_t=5000)).sample(
        [0, 1, 2], (3, *SHAPE)), ValueError, "top_t: 5000 exceeds"),
    (lambda op, y: ddrm_restore(Exploding(), op, y * float("inf"), 0.1), ValueError, "y: the measurement"),
])
def test_bad_input_raises_before_any_model_call(call, exc, match):
    op, y = problem("sr4", 0.1)
    with pytest.raises(exc, match=match):
        call(op, y)


def test_clipping_denoiser_triggers_a_warning():
    op, y = problem("sr4", 0.0)
    den = ModelDenoiser(SmoothEps(), "linear", "epsilon", clip_x0=1.0)
    with pytest.warns(UserWarning, match="clip_x0=None"):
        ddrm_restore(den, op, y, 0.0, steps=2, seeds=[0, 1, 2])


def test_same_seed_same_restoration_whatever_the_batch():
    op, y = problem("inpaint", 0.2)
    den = fake_denoiser()
    full = ddrm_sampler(den, op, y, 0.2, 2, 3).sample([10, 11, 12], (3, *SHAPE)).x0
    one = ddrm_sampler(den, op, y[1:2], 0.2, 2, 3).sample([11], (1, *SHAPE)).x0
    torch.testing.assert_close(one[0], full[1], rtol=0, atol=1e-6)
