"""The compute dtype (``--dtype``, ``RunConfig.dtype``) of the bundled model on every surface: one resolver, one
model switch (a bfloat16 weight copy inside ``TinyUNet``), refused where a family does not offer it."""
import json

import pytest
import torch

from nested_diffusion import cli
from nested_diffusion.bundled import RUN_DEFAULTS, compute_dtype, load_unet, make_denoiser
from nested_diffusion.core.nested import NestedSampler
from nested_diffusion.core.run import resolve_run

OTHER = "float32" if RUN_DEFAULTS.dtype == "bfloat16" else "bfloat16"


def test_the_resolver_gives_the_family_default_and_names_the_option():
    assert resolve_run(defaults=RUN_DEFAULTS).dtype == RUN_DEFAULTS.dtype
    assert resolve_run(defaults=RUN_DEFAULTS, dtype="auto").dtype == RUN_DEFAULTS.dtype
    assert resolve_run(defaults=RUN_DEFAULTS, dtype=torch.bfloat16).dtype == "bfloat16"
    assert resolve_run().dtype is None                       # the core default: the model's own
    with pytest.raises(ValueError, match=r"--dtype: 'int8' is not a compute dtype; valid: auto, float32, "):
        resolve_run(defaults=RUN_DEFAULTS, names={"dtype": "--dtype"}, dtype="int8")
    with pytest.raises(ValueError, match="--dtype: the bundled model computes in float32 or bfloat16"):
        compute_dtype("float16", "--dtype")


@pytest.fixture(scope="module")
def models():
    return load_unet(dtype="float32"), load_unet(dtype="bfloat16")


def test_bfloat16_runs_on_a_weight_copy_and_stays_close_to_float32(models):
    fp32, bf16 = models
    assert fp32.compute_dtype is None and bf16.compute_dtype is torch.bfloat16
    assert all(p.dtype == torch.float32 for p in bf16.parameters())          # weights stay float32 …
    assert set(bf16.state_dict()) == set(fp32.state_dict())                 # … and the copy is not saved
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(4, 1, 28, 28, generator=g), torch.tensor([999, 700, 300, 20]), torch.arange(4)
    with torch.no_grad():
        a, b = fp32(x, t, y), bf16(x, t, y)
    assert b.dtype == torch.float32
    # bfloat16 keeps 8 mantissa bits: the v-prediction differs by a few 1e-2 at most (measured max 0.05)
    assert 0 < float((a - b).abs().max()) < 0.1
    with torch.no_grad():
        assert torch.equal(bf16(x, t, y), b)                                  # deterministic


def test_same_seed_same_image_within_a_dtype(models):
    _, bf16 = models
    s = NestedSampler.from_schedule(make_denoiser(bf16, 1.25), "progressive", 40, "ddpm", first=10)
    one = s.sample([3, 4], (2, 1, 28, 28), cond=torch.tensor([1, 2])).x0
    two = s.sample([3, 4], (2, 1, 28, 28), cond=torch.tensor([1, 2])).x0
    assert torch.equal(one, two)


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_takes_dtype_and_records_it(tmp_path, capsys):
    for name in ("float32", "bfloat16"):
        code, _, err = run(["generate", "--out", str(tmp_path / name), "--classes", "3", "--outer", "2", "--inner",
                            "3", "--dtype", name, "--quiet", "--threads", "1"], capsys)
        assert code == 0, err
        doc = json.loads((tmp_path / name / "updates.json").read_text())
        assert doc["settings"]["dtype"] == name
    code, _, _ = run(["generate", "--out", str(tmp_path / "d"), "--classes", "3", "--outer", "2", "--inner", "3",
                      "--quiet"], capsys)
    assert json.loads((tmp_path / "d" / "updates.json").read_text())["settings"]["dtype"] == RUN_DEFAULTS.dtype


@pytest.mark.parametrize("command", [
    ["generate", "--classes", "3"],
    ["calibrate", "--samples", "20"],
    ["eval", "rnd-sweep", "--samples", "20"],
    ["sample", "--num-samples", "2"],
])
def test_float16_is_refused_by_the_bundled_model_before_any_work(command, tmp_path, capsys):
    out = tmp_path / "o"
    flag = "--out-dir" if command[0] == "sample" else "--out"
    code, _, err = run([*command, flag, str(out), "--dtype", "float16"], capsys)
    assert code == 2 and "--dtype: the bundled model computes in float32 or bfloat16" in err, err
    assert "Traceback" not in err and not out.exists()


def test_sample_manifests_record_the_dtype(tmp_path, capsys):
    args = ["--num-samples", "2", "--outer-steps", "2", "--inner-steps", "2", "--step", "2", "--batch-size", "2",
            "--quiet"]
    out = tmp_path / "s"
    assert cli.main(["sample", "--out-dir", str(out), *args]) == 0
    capsys.readouterr()
    assert cli.main(["sample", "--out-dir", str(out), *args, "--dtype", OTHER]) == 2
    assert "dtype" in capsys.readouterr().err
    other = tmp_path / "other"                                    # the other dtype in its own folder: runs, recorded
    assert cli.main(["sample", "--out-dir", str(other), *args, "--dtype", OTHER]) == 0
    manifest = json.loads(next(other.rglob("manifest.json")).read_text())
    assert OTHER in json.dumps(manifest) or OTHER == "float32"


def test_serve_and_the_api_load_the_model_in_the_servers_dtype():
    from nested_diffusion.web import JobRequest, Limits, load_backend
    backend = load_backend("bundled", dtype="bfloat16")
    assert backend.model.compute_dtype is torch.bfloat16
    assert backend.prepare(JobRequest(classes="bag", max_nfe=2), Limits()).run.dtype == "bfloat16"
    assert load_backend("bundled").prepare(JobRequest(classes="bag"), Limits()).run.dtype == RUN_DEFAULTS.dtype
    with pytest.raises(ValueError, match="--dtype: the bundled model computes in float32 or bfloat16"):
        load_backend("bundled", dtype="float16")
    pytest.importorskip("fastapi")
    import argparse

    from nested_diffusion.api.server import build_service
    from nested_diffusion.cli.api import add_parser, settings_of
    sub = argparse.ArgumentParser().add_subparsers()
    add_parser(sub)
    service = build_service(settings_of(sub.choices["api"].parse_args(["--dtype", "bfloat16"])))
    assert service.backend.model.compute_dtype is torch.bfloat16


def test_bfloat16_images_do_not_depend_on_the_batch(models):
    """Same seed, same image whatever the batch (measured: identical in bfloat16; float32 differs by ~2e-6):
    within one uint8 level."""
    _, bf16 = models
    s = NestedSampler.from_schedule(make_denoiser(bf16, 1.25), "progressive", 40, "ddpm", first=10)
    batch = s.sample(list(range(4)), (4, 1, 28, 28), cond=torch.arange(4)).x0
    alone = torch.cat([s.sample([i], (1, 1, 28, 28), cond=torch.tensor([i])).x0 for i in range(4)])
    level = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    assert float((level(batch) - level(alone)).abs().max()) <= 1
