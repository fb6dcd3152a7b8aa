"""The anytime AUC (supplementary §A): the formula, the step-function semantics, and which update is current."""
import math

import pytest
import torch

from nested_diffusion import GaussianMixtureDenoiser, NestedSampler
from nested_diffusion.evaluation.auc import (UpdateSchedule, anytime_auc, current_update, nfe_marks, parse_configs,
                                             values_at_marks)


def integral_of_step_function(fd_at, total, step, dx=0.01):
    """Independent check: midpoint-rule integral over (0, N] of ln F(⌈x/Δ⌉Δ) (right-closed bins)."""
    k = int(round(total / dx))
    return sum(math.log(fd_at(math.ceil(((j + 0.5) * dx) / step) * step)) for j in range(k)) * dx


def test_auc_is_the_integral_of_the_log_step_function():
    fd = {n: 300 * math.exp(-n / 40) + 2 for n in range(10, 201, 10)}     # a vanilla-like decreasing curve
    auc = anytime_auc(fd, 200)
    assert auc == pytest.approx(integral_of_step_function(fd.__getitem__, 200, 10), rel=1e-9)
    assert auc == pytest.approx(10 * sum(math.log(v) for v in fd.values()), rel=1e-12)
    # natural log, not log10; Δ multiplies; no n = 0 term
    assert auc != pytest.approx(10 * sum(math.log10(v) for v in fd.values()))
    coarse = anytime_auc(fd, 200, step=20)                              # another grid: Δ = 20 over 20..200
    assert coarse == pytest.approx(integral_of_step_function(fd.__getitem__, 200, 20), rel=1e-9)
    assert anytime_auc(lambda n: math.e, 200) == pytest.approx(200.0)   # constant F = e → N
    assert anytime_auc(lambda n: 1.0, 200) == 0.0


def test_auc_of_the_published_nested_5x40_outputs():
    """Table 3's nested column at 200 NFE (= the 5×40 split) over NFE 40..200: each output holds for the four
    10-NFE bins until the next inner run ends; hand sum 10·(4 ln 4.58 + 4 ln 3.70 + 4 ln 2.96 + 4 ln 2.54 + ln 2.35)."""
    outs = {40: 4.58, 80: 3.70, 120: 2.96, 160: 2.54, 200: 2.35}
    sched = UpdateSchedule.grid(5, 40)
    fd = {n: outs[sched.current(n).nfe] for n in range(40, 201, 10)}
    part = 10 * sum(math.log(fd[n]) for n in range(40, 201, 10))
    assert part == pytest.approx(202.44, abs=0.01)
    # Table 1 reports 346.15 for 5×40: the three bins before the first inner run ends (NFE 10..30) then need a
    # geometric-mean FID of exp((346.15 − 202.44)/30) ≈ 120, plausible for early x̂0 previews
    early = math.exp((346.15 - part) / 30)
    assert 100 < early < 140


@pytest.mark.parametrize("bad,match", [
    ({n: 1.0 for n in range(10, 200, 10)}, "no value at NFE 200"),
    ({**{n: 1.0 for n in range(10, 201, 10)}, 50: 0.0}, "distance at NFE 50 is 0.0"),
    ({**{n: 1.0 for n in range(10, 201, 10)}, 70: float("nan")}, "distance at NFE 70 is nan"),
])
def test_auc_rejects_missing_or_non_positive_values(bad, match):
    with pytest.raises(ValueError, match=match):
        anytime_auc(bad, 200)


def test_marks_need_a_whole_number_of_bins():
    assert nfe_marks(200) == list(range(10, 201, 10)) and len(nfe_marks(200)) == 20
    with pytest.raises(ValueError, match="total_nfe: 205 is not a multiple of step=10"):
        nfe_marks(205)
    with pytest.raises(ValueError, match="step: must be an integer ≥ 1, got 0"):
        nfe_marks(200, 0)


def test_vanilla_is_current_at_every_nfe():
    for n in (1, 10, 199):
        u = current_update((1, 200), n)
        assert (u.nfe, u.outer_step, u.inner_step, u.source, u.final) == (n, 1, n, "x0_preview", False)
    u = current_update((1, 200), 200)
    assert (u.nfe, u.source, u.final) == (200, "inner_result", True)


def test_nested_updates_only_at_inner_run_ends():
    s = UpdateSchedule.grid(4, 50)
    assert s.current(10).source == "x0_preview" and s.current(49).nfe == 49
    assert (s.current(50).nfe, s.current(50).outer_step, s.current(50).source) == (50, 1, "inner_result")
    # budgets that fall mid inner run: the last finished inner run is current
    assert [s.current(n).nfe for n in (51, 99, 100, 130, 149, 150, 199, 200, 260)] == \
        [50, 50, 100, 100, 100, 150, 150, 200, 200]
    assert s.current(130).outer_step == 2 and s.current(200).final and not s.current(199).final
    # distinct distances needed on the 10-NFE grid: 10, 20, 30, 40, 50, 100, 150, 200 (notes §6: 8 for 4×50)
    assert sorted(set(s.distinct_at(nfe_marks(200)))) == [10, 20, 30, 40, 50, 100, 150, 200]
    assert len(set(UpdateSchedule.grid(1, 200).distinct_at(nfe_marks(200)))) == 20
    assert UpdateSchedule([3, 5, 2]).update_nfes() == [1, 2, 3, 8, 10]


def test_values_at_marks_is_right_continuous_last_update():
    assert values_at_marks([1, 2, 5, 10], ["a", "b", "c", "d"], [1, 3, 5, 9, 10, 12]) == ["a", "b", "c", "c", "d", "d"]
    with pytest.raises(ValueError, match="no update exists at NFE 1"):
        values_at_marks([2, 4], [0, 1], [1])


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixtureDenoiser(torch.tensor([[0.5, 0.0], [-0.5, 0.3]]), [0.2, 0.3], schedule="linear")


@pytest.mark.parametrize("outer,inner,solver", [(1, 12, "ddim"), (3, 4, "ddim"), (4, 3, "ddpm"), (2, 6, "dpmpp_2s"),
                                                (12, 1, "ddim")])
def test_schedule_matches_the_stream(mixture, outer, inner, solver):
    """current_update(config, n) agrees with what the sampler's anytime stream has produced after n NFEs."""
    sampler = NestedSampler(mixture, outer, inner, solver)
    ups = list(sampler.stream([0, 1], (2, 2)))
    assert [u.nfe for u in ups] == UpdateSchedule.from_sampler(sampler).update_nfes()
    for n in range(1, sampler.total_nfe + 1):
        u = [v for v in ups if v.nfe <= n][-1]
        c = current_update(sampler, n)
        assert (c.nfe, c.outer_step, c.inner_step, c.source, c.final) == \
            (u.nfe, u.outer_step, u.inner_step, u.source, u.final), n


def test_parse_configs():
    assert parse_configs("1x200, 4X50") == [(1, 200), (4, 50)]
    assert parse_configs([(2, 100)]) == [(2, 100)]
    for bad in ("4x", "0x10", "4*50", ""):
        with pytest.raises(ValueError, match="configs:"):
            parse_configs(bad)
    with pytest.raises(TypeError, match="config: expected a NestedSampler"):
        current_update("4x50", 10)
