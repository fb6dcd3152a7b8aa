"""benchmarks/modern_pipelines.py on the CPU: the --gpu configurations have the published sizes (meta device),
a tiny run prints every mode at equal NFE with the expected decode counts, and --gpu refuses without CUDA."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import modern_pipelines  # noqa: E402


def test_dry_run_has_the_published_model_sizes(capsys):
    assert modern_pipelines.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    sizes = {m.group(1): float(m.group(2)) for m in re.finditer(r"(\w+\.\w+)\s+\w+\s+([\d.]+) M parameters", out)}
    assert sizes["sdxl.unet"] == pytest.approx(2567.46, abs=0.01)          # SDXL base UNet
    assert sizes["flux.transformer"] == pytest.approx(11901.41, abs=0.01)  # FLUX.1 transformer


def test_tiny_run_reports_every_mode_at_equal_nfe(capsys):
    assert modern_pipelines.main(["--families", "flux", "--outer", "2", "--inner", "2", "--size", "16",
                                  "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    expected = {"stock": (1, 0), "stock_every": (5, 0), "final": (1, 0), "anytime_tiny": (1, 2),
                "anytime_rgb": (1, 0), "anytime_vae": (3, 0)}  # 2 × 2: n + K − 1 = 3 anytime updates
    for mode, (full, tiny) in expected.items():
        assert re.search(rf"{mode}\s.*model calls\s+4\s+full-VAE decodes\s+{full}\s+tiny decodes\s+{tiny}\b", out), mode


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_mode_refuses_without_cuda(capsys):
    assert modern_pipelines.main(["--gpu"]) == 1
    assert "needs a CUDA device" in capsys.readouterr().err
