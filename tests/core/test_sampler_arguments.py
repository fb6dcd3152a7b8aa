"""Bad input gets one clear error naming the argument and what is valid."""
import pytest
import torch

from nested_diffusion import (ClassifierFreeGuidance, GaussianMixtureDenoiser, ModelDenoiser, NestedSampler,
                              NoiseSchedule, NonFiniteOutputError, get_solver)


@pytest.fixture
def den():
    return GaussianMixtureDenoiser(torch.zeros(1, 2), [1.0], schedule="linear")


@pytest.mark.parametrize("kwargs,match", [
    (dict(outer_steps=0, inner_steps=5), r"outer_steps: must be ≥ 1, got 0"),
    (dict(outer_steps=3, inner_steps=0), r"inner_steps: must be ≥ 1, got 0"),
    (dict(outer_steps=3, inner_steps=[2, -1, 2]), r"inner_steps: must be ≥ 1, got -1"),
    (dict(outer_steps=3, inner_steps=[2, 2]), r"inner_steps: a list needs one entry per outer step \(3\), got 2"),
    (dict(outer_steps=10, inner_steps=200), r"inner_steps: 200 inner steps in outer step 10 of 10 \(its inner run starts at t=100\) exceed"),
    (dict(outer_steps=1000, inner_steps=1), r"outer_steps: 1000 steps do not fit .* at most 999"),
    (dict(outer_steps=2, inner_steps=5, inner_solver="euler"), r"solver: unknown solver 'euler'; valid: ddim"),
    (dict(outer_steps=2, inner_steps=5, inner_eta=-0.1), r"eta: must be a finite number ≥ 0, got -0.1"),
    (dict(outer_steps=2, inner_steps=5, outer_eta=-1), r"outer_eta: must be a finite number ≥ 0, got -1"),
    (dict(outer_steps=2, inner_steps=5, outer_eta="sqrt"), r"outer_eta: unknown rule 'sqrt'"),
    (dict(outer_steps=2, inner_steps=5, grid="fancy"), r"grid: unknown convention 'fancy'"),
    (dict(outer_steps=2, inner_steps=5, inner_solver="dpmpp_2m", inner_eta=0.5), r"eta: only the DDIM solver"),
])
def test_sampler_arguments(den, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        NestedSampler(den, **kwargs)


def test_non_integer_steps(den):
    with pytest.raises(TypeError, match="outer_steps: expected an integer, got float"):
        NestedSampler(den, 2.5, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_nfe=0), r"max_nfe: must be an integer ≥ 1 \(one NFE is the smallest budget\), got 0"),
    (dict(max_nfe=0.5), r"max_nfe: must be an integer ≥ 1"),
    (dict(deadline=0), r"deadline: must be a positive number of seconds, got 0"),
    (dict(previews="some"), r"previews: 'some' is not valid"),
])
def test_stream_arguments(den, kwargs, match):
    s = NestedSampler(den, 2, 3)
    with pytest.raises(ValueError, match=match):
        list(s.stream(range(2), (2, 2), **kwargs))


def test_seed_count_must_match_batch(den):
    with pytest.raises(ValueError, match="seeds: 3 seeds for a batch of 2"):
        list(NestedSampler(den, 2, 3).stream([1, 2, 3], (2, 2)))


def test_unknown_schedule_and_prediction_type():
    with pytest.raises(ValueError, match="schedule: unknown name 'quadratic'; valid names are linear"):
        NoiseSchedule.from_name("quadratic")
    with pytest.raises(ValueError, match="prediction_type: 'flow' is not valid"):
        ModelDenoiser(lambda x, t, c: x, "linear", "flow")
    with pytest.raises(ValueError, match="guidance_scale: must be a finite number ≥ 0"):
        ClassifierFreeGuidance(lambda x, t, c: x, -2.0, 0)
    with pytest.raises(TypeError, match="solver: expected a Solver or a name"):
        get_solver(3)


def test_wrong_shape_and_dtype_from_model():
    bad_shape = ModelDenoiser(lambda x, t, c: x[:, :1], "linear", "epsilon")
    with pytest.raises(ValueError, match=r"model output: expected shape \(2, 3, 4, 4\) at t=999, got \(2, 1, 4, 4\)"):
        NestedSampler(bad_shape, 2, 2).sample(range(2), (2, 3, 4, 4))
    bad_dtype = ModelDenoiser(lambda x, t, c: x.long(), "linear", "epsilon")
    with pytest.raises(TypeError, match="model output: expected a floating-point tensor at t=999, got torch.int64"):
        NestedSampler(bad_dtype, 2, 2).sample(range(2), (2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"expected shape \(2, 6, 4, 4\)"):  # learned variance needs 2·C channels
        NestedSampler(ModelDenoiser(lambda x, t, c: x, "linear", "v", learned_variance=True), 1, 2).sample(
            range(2), (2, 3, 4, 4))


def test_nan_from_model_is_reported_with_its_step():
    def net(x, t, c):
        return torch.full_like(x, float("nan")) if int(t[0]) < 400 else torch.zeros_like(x)
    s = NestedSampler(ModelDenoiser(net, "linear", "epsilon"), 3, 4)
    with pytest.raises(NonFiniteOutputError, match=r"outer step 1/3, after 3 NFE\) at timestep t=250"):
        s.sample(range(2), (2, 1, 2, 2))
