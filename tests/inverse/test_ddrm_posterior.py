"""DDRM against closed forms, with exact denoisers (analytic.GaussianMixtureDenoiser) on tiny images.

What DDRM (η = 0.85, η_b = 1) targets, and therefore what is checked:
* With an isotropic Gaussian prior N(μ, p² I) the exact denoiser acts identically on every spectral component, so
  DDRM splits into independent scalar chains, one per component of x̄ = Vᵀx. For a fixed y the output is
  Gaussian and its mean and variance per component follow from a scalar recursion of DDRM's equations
  (``ddrm_moments`` below: written per component in VE units, independently of the operator/VP code path).
  (1) The implementation's empirical mean and covariance (N samples) must match that law within 5 standard
      errors, for every operator and all three spectral cases (σ_y = 0 and σ_y > 0).
* DDRM is not an exact posterior sampler. For σ_y = 0 the exact posterior is: measured components = ȳ,
  null-space components ~ N(μ̄, p²). DDRM reproduces the posterior *mean*, but its null space is under-dispersed:
  with η = 0.85 the injected noise ησ′ makes each step close to "x̂0 plus fresh noise" (variance ratio 0.57 at
  20 steps, still 0.75 at 1000 steps, by the recursion). With η = 0 (DDIM-like) the ratio tends to 1.
  (2) σ_y = 0: mean within MC error + 0.01 p of the posterior mean; null-space variance ratio in [0.5, 0.65];
      measured components within ~σ_{t=0} of ȳ (the output is x̂0 at t = 0, with no final projection).
  (3) η = 0, 250 steps: null-space variance ratio within [0.94, 1.01] of the exact posterior's.
  For σ_y > 0 DDRM shrinks differently from the posterior (e.g. weight 0.73 on ȳ vs the posterior's 0.86 for
  σ_y = 0.2, p = 0.5, 20 steps); only (1) is asserted there.
* Colorization with a two-colour Gaussian-mixture prior whose gray levels differ: the exact posterior picks the
  right colour with probability ≈ 1; DDRM (a replacement-type method) does so for most but not all samples
  (measured 0.915, N = 2000). (4) asserts ≥ 0.85 (ignoring y would give 0.5) and the consistency ‖Hx̂ − y‖.
"""
import math

import pytest
import torch

from nested_diffusion import GaussianMixtureDenoiser, NoiseSchedule, NoiseSource
from nested_diffusion.inverse import (Colorization, Deblurring, Denoising, Inpainting, SuperResolution,
                                      consistency, consistency_rms, ddrm_grid, ddrm_restore, ddrm_sampler,
                                      uniform_kernel)

S = NoiseSchedule.from_name("linear")   # DDRM's schedule: σ at t = 0 is √((1−ᾱ_0)/ᾱ_0) = 0.0100
P = 0.5                                 # prior std


class BatchNoise(NoiseSource):
    """One generator for a whole (large) batch: fast Monte Carlo (per-sample streams are not needed here)."""

    def __init__(self, batch: int, seed: int):
        super().__init__([seed], dtype=torch.float64)
        self.B, self.g = batch, torch.Generator().manual_seed(seed)

    @property
    def batch_size(self):
        return self.B

    def randn(self, shape):
        return torch.randn((self.B, *shape), generator=self.g, dtype=torch.float64)

    def randn_like(self, x):
        return torch.randn(x.shape, generator=self.g, dtype=x.dtype)


def sig(t):
    a = S.alpha_bar(t)
    return 0.0 if a >= 1 else math.sqrt((1 - a) / a)


def ddrm_moments(times, m0, s, sy, ybar, eta, eta_b):
    """Mean and variance of DDRM's output for one spectral component (prior N(m0, P²), singular value s, for a
    fixed ȳ = (Uᵀy)/s), by propagating the Gaussian law of the VE state x̃ through DDRM's steps."""
    st = sig(times[0])
    M, V = (ybar, st ** 2 - sy ** 2 / s ** 2) if s > 0 and s * st > sy else (0.0, st ** 2)   # DDRM init
    for t, tn in zip(times[:-1], times[1:]):
        sc, sn = sig(t), sig(tn)
        g = P ** 2 / (P ** 2 + sc ** 2)          # exact denoiser: x̄0 = (1−g) m0 + g x̃
        if sn == 0:
            return (1 - g) * m0 + g * M, g * g * V
        c = math.sqrt(1 - eta ** 2) * sn
        if s > 0 and s * sn > sy:                # noisier than y
            al, be, add = (1 - eta_b) * g, (1 - eta_b) * (1 - g) * m0 + eta_b * ybar, sn ** 2 - (eta_b * sy / s) ** 2
        elif s > 0 and s * sn < sy:              # less noisy than y: x̄0 + c (ȳ − x̄0)/τ + η σ′ z
            tau = sy / s
            al, be, add = g * (1 - c / tau), (1 - g) * m0 * (1 - c / tau) + c * ybar / tau, (eta * sn) ** 2
        else:                                    # missing: x̄0 + c ε̄ + η σ′ z, ε̄ = (x̃ − x̄0)/σ
            al, be, add = g + c * (1 - g) / sc, (1 - g) * m0 * (1 - c / sc), (eta * sn) ** 2
        M, V = al * M + be, al * al * V + add


def gaussian_problem(op, sigma_y, seed=1):
    g = torch.Generator().manual_seed(seed)
    mu = 0.5 * torch.randn(op.n, generator=g, dtype=torch.float64)
    x = mu + P * torch.randn(op.n, generator=g, dtype=torch.float64)
    y = op.H(x[None]) + sigma_y * torch.randn(1, op.m, generator=g, dtype=torch.float64)
    return GaussianMixtureDenoiser(mu[None], [P], schedule=S), mu, y


def predicted_law(op, mu, y, sigma_y, steps, eta, eta_b):
    """Per spectral component: DDRM's mean/variance (recursion) and the exact posterior's."""
    s = op.add_zeros(op.singulars()[None])[0]
    uty, mub = op.add_zeros(op.Ut(y))[0], op.Vt(mu[None])[0]
    times = ddrm_grid(S.num_train_timesteps - 1, steps)
    out = []
    for i in range(op.n):
        si, m0 = float(s[i]), float(mub[i])
        yb = float(uty[i]) / si if si > 0 else 0.0
        dm, dv = ddrm_moments(times, m0, si, sigma_y, yb, eta, eta_b)
        if si == 0:
            pm, pv = m0, P ** 2
        elif sigma_y == 0:
            pm, pv = yb, 0.0
        else:
            prec = 1 / P ** 2 + si ** 2 / sigma_y ** 2
            pm, pv = (m0 / P ** 2 + yb * si ** 2 / sigma_y ** 2) / prec, 1 / prec
        out.append((dm, dv, pm, pv))
    return [torch.tensor(c, dtype=torch.float64) for c in zip(*out)] + [s]


CASES = {  # operator, σ_y, η, η_b
    "sr2": (lambda: SuperResolution((2, 4, 4), 2), 0.0, 0.85, 1.0),
    "inpaint": (lambda: Inpainting.random((2, 4, 4), 0.5, 0), 0.0, 0.85, 1.0),
    "inpaint_noisy": (lambda: Inpainting.random((2, 4, 4), 0.5, 0), 0.2, 0.85, 1.0),
    "denoise": (lambda: Denoising((2, 4, 4)), 0.5, 0.85, 1.0),
    "colorize": (lambda: Colorization((3, 4, 4)), 0.0, 0.85, 1.0),
    "deblur_noisy": (lambda: Deblurring((1, 6, 6), uniform_kernel(3), zero_below=0.1), 0.05, 0.85, 1.0),
    "sr2_noisy_other_etas": (lambda: SuperResolution((2, 4, 4), 2), 0.1, 0.4, 0.6),
    "denoise_other_etas": (lambda: Denoising((2, 4, 4)), 0.3, 0.4, 0.3),   # sensitive to η_b in the noisier case
}


@pytest.mark.parametrize("case", list(CASES))
def test_ddrm_output_law_and_posterior_on_a_gaussian_prior(case):
    make, sigma_y, eta, eta_b = CASES[case]
    op = make()
    den, mu, y = gaussian_problem(op, sigma_y)
    N, steps = 4000, 20
    out = ddrm_restore(den, op, y.expand(N, -1).clone(), sigma_y, steps=steps, seeds=BatchNoise(N, 0), eta=eta,
                       eta_b=eta_b)
    xb = op.Vt(out.reshape(N, -1))                       # spectral coordinates of the restorations
    dm, dv, pm, pv, s = predicted_law(op, mu, y, sigma_y, steps, eta, eta_b)
    # (1) the law of DDRM's output: mean and full covariance (diagonal in the V basis)
    emp_m, emp_c = xb.mean(0), torch.cov(xb.T)
    assert bool(((emp_m - dm).abs() <= 5 * (dv / N).sqrt()).all())
    C = torch.diag(dv)
    se = ((dv[:, None] * dv[None, :] + C ** 2) / N).sqrt()
    assert bool(((emp_c - C).abs() <= 5 * se).all())
    # the regimes are exercised: sizeable null-space variance, and for σ_y > 0 a non-trivial measured law
    assert not bool((s == 0).any()) or float(dv[s == 0].min()) > 0.1
    if sigma_y == 0:
        # (2) posterior mean, under-dispersed null space, measured components pinned to ȳ up to σ_{t=0}
        assert bool(((emp_m - pm).abs() <= 5 * (dv / N).sqrt() + 0.01 * P).all())
        ratio = emp_c.diagonal()[s == 0] / pv[s == 0]
        assert 0.5 <= float(ratio.min()) and float(ratio.max()) <= 0.65
        assert float(emp_c.diagonal()[s > 0].max()) <= (2 * sig(0)) ** 2
        # consistency: E‖Hx̂ − y‖² = Σ_measured s² (var + bias²), and it is tiny next to the prior scale
        res2 = consistency(op, out, y.expand(N, -1)).pow(2).mean()
        pred = (s ** 2 * (dv + (dm - pm) ** 2))[s > 0].sum()
        assert abs(float(res2 / pred) - 1) < 0.1
        assert float(consistency_rms(op, out, y.expand(N, -1)).mean()) < 2 * sig(0)


def test_eta_zero_with_many_steps_reaches_the_exact_null_space_variance():
    op = SuperResolution((2, 4, 4), 2)
    den, mu, y = gaussian_problem(op, 0.0, seed=3)
    N, steps = 1000, 250
    out = ddrm_restore(den, op, y.expand(N, -1).clone(), 0.0, steps=steps, seeds=BatchNoise(N, 1), eta=0.0)
    xb = op.Vt(out.reshape(N, -1))[:, op.m:]           # the 24 null-space components
    ratio = float(xb.var(0).mean() / P ** 2)
    dm, dv, pm, pv, s = predicted_law(op, mu, y, 0.0, steps, 0.0, 1.0)
    assert 0.94 <= ratio <= 1.01 and 0.97 < float(dv[s == 0].mean() / P ** 2) < 0.99   # recursion: 0.977
    torch.testing.assert_close(xb.mean(0), op.Vt(mu[None])[0, op.m:], rtol=0, atol=5 * P / math.sqrt(N))


def test_colorization_with_a_two_colour_mixture_prior_uses_the_gray_levels():
    op = Colorization((3, 4, 4))
    pattern = 0.1 * torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    red = (torch.tensor([0.6, 0.0, -0.6], dtype=torch.float64)[:, None, None] + pattern).reshape(-1)
    blue = (torch.tensor([-0.3, 0.1, 0.5], dtype=torch.float64)[:, None, None] + pattern).reshape(-1)
    blue = blue - op.H(blue[None]).repeat(1, 3)[0] + op.H(red[None]).repeat(1, 3)[0] + 0.6   # gray: red's + 0.6
    p = 0.15
    den = GaussianMixtureDenoiser(torch.stack([red, blue]), [p, p], [0.5, 0.5], schedule=S)
    x = red + p * torch.randn(48, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = op.H(x[None])
    # exact posterior: y | k ~ N(H μ_k, p² H Hᵀ) with H Hᵀ = I/3; components: measured = ȳ, chroma = μ_k's
    ll = torch.stack([-0.5 * ((y - op.H(m[None])) ** 2).sum() / (p * p / 3) for m in (red, blue)])
    assert float(torch.softmax(ll, 0)[0]) > 0.999
    N = 2000
    out = ddrm_restore(den, op, y.expand(N, -1).clone(), 0.0, steps=20, seeds=BatchNoise(N, 0)).reshape(N, -1)
    post = [op.V(torch.cat([op.Ut(y) / op.singulars(), op.Vt(m[None])[:, op.m:]], 1))[0] for m in (red, blue)]
    is_red = (out - post[0]).norm(dim=1) < (out - post[1]).norm(dim=1)
    frac = float(is_red.double().mean())
    assert 0.85 <= frac < 1.0          # measured 0.915; the exact posterior gives ≈ 1, ignoring y gives 0.5
    # the red restorations have the posterior's colours (channel means per pixel) and keep the gray levels
    red_mean = out[is_red].mean(0).reshape(3, 16).mean(1)
    torch.testing.assert_close(red_mean, post[0].reshape(3, 16).mean(1), rtol=0, atol=0.03)
    rms = consistency_rms(op, out, y.expand(N, -1))
    assert float(rms.max()) < 3 * sig(0) / math.sqrt(3)     # ≈ s·σ_{t=0} with s = 1/√3; no final projection


def test_nested_ddrm_on_a_gaussian_prior_stays_close_to_vanilla():
    """Nesting changes the law only mildly (the notes' toy check): 3×7 nested vs vanilla DDRM-21."""
    op = Inpainting.random((2, 4, 4), 0.5, 0)
    den, mu, y = gaussian_problem(op, 0.0)
    N = 2000
    van = ddrm_restore(den, op, y.expand(N, -1).clone(), 0.0, steps=21, seeds=BatchNoise(N, 0))
    nested = ddrm_sampler(den, op, y.expand(N, -1).clone(), 0.0, 3, 7).sample(BatchNoise(N, 1), (N, 2, 4, 4),
                                                                              dtype=torch.float64).x0
    vb, nb = op.Vt(van.reshape(N, -1))[:, op.m:], op.Vt(nested.reshape(N, -1))[:, op.m:]
    torch.testing.assert_close(nb.mean(0), op.Vt(mu[None])[0, op.m:], rtol=0, atol=5 * P / math.sqrt(N))
    r = float(nb.var(0).mean() / vb.var(0).mean())
    assert 0.8 < r < 1.25
    torch.testing.assert_close(op.H(nested), y.expand(N, -1), rtol=0, atol=5 * sig(0))
