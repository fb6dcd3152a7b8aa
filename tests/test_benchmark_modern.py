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


def test_gpu_build_path_runs_with_small_configs_on_the_cpu(monkeypatch, capsys):
    """The --gpu code path (build_full + run_family) with every module shrunk, on the CPU in float32: a plumbing
    check of what the GPU run will execute."""
    import argparse

    import modern_gpu
    small_vae = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                     up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=4)
    monkeypatch.setattr(modern_pipelines, "SDXL_UNET", dict(
        modern_pipelines.SDXL_UNET, block_out_channels=(16, 32), down_block_types=("DownBlock2D",
                                                                                   "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 1),
        attention_head_dim=(4, 4), layers_per_block=1, norm_num_groups=8, addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 128, cross_attention_dim=64 + 128, sample_size=8))
    monkeypatch.setattr(modern_pipelines, "FLUX_TRANSFORMER", dict(
        modern_pipelines.FLUX_TRANSFORMER, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, axes_dims_rope=(4, 4, 8), joint_attention_dim=128, pooled_projection_dim=64))
    monkeypatch.setattr(modern_pipelines, "TEXT_WIDTHS", {"sdxl": (64, 128), "flux": (64, 128)})
    monkeypatch.setattr(modern_pipelines, "SDXL_VAE", dict(modern_pipelines.SDXL_VAE, **small_vae))
    monkeypatch.setattr(modern_pipelines, "FLUX_VAE", dict(modern_pipelines.FLUX_VAE, **small_vae))
    tiny_dec = dict(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1))
    monkeypatch.setattr(modern_pipelines, "TAESD", dict(latent_channels=4, **tiny_dec))
    monkeypatch.setattr(modern_pipelines, "TAEF1", dict(latent_channels=16, **tiny_dec))
    args = argparse.Namespace(outer=2, inner=1, batch=1, size=16, repeats=1, gpu=False)
    for family in ("sdxl", "flux"):
        built = modern_gpu.build_full(family, "cpu", torch.float32)
        modern_pipelines.run_family(family, built, args, lambda: None)
    out = capsys.readouterr().out
    assert out.count("anytime_tiny") == 2 and "model calls   2" in out
