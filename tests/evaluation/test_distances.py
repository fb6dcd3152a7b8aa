"""Feature networks and distances: torchmetrics FD/KID vs evaluation/frechet.py, precision/recall, stats files,
and the Inception path failing clearly (never downloading)."""
import numpy as np
import pytest
import torch

from nested_diffusion.evaluation.distances import (FrechetToReference, ReferenceStats, bootstrap_counts,
                                                   fd_noise_floor, kid_from_features, load_reference_stats,
                                                   make_fd_metric, make_kid_metric, precision_recall,
                                                   save_reference_stats, weighted_stats)
from nested_diffusion.bundled.features import ClassifierFeatures, load_feature_classifier
from nested_diffusion.evaluation.features import dequantize, extract_features, inception_weights_path, quantize
from nested_diffusion.evaluation.frechet import FeatureStats, frechet_distance
from nested_diffusion.bundled import FashionClassifier


def images(n, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 1, 1, generator=g) * 0.6 - 0.3
    return (base + 0.3 * torch.randn(n, 1, 28, 28, generator=g) + shift).clamp(-1, 1)


@pytest.fixture(scope="module")
def extractor():
    """A random classifier whose BatchNorm statistics are calibrated on data, so features vary with the input."""
    torch.manual_seed(0)
    clf = FashionClassifier(feature_dim=32)
    for m in clf.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None                             # cumulative average over the calibration batch
    with torch.no_grad():
        clf.train()
        clf(images(256, seed=9))
    return ClassifierFeatures(clf)


def test_classifier_features_are_frozen_and_batch_independent(extractor):
    x = images(8, seed=1)
    extractor.train()                                     # torchmetrics may do this; must not switch BatchNorm
    assert not extractor.training and not extractor.classifier.training
    full = extractor(x)
    one = torch.cat([extractor(x[i:i + 1]) for i in range(8)])
    torch.testing.assert_close(full, one, rtol=1e-5, atol=1e-6)
    assert full.shape == (8, extractor.num_features) and full.std(0).mean() > 1e-3
    torch.testing.assert_close(extractor(quantize(x)), extractor(dequantize(quantize(x))))
    assert extractor.extractor_id.startswith("fashion-classifier-32d-")


def test_torchmetrics_fd_matches_frechet_py(extractor):
    real, fake = images(300, seed=2), images(300, shift=0.2, seed=3)
    fr, ff = extract_features(extractor, real), extract_features(extractor, fake)
    ref = frechet_distance(FeatureStats.from_features(fr), FeatureStats.from_features(ff))
    m = make_fd_metric(extractor)
    m.update(real, real=True)
    m.update(fake, real=False)
    assert ref > 1e-3 and float(m.compute()) == pytest.approx(ref, rel=1e-4)
    # injected mu/sigma/n give the same value without the real images
    inj = make_fd_metric(extractor, ReferenceStats.from_features(fr, extractor.extractor_id))
    inj.update(fake, real=False)
    assert float(inj.compute()) == pytest.approx(ref, rel=1e-4)
    # reset() keeps the reference: a closer fake set now scores lower
    inj.reset()
    inj.update(images(300, seed=4), real=False)
    assert float(inj.compute()) < ref
    # the batched reference FD is the same formula
    fd = FrechetToReference(FeatureStats.from_features(fr))
    assert fd.of_features(ff) == pytest.approx(ref, rel=1e-9)


def test_weighted_stats_equal_explicit_resampling():
    f = torch.randn(30, 4, dtype=torch.float64)
    counts = bootstrap_counts(30, 3, seed=1)
    assert (counts.sum(1) == 30).all()
    mu, cov = weighted_stats(f, counts)
    for r in range(3):
        rep = f.repeat_interleave(counts[r], dim=0)
        torch.testing.assert_close(mu[r], rep.mean(0))
        torch.testing.assert_close(cov[r], torch.cov(rep.T))
    fd = FrechetToReference(FeatureStats.from_features(torch.randn(50, 4, dtype=torch.float64)))
    batched = fd(mu, cov)
    assert torch.allclose(batched, torch.tensor([fd(mu[r], cov[r]) for r in range(3)], dtype=torch.float64))


def test_kid_is_near_zero_for_one_distribution_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    same, _ = kid_from_features(a, b, subsets=20, subset_size=200)
    far, _ = kid_from_features(a, b + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 0.02 < far
    state = torch.get_rng_state()
    assert kid_from_features(a, b + 0.5, subsets=20, subset_size=200, seed=3) == \
        kid_from_features(a, b + 0.5, subsets=20, subset_size=200, seed=3)
    assert torch.equal(state, torch.get_rng_state())          # the global RNG is untouched


def test_precision_recall_on_hand_made_sets():
    line = torch.arange(10, dtype=torch.float64)[:, None]     # points 0..9; 3rd-NN radius: 3 (ends) or 2 (inside)
    pr = precision_recall(line, line.clone(), k=3)
    assert pr["precision"] == 1.0 and pr["recall"] == 1.0
    far = precision_recall(line, line + 100, k=3)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # fakes crowded at 0..4.5 (spacing 0.5): all lie in the real manifold, but they only cover reals 0..6
    fake = torch.arange(10, dtype=torch.float64)[:, None] * 0.5
    pr = precision_recall(line, fake, k=3)
    assert pr["precision"] == 1.0
    # fake radii: 1.5 at both ends, 1.0 inside → ball union [−1.5, 6.0]: reals 0..6 → 7 of 10
    assert pr["recall"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="k: must be an integer ≥ 1"):
        precision_recall(line, line, k=0)


def test_noise_floor_is_the_fd_of_real_subsets():
    g = torch.Generator().manual_seed(0)
    ref, held = torch.randn(2000, 4, generator=g), torch.randn(2000, 4, generator=g)
    fd = FrechetToReference(FeatureStats.from_features(ref))
    small, big = fd_noise_floor(fd, held, 50), fd_noise_floor(fd, held, 1000)
    assert small["mean"] > big["mean"] > 0 and len(small["values"]) == 5      # bias ≈ 1/N
    with pytest.raises(ValueError, match="need at least n=3000 held-out"):
        fd_noise_floor(fd, held, 3000)


def test_reference_stats_roundtrip_and_foreign_npz(tmp_path):
    s = ReferenceStats.from_features(torch.randn(20, 3), "net-a")
    p = save_reference_stats(tmp_path / "ref.npz", s)
    back = load_reference_stats(p, "net-a")
    assert np.allclose(back.mu, s.mu) and np.allclose(back.sigma, s.sigma) and back.n == 20
    with pytest.raises(ValueError, match="computed with 'net-a', not 'net-b'"):
        load_reference_stats(p, "net-b")
    # ADM / pytorch-fid style: float32 mu, sigma plus extra keys, no n
    np.savez(tmp_path / "adm.npz", mu=np.zeros(3, np.float32), sigma=np.eye(3, dtype=np.float32),
             mu_s=np.ones(2), sigma_s=np.eye(2))
    adm = load_reference_stats(tmp_path / "adm.npz", "anything")
    assert adm.mu.dtype == np.float64 and adm.n is None and adm.extractor_id == ""
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match=r"missing \['sigma'\]"):
        load_reference_stats(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="needs its sample count"):
        make_fd_metric(ClassifierFeatures(FashionClassifier(feature_dim=3)), adm)


def test_inception_needs_a_local_file_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*a, **k):
        raise AssertionError("a download was attempted")
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    expected = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert inception_weights_path() == expected
    for build in (make_fd_metric, make_kid_metric):
        with pytest.raises(FileNotFoundError, match=str(expected)):
            build("inception")
    with pytest.raises(ValueError, match="'inceptionv3' is not valid"):
        make_fd_metric("inceptionv3")


def test_missing_classifier_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no FashionClassifier at '{tmp_path}'"):
        load_feature_classifier(tmp_path)
