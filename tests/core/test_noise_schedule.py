import math

import numpy as np
import pytest
import torch

from nested_diffusion import DDIMSolver, GaussianMixtureDenoiser, NoiseSchedule, NoiseSource, get_schedule
from nested_diffusion.core.steps import ddim_step


def test_named_schedules():
    lin = NoiseSchedule.from_name("linear")
    assert lin.num_train_timesteps == 1000 and lin.betas[0] == 1e-4 and math.isclose(lin.betas[-1], 0.02)
    sd = NoiseSchedule.from_name("scaled_linear")
    assert math.isclose(sd.alpha_bar(0), 1 - 0.00085) and math.isclose(sd.betas[-1], 0.012)
    cos = NoiseSchedule.from_name("cosine")
    # IDDPM: ᾱ_t = f(t+1)/f(0) with f(u) = cos²((u/T + s)/(1 + s)·π/2), until β hits its 0.999 cap
    f = lambda u: math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert math.isclose(cos.alpha_bar(t), f(t + 1) / f(0), rel_tol=1e-9)
    assert cos.betas.max() <= 0.999 and cos.alphas_cumprod.dtype == np.float64
    assert lin.alpha_bar(-1) == 1.0


def test_from_diffusers_config_and_betas():
    cfg = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
    np.testing.assert_array_equal(get_schedule(cfg).betas, NoiseSchedule.from_name("scaled_linear").betas)
    cfg2 = {"trained_betas": [0.1, 0.2, 0.3]}
    np.testing.assert_allclose(get_schedule(cfg2).alphas_cumprod, [0.9, 0.72, 0.504])
    with pytest.raises(ValueError, match="betas: every value must lie in"):
        NoiseSchedule(np.array([0.1, 1.5]))
    with pytest.raises(TypeError, match="schedule: expected NoiseSchedule"):
        get_schedule(3)


def test_matches_diffusers_schedulers_when_installed():
    diffusers = pytest.importorskip("diffusers")
    for name, kw in (("linear", {}), ("scaled_linear", dict(beta_start=0.00085, beta_end=0.012)),
                     ("squaredcos_cap_v2", {})):
        ref = diffusers.DDPMScheduler(beta_schedule=name, **kw).alphas_cumprod.double().numpy()
        ours = NoiseSchedule.from_name(name).alphas_cumprod
        np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-12)  # diffusers keeps float32


def test_per_step_eta_list_and_rule():
    gm = GaussianMixtureDenoiser(torch.tensor([[1.0, -1.0]]), [0.5], schedule="linear")
    etas = [0.0, 1.0, 0.3, 0.0]
    noise = NoiseSource([4, 5])
    x = noise.randn((2,))
    out = list(DDIMSolver(etas).run(gm, x, 999, 4, noise))[-1].x0
    ref_noise = NoiseSource([4, 5])
    y = ref_noise.randn((2,))
    S = gm.schedule
    times = [999, 749, 500, 250, -1]
    for eta, t, tn in zip(etas, times[:-1], times[1:]):
        a, an = S.alpha_bar(t), S.alpha_bar(tn)
        z = ref_noise.randn_like(y) if eta > 0 and an < 1 else None
        y = ddim_step(y, gm(y, t).x0, a, an, eta, z)
    torch.testing.assert_close(out, y, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="eta: a per-step list needs 4 values, got 2"):
        list(DDIMSolver([0.1, 0.2]).run(gm, x, 999, 4, noise))
    # the seed's η_t = √(1 − ᾱ_t) rule gives η ≈ 1 at the top of the schedule
    from nested_diffusion.core.eta import resolve_eta
    assert math.isclose(resolve_eta("sqrt_one_minus_alpha_bar", 0, 999, S.alpha_bar(999), 4),
                        math.sqrt(1 - S.alpha_bar(999)))
