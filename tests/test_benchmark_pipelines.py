"""benchmarks/gpu_pipelines.py on the CPU: the inline SD-1.5 / DiT-XL/2 configurations have the published sizes
(built on the meta device), the --tiny plumbing run prints every mode at equal NFE, and without CUDA the full
benchmark refuses clearly."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_pipelines  # noqa: E402


def test_dry_run_configs_have_the_published_sizes(capsys):
    assert gpu_pipelines.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    sizes = {m.group(1): float(m.group(2)) for m in re.finditer(r"(\w+\.\w+)\s+\w+\s+([\d.]+) M parameters", out)}
    assert sizes["sd.unet"] == pytest.approx(859.52, abs=0.01)          # SD 1.x UNet
    assert sizes["sd.text_encoder"] == pytest.approx(123.06, abs=0.01)  # CLIP ViT-L/14 text tower
    assert sizes["sd.vae"] == pytest.approx(83.65, abs=0.01)
    assert sizes["dit.transformer"] == pytest.approx(675.13, abs=0.01)  # DiT-XL/2 (original layout)


def test_tiny_run_reports_equal_nfe_modes_and_ratios(capsys):
    assert gpu_pipelines.main(["--tiny", "--models", "dit", "--outer", "2", "--inner", "2", "--repeats", "1",
                               "--dit-batch", "2"]) == 0
    out = capsys.readouterr().out
    for mode, decodes in (("vanilla", 1), ("vanilla_every", 4), ("final", 1), ("every_outer", 2), ("anytime", 3)):
        assert re.search(rf"{mode}\s.*images/s\s+model calls\s+4\s+VAE decodes\s+{decodes}\b", out), mode
    assert "(a)" in out and "(b)" in out and "(c)" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_full_benchmark_refuses_without_cuda(capsys):
    assert gpu_pipelines.main([]) == 1
    assert "no CUDA device" in capsys.readouterr().err
