"""Named nested schedules (core.schedules) and NestedSampler.from_schedule."""
import pytest
import torch

from nested_diffusion import GaussianMixtureDenoiser, NestedSampler, make_schedule, schedule_names


def mixture():
    return GaussianMixtureDenoiser(torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), [0.2, 0.3], [0.6, 0.4], schedule="cosine")


def test_progressive_splits_the_budget_into_quick_runs_then_one_long_run():
    s = make_schedule("progressive", 100, 999)
    assert s.inner_steps == (20, 20, 60) and s.outer_times == (999, 899, 799) and s.inner_total == 100
    s = make_schedule("progressive", 200, 999, first=10, quick=3, gap=0.05)
    assert s.inner_steps == (10, 10, 10, 170) and s.outer_times == (999, 949, 899, 849)
    assert make_schedule("uniform", 100, 999, outer=4).inner_steps == (25,) * 4
    assert set(schedule_names()) >= {"uniform", "progressive", "ramp"}


def test_ramp_doubles_the_quick_runs():
    s = make_schedule("ramp", 100, 999)
    assert (s.name, s.inner_steps, s.outer_times) == ("ramp", (10, 20, 70), (999, 899, 799))
    assert make_schedule("ramp", 200, 999, first=20).inner_steps == (20, 40, 140)
    assert make_schedule("ramp", 28, 1.0, first=4).outer_times == pytest.approx((1.0, 0.9, 0.8))   # flow times
    with pytest.raises(ValueError, match="budget: 30 NFE leave nothing for the final run after 2 quick runs of "
                                         "10\+20 steps"):
        make_schedule("ramp", 30, 999)


@pytest.mark.parametrize("args, message", [
    (("progressive", 40, 999), "leave nothing for the final run"),
    (("uniform", 99, 999), "do not split evenly"),
    (("warp", 100, 999), "unknown schedule 'warp'"),
    (("progressive", 100, 999, {"gap": 0.6}), "gap"),
    (("progressive", 100, 2), "too small"),
    (("progressive", 0, 999), "budget: must be ≥ 1"),
    (("progressive", 100, 999, {"outer": 5}), "schedule 'progressive'"),
])
def test_bad_schedules_name_the_argument(args, message):
    *pos, opts = args if isinstance(args[-1], dict) else (*args, {})
    with pytest.raises(ValueError, match=message):
        make_schedule(*pos, **opts)


def test_from_schedule_is_the_explicit_sampler_and_samples_the_same():
    den = mixture()
    a = NestedSampler.from_schedule(den, "progressive", 30, "ddim", first=5)
    b = NestedSampler(den, 3, [5, 5, 20], "ddim", outer_times=[999, 899, 799])
    assert a.times == b.times == [999, 899, 799, -1] and a.total_nfe == 30
    assert a.calibration_settings() == b.calibration_settings()
    xa = a.sample([0, 1, 2], (3, 2)).x0
    assert torch.equal(xa, b.sample([0, 1, 2], (3, 2)).x0)
    ups = list(a.stream([0], (1, 2)))
    finished = [u.nfe for u in ups if u.source == "inner_result"]
    assert finished == [5, 10, 30]  # first finished image after `first` NFE, then the long run's end
    with pytest.raises(ValueError, match="needs a budget"):
        NestedSampler.from_schedule(den, "progressive")
    with pytest.raises(ValueError, match="budget: only with a schedule given by name"):
        NestedSampler.from_schedule(den, make_schedule("uniform", 30, 999), budget=30)
