"""'Fill the silent middle': a later inner run shows its x̂0 from FILL_FROM of its calls on (previews="fill", opt-in:
the measured trade is in docs/RESULTS.md); one rule (core.nested.preview_shown) for every stream."""
import math

import pytest
import torch

from nested_diffusion import GaussianMixtureDenoiser, NestedSampler
from nested_diffusion.core.nested import FILL_FROM, calibration_settings, default_previews, preview_shown


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixtureDenoiser(torch.tensor([[2.0, 0.0], [-2.0, 1.0]]), [0.3, 0.5], [0.4, 0.6],
                                   schedule="linear")


def test_the_default_mode_is_first_for_every_schedule():
    for steps in ([20, 20, 60], [20] * 5, [100], [10, 20, 70]):
        assert default_previews(steps) == "first"
    assert 0 < FILL_FROM < 1


def test_fill_shows_the_long_runs_predictions_from_its_fraction_on(mixture):
    s = NestedSampler(mixture, inner_steps=[5, 5, 40], outer_times=[999, 899, 799], inner_solver="ddpm")
    assert s.default_previews == "first"
    ups = list(s.stream(range(4), (4, 2), previews="fill"))
    start = 10 + math.ceil(FILL_FROM * 40)
    fills = [u for u in ups if u.outer_step == 3 and u.source == "x0_preview"]
    assert [u.nfe for u in fills] == list(range(start, 50))
    assert [u.nfe for u in ups if u.source == "inner_result"] == [5, 10, 50]
    assert [u.nfe for u in ups if u.outer_step == 2] == list(range(5 + math.ceil(FILL_FROM * 5), 11))
    # the shown x̂0 is the run's own prediction (what previews="all" shows at that NFE), never a noisy state
    every = {u.nfe: u.x0 for u in s.stream(range(4), (4, 2), previews="all")}
    for u in fills:
        torch.testing.assert_close(u.x0, every[u.nfe], rtol=0, atol=0)
    first = [u.nfe for u in s.stream(range(4), (4, 2))]         # the default
    assert first == [1, 2, 3, 4, 5, 10, 50]


def test_one_rule_for_every_stream():
    assert preview_shown("first", 0, 3, 20) and not preview_shown("first", 1, 19, 20)
    assert preview_shown("all", 2, 1, 60) and not preview_shown("none", 0, 1, 20)
    assert not preview_shown("fill", 2, math.ceil(FILL_FROM * 60) - 1, 60)
    assert preview_shown("fill", 2, math.ceil(FILL_FROM * 60), 60)
    assert not preview_shown("first", 1, 19, 20)


def test_a_calibration_is_for_the_mode_the_run_shows():
    from nested_diffusion.bundled import RUN_DEFAULTS
    from nested_diffusion.core.run import resolve_run
    run = resolve_run(defaults=RUN_DEFAULTS)
    assert calibration_settings(run, 1000)["previews"] == default_previews(list(run.inner_steps))
    assert calibration_settings(run, 1000, "first")["previews"] == "first"


def test_generate_takes_previews(tmp_path):
    import json

    from nested_diffusion import cli
    out = tmp_path / "fill"
    assert cli.main(["generate", "--out", str(out), "--classes", "1", "--schedule", "progressive", "--nfe", "60",
                     "--first", "10", "--previews",
                     "fill", "--quiet"]) == 0
    doc = json.loads((out / "updates.json").read_text())
    last_run = [u for u in doc["updates"] if u["outer_step"] == 3]
    assert [u["source"] for u in last_run][-1] == "inner_result" and len(last_run) == 1 + 40 - math.ceil(FILL_FROM * 40)
    assert doc["settings"]["calibration"] is None        # the shipped calibrations are for previews "first"
