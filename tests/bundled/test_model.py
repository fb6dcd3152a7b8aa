import json

import pytest
import torch

from nested_diffusion import NestedSampler
from nested_diffusion.bundled import make_denoiser, parse_classes
from nested_diffusion.bundled import FashionClassifier, TinyUNet, bundled_classifier_path, bundled_model_path


@pytest.fixture(scope="module")
def unet():
    return TinyUNet.from_pretrained(bundled_model_path())


def test_bundled_checkpoint_loads_with_its_config(unet):
    cfg = json.loads((bundled_model_path() / "config.json").read_text())
    assert cfg["_class_name"] == "TinyUNet" and cfg["prediction_type"] == "v" and cfg["learned_variance"]
    assert sum(p.numel() for p in unet.parameters()) > 1_000_000 and not unet.training


def test_outputs_are_finite_and_deterministic_for_a_seed(unet):
    den = make_denoiser(unet, 2.0)
    s = NestedSampler(den, 2, 3, "ddpm")
    labels = torch.tensor([1, 7])
    with torch.inference_mode():
        a = s.sample([11, 12], (2, 1, 28, 28), cond=labels).x0
        b = s.sample([11, 12], (2, 1, 28, 28), cond=labels).x0
        c = s.sample([13, 12], (2, 1, 28, 28), cond=labels).x0
    assert torch.isfinite(a).all() and a.abs().max() <= 1.0
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a[0], c[0]) and torch.allclose(a[1], c[1])


def test_save_and_load_roundtrip(tmp_path):
    m = TinyUNet(channels=(16, 32)).eval()
    m.save_pretrained(tmp_path / "m")
    assert not list((tmp_path / "m").glob("*.tmp"))
    m2 = TinyUNet.from_pretrained(tmp_path / "m")
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 900])
    with torch.no_grad():
        torch.testing.assert_close(m(x, t, torch.tensor([3, 10])), m2(x, t, torch.tensor([3, 10])))
    with pytest.raises(ValueError, match="holds a TinyUNet, not a FashionClassifier"):
        FashionClassifier.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="must be a folder holding config.json"):
        TinyUNet.from_pretrained(tmp_path / "nothing")


def test_bundled_classifier_loads():
    clf = FashionClassifier.from_pretrained(bundled_classifier_path())
    assert clf(torch.zeros(3, 1, 28, 28)).shape == (3, 10) and clf.features(torch.zeros(1, 1, 28, 28)).shape == (1, 128)


def test_class_parsing():
    assert parse_classes("all") == list(range(10))
    assert parse_classes("0, sandal,Bag,9") == [0, 5, 8, 9]
    with pytest.raises(ValueError, match="classes: unknown class 'hat'"):
        parse_classes("hat")
    with pytest.raises(ValueError, match="classes: 12 is not a class index"):
        parse_classes("12")
