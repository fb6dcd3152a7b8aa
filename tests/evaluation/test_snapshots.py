"""One sampling run per configuration, snapshotted at NFE marks, cached per chunk, resumable."""
import pytest
import torch

from nested_diffusion.evaluation.auc import UpdateSchedule
from nested_diffusion.evaluation.features import quantize
from nested_diffusion.bundled.factory import bundled_factory
from nested_diffusion.evaluation.snapshots import SamplerFactory, collect_snapshots, snapshot_stream
from toy import mixture_images, toy_factory
from nested_diffusion.bundled import TinyUNet

MARKS = list(range(3, 25, 3))   # a 3-NFE grid over 24 NFE: many marks fall inside inner runs


@pytest.mark.parametrize("outer,inner,solver", [(1, 24, "ddim"), (3, 8, "ddim"), (4, 6, "ddpm"), (2, 12, "dpmpp_2s")])
def test_snapshots_equal_separately_budgeted_runs(outer, inner, solver):
    """The result kept at mark n from ONE run equals sampling again with max_nfe=n (and is the update that
    current_update says is current)."""
    den = mixture_images()
    fac = toy_factory(den, solver=solver)
    sampler = fac.build(outer, inner)
    seeds, shape = [5, 6, 7], (3, 1, 8, 8)
    snaps = snapshot_stream(sampler, seeds, shape, None, MARKS)
    calls_one_run = den.calls
    assert calls_one_run == 24                                    # one run, no reruns per budget
    sched = UpdateSchedule.from_sampler(sampler)
    for m in MARKS:
        alone = sampler.sample(seeds, shape, max_nfe=m)
        assert alone.nfe == sched.current(m).nfe == snaps.update_nfes[snaps.mark_index[MARKS.index(m)]]
        assert torch.equal(snaps.at(m), quantize(alone.x0)), m
    assert torch.equal(snaps.final, snaps.at(24)) and snaps.timing["denoiser_calls"] == 24
    assert len(snaps.images) == len(set(sched.distinct_at(MARKS)))  # stored once per distinct update


def test_marks_outside_the_run_are_rejected_before_sampling():
    den = mixture_images()
    s = toy_factory(den).build(3, 8)
    for bad in ([0, 3], [3, 25], []):
        with pytest.raises(ValueError, match=r"marks: must lie in \[1, 24\]"):
            snapshot_stream(s, [0], (1, 1, 8, 8), None, bad)
    assert den.calls == 0


def test_chunking_does_not_change_samples(tmp_path):
    fac = toy_factory(mixture_images())
    a = collect_snapshots(fac, 3, 8, 10, 0, MARKS, tmp_path / "a", chunk=3)
    b = collect_snapshots(fac, 3, 8, 10, 0, MARKS, tmp_path / "b", chunk=10)
    assert a.seeds == b.seeds == list(range(10))
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))
    c = collect_snapshots(fac, 3, 8, 10, 1, MARKS, tmp_path / "b", chunk=10)   # other seeds, other images
    assert torch.equal(c.final[:9], b.final[1:10])               # sample seed s is the same image anywhere


def test_interrupted_run_resumes_without_recomputing(tmp_path):
    fac = toy_factory(mixture_images(fail_after=30))            # chunk 1 = 24 calls, dies inside chunk 2
    with pytest.raises(KeyboardInterrupt):
        collect_snapshots(fac, 3, 8, 12, 0, MARKS, tmp_path, chunk=4)
    files = sorted(p.name for p in tmp_path.rglob("*.pt"))
    assert files == ["seed0-samples000000-000003.pt"] and not list(tmp_path.rglob("*.tmp"))
    den = mixture_images()
    resumed = collect_snapshots(toy_factory(den), 3, 8, 12, 0, MARKS, tmp_path, chunk=4)
    assert den.calls == 2 * 24                                   # only the two missing chunks
    assert resumed.timing["chunks_cached"] == 1 and resumed.timing["chunks_computed"] == 2
    den2 = mixture_images()
    again = collect_snapshots(toy_factory(den2), 3, 8, 12, 0, MARKS, tmp_path, chunk=4)
    assert den2.calls == 0 and again.timing["chunks_computed"] == 0
    fresh = collect_snapshots(toy_factory(mixture_images()), 3, 8, 12, 0, MARKS, tmp_path / "fresh", chunk=12)
    assert all(torch.equal(x, y) for x, y in zip(resumed.images, fresh.images))


def test_cache_key_separates_samplers(tmp_path):
    den = mixture_images()
    collect_snapshots(toy_factory(den, tag="a"), 3, 8, 4, 0, MARKS, tmp_path)
    collect_snapshots(toy_factory(den, tag="b", inner_eta=0.0), 3, 8, 4, 0, MARKS, tmp_path)
    collect_snapshots(toy_factory(den, tag="a"), 3, 8, 4, 0, MARKS[1:], tmp_path)
    assert den.calls == 3 * 24 and len(list(tmp_path.iterdir())) == 3


def test_bundled_factory_on_a_small_unet(tmp_path):
    torch.manual_seed(0)
    unet = TinyUNet(channels=(16, 32)).eval()
    fac = bundled_factory(unet, guidance=2.0, solver="ddpm")
    assert isinstance(fac, SamplerFactory) and fac.sample_shape == (1, 28, 28)
    assert fac.cond_for([0, 9, 10, 23]).tolist() == [0, 9, 0, 3]
    snaps = collect_snapshots(fac, 2, 2, 3, 0, [1, 2, 3, 4], tmp_path)
    assert snaps.final.shape == (3, 1, 28, 28) and snaps.final.dtype == torch.uint8
    assert snaps.update_nfes == [1, 2, 4] and snaps.timing["denoiser_calls"] == 4
    assert 0 < snaps.timing["denoiser_s"] <= snaps.timing["sampling_s"]
    other = bundled_factory(TinyUNet(channels=(16, 32)).eval(), guidance=2.0, solver="ddpm")
    assert other.info["model"] != fac.info["model"]             # weights are part of the cache key
