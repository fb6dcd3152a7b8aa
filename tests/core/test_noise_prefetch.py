"""NoiseSource with prefetching and worker threads: the same values as one draw per request."""
import pytest
import torch

from nested_diffusion.bundled.factory import bundled_factory
from nested_diffusion.evaluation.snapshots import collect_snapshots
from nested_diffusion.bundled import TinyUNet
from nested_diffusion.core.noise import NoiseSource


@pytest.mark.parametrize("prefetch,workers", [(1, 3), (3, 1), (7, 2), (20, 4)])
def test_prefetched_noise_equals_plain_draws_for_multiples_of_16(prefetch, workers):
    plain = NoiseSource(range(10, 23))
    fast = NoiseSource(range(10, 23), prefetch=prefetch, workers=workers)
    for k in range(25):
        shape = (1, 28, 28) if k % 4 else (4, 4, 2)          # 784 and 32 elements: both multiples of 16
        assert torch.equal(plain.randn(shape), fast.randn(shape)), k


def test_prefetched_noise_is_per_sample_for_other_sizes():
    """Sizes that are not multiples of 16 cut each stream differently, but row i still depends on seed i only."""
    big = NoiseSource([5, 6, 7, 8], prefetch=4, workers=2)
    small = NoiseSource([7], prefetch=4)
    for _ in range(6):
        assert torch.equal(big.randn((3, 5))[2], small.randn((3, 5))[0])


@pytest.mark.parametrize("arg,value", [("prefetch", 0), ("workers", 0), ("prefetch", 1.5), ("workers", True)])
def test_bad_prefetch_settings_are_rejected(arg, value):
    with pytest.raises(ValueError, match=f"{arg}: must be an integer ≥ 1, got {value!r}"):
        NoiseSource([0], **{arg: value})


def test_evaluation_samples_do_not_depend_on_noise_prefetch(tmp_path):
    torch.manual_seed(0)
    unet = TinyUNet(channels=(16, 32)).eval()
    marks = [2, 4, 6]
    plain = collect_snapshots(bundled_factory(unet, 2.0, "ddpm"), 2, 3, 5, 0, marks, tmp_path / "a", chunk=5)
    fast = collect_snapshots(bundled_factory(unet, 2.0, "ddpm", noise_prefetch=8, noise_workers=2), 2, 3, 5, 0,
                             marks, tmp_path / "b", chunk=2)
    assert all(torch.equal(a, b) for a, b in zip(plain.images, fast.images))
