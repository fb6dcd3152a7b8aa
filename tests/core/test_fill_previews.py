"""'Fill the silent middle': a long later inner run shows its x̂0 from FILL_FROM of its calls on (previews="fill"),
the default for schedules with a long last run; one rule (core.nested.preview_shown) for every stream."""
import math

import pytest
import torch

from nested_diffusion import GaussianMixtureDenoiser, NestedSampler
from nested_diffusion.core.nested import FILL_FROM, FILL_MIN_NFE, calibration_settings, default_previews, \
    preview_shown


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixtureDenoiser(torch.tensor([[2.0, 0.0], [-2.0, 1.0]]), [0.3, 0.5], [0.4, 0.6],
                                   schedule="linear")


def test_the_default_mode_follows_the_schedule():
    assert default_previews([20, 20, 60]) == "fill"         # progressive: a long last run
    assert default_previews([20] * 5) == "first"            # the paper's uniform split
    assert default_previews([100]) == "first"               # vanilla: every x̂0 is shown anyway
    assert default_previews([30, 30]) == "first"            # last run not twice the first
    assert default_previews([10, 30]) == "first"            # shorter than FILL_MIN_NFE
    assert FILL_MIN_NFE == 40 and 0 < FILL_FROM < 1


def test_fill_shows_the_long_runs_predictions_from_its_fraction_on(mixture):
    s = NestedSampler(mixture, inner_steps=[5, 5, 40], outer_times=[999, 899, 799], inner_solver="ddpm")
    assert s.default_previews == "fill"
    ups = list(s.stream(range(4), (4, 2)))                   # the default: fill
    start = 10 + math.ceil(FILL_FROM * 40)
    fills = [u for u in ups if u.outer_step == 3 and u.source == "x0_preview"]
    assert [u.nfe for u in fills] == list(range(start, 50))
    assert [u.nfe for u in ups if u.source == "inner_result"] == [5, 10, 50]
    assert [u.nfe for u in ups if u.outer_step == 2] == [10]  # the short second run keeps its result
    # the shown x̂0 is the run's own prediction (what previews="all" shows at that NFE), never a noisy state
    every = {u.nfe: u.x0 for u in s.stream(range(4), (4, 2), previews="all")}
    for u in fills:
        torch.testing.assert_close(u.x0, every[u.nfe], rtol=0, atol=0)
    first = [u.nfe for u in s.stream(range(4), (4, 2), previews="first")]
    assert first == [1, 2, 3, 4, 5, 10, 50]


def test_one_rule_for_every_stream():
    assert preview_shown("first", 0, 3, 20) and not preview_shown("first", 1, 19, 20)
    assert preview_shown("all", 2, 1, 60) and not preview_shown("none", 0, 1, 20)
    assert not preview_shown("fill", 2, math.ceil(FILL_FROM * 60) - 1, 60)
    assert preview_shown("fill", 2, math.ceil(FILL_FROM * 60), 60)
    assert not preview_shown("fill", 1, 19, 20)             # a short run: no fill


def test_a_calibration_is_for_the_mode_the_run_shows():
    from nested_diffusion.bundled import RUN_DEFAULTS
    from nested_diffusion.core.run import resolve_run
    run = resolve_run(defaults=RUN_DEFAULTS)
    assert calibration_settings(run, 1000)["previews"] == default_previews(list(run.inner_steps))
    assert calibration_settings(run, 1000, "first")["previews"] == "first"
