"""Issue 15: the named schedules (core.schedules) in the pipelines (schedule=, total_nfe=), the eval runners
(--configs ...,progressive; budget-table --nested-schedule) and the web demo (JobRequest.schedule)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from nested_diffusion import NestedSampler, make_schedule
from nested_diffusion.bundled import TinyUNet
from nested_diffusion.cli import eval as cli_eval
from nested_diffusion.core.schedules import Schedule
from nested_diffusion.evaluation.auc import parse_configs
from nested_diffusion.evaluation.consistency import MSEDistance
from nested_diffusion.evaluation.runners import run_consistency, run_qualitative
from nested_diffusion.evaluation.snapshots import SamplerFactory, collect_config_snapshots
from nested_diffusion.web import BundledBackend, JobRequest, Limits
from nested_diffusion.web.stream import stream_updates
from toy import mixture_images, toy_factory

PROGRESSIVE_42 = dict(inner=[20, 20, 2], times=[999, 899, 799, -1])   # make_schedule("progressive", 42, 999)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------- pipelines
@pytest.fixture(scope="module")
def sd():
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from fixtures_tiny import tiny_sd
    from nested_diffusion.pipelines import NestedStableDiffusionPipeline
    pipe = NestedStableDiffusionPipeline.from_pipe(tiny_sd())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def dit():
    pytest.importorskip("diffusers")
    from fixtures_tiny import tiny_dit
    from nested_diffusion.pipelines import NestedDiTPipeline
    pipe = NestedDiTPipeline.from_pipe(tiny_dit())
    pipe.set_progress_bar_config(disable=True)
    return pipe


SD_CALL = dict(prompt="a photo of a cat", height=16, width=16, output_type="latent")


def test_sd_progressive_builds_the_schedule_sampler_and_equals_the_explicit_schedule(sd):
    out = sd(**SD_CALL, schedule="progressive", total_nfe=42, generator=gen())
    s = sd.nested_sampler
    assert s.times == PROGRESSIVE_42["times"] and s.inner_steps == PROGRESSIVE_42["inner"] and s.total_nfe == 42
    assert out.nfe == 42 and out.outer_steps == 3 and out.final
    explicit = Schedule("mine", (20, 20, 2), (999, 899, 799))          # the same steps and outer times, by hand
    same = sd(**SD_CALL, schedule=explicit, generator=gen())
    assert torch.equal(out.images, same.images)
    even = sd(**SD_CALL, outer_steps=3, inner_steps=[20, 20, 2], generator=gen())   # evenly spaced outer grid
    assert sd.nested_sampler.times == [999, 666, 333, -1] and not torch.allclose(out.images, even.images)
    finished = [u.nfe for u in sd.iter_anytime(**SD_CALL, schedule="progressive", total_nfe=42, generator=gen(),
                                               previews="none")]
    assert finished == [20, 40, 42]                                    # the first finished image after 20 NFE


def test_sd_uniform_schedule_equals_explicit_steps_and_defaults_to_the_pipeline_budget(sd):
    a = sd(**SD_CALL, schedule=make_schedule("uniform", 6, 999, outer=2), generator=gen())
    b = sd(**SD_CALL, outer_steps=2, inner_steps=3, generator=gen())
    assert torch.equal(a.images, b.images)
    sd(**SD_CALL, schedule="progressive", max_nfe=1, generator=gen())
    core = sd.nested_sampler
    assert core.inner_steps == [20, 20, 60] and core.times[:-1] == [999, 899, 799]   # default budget 5 × 20


@pytest.mark.parametrize("kwargs, match", [
    (dict(schedule="progressive", outer_steps=3), "outer_steps: 3 sets a uniform split; schedule progressive takes "
                                                  "total_nfe"),
    (dict(schedule="progressive", num_inner_steps=10), "num_inner_steps: 10 sets a uniform split"),
    (dict(schedule="uniform", num_inference_steps=2, inner_steps=4, total_nfe=10),
     "total_nfe: 10 is not num_inference_steps 2 × inner_steps 4"),
    (dict(schedule="uniform", total_nfe=12), "total_nfe: 12 NFE do not split evenly over 5 outer steps"),
    (dict(schedule=Schedule("x", (2, 2)), total_nfe=4), "total_nfe: only with a schedule given by name"),
    (dict(schedule="warp", total_nfe=100), "unknown schedule 'warp'"),
    (dict(schedule="progressive", total_nfe=40), "leave nothing for the final run"),
    (dict(schedule="progressive", total_nfe=0), "total_nfe: must be ≥ 1"),
])
def test_sd_bad_schedule_arguments_raise_before_any_model_call(sd, kwargs, match):
    calls = []
    hook = sd.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=match):
            sd(**SD_CALL, **kwargs)
    finally:
        hook.remove()
    assert not calls


def test_dit_progressive_and_calibration_settings(dit):
    out = dit([1, 2], schedule="progressive", total_nfe=42, generator=gen(), output_type="latent")
    s = dit.nested_sampler
    assert s.times == PROGRESSIVE_42["times"] and s.inner_steps == PROGRESSIVE_42["inner"] and out.nfe == 42
    assert s.calibration_settings()["outer_times"] == [999, 899, 799]   # a calibration must match the schedule
    same = dit([1, 2], schedule=Schedule("p", (20, 20, 2), (999, 899, 799)), generator=gen(), output_type="latent")
    assert torch.equal(out.images, same.images)
    with pytest.raises(ValueError, match="outer_steps: 4 sets a uniform split"):
        dit([1], schedule="progressive", outer_steps=4)


def test_sdxl_and_the_flow_pipelines_take_a_schedule():
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from fixtures_modern import tiny_sd3, tiny_sdxl
    from nested_diffusion.pipelines import NestedStableDiffusion3Pipeline, NestedStableDiffusionXLPipeline
    xl = NestedStableDiffusionXLPipeline.from_pipe(tiny_sdxl())
    core = xl.core_sampler(schedule="progressive", total_nfe=100)
    assert core.inner_steps == [20, 20, 60] and core.times[:-1] == [999, 899, 799]
    with pytest.raises(ValueError, match="inner_steps: 5 sets a uniform split"):
        xl.core_sampler(schedule="progressive", inner_steps=5)
    sd3 = NestedStableDiffusion3Pipeline.from_pipe(tiny_sd3())
    flow = sd3.core_sampler(schedule="progressive", total_nfe=48)   # flow times u: 1.0, 0.9, 0.8, then clean
    assert flow.inner_steps == [20, 20, 8] and flow.times == pytest.approx([1.0, 0.9, 0.8, 0.0], abs=1e-12)
    assert sd3.core_sampler(total_nfe=28).inner_steps == [7] * 4   # the family's uniform split, 4 outer steps


def test_pipeline_factory_runs_a_named_schedule(sd):
    from nested_diffusion.pipelines.factories import sd_factory
    fac = sd_factory(sd, ["a cat", "a dog"], height=16, width=16)
    s = fac.make("progressive", 42)
    assert s.times == PROGRESSIVE_42["times"] and s.inner_steps == PROGRESSIVE_42["inner"] and s.total_nfe == 42
    assert s.steps == dict(schedule="progressive", total_nfe=42)
    assert fac.make((2, 3), 6).steps == dict(outer_steps=2, inner_steps=3)   # OUTERxINNER as before
    ups = list(s.stream([5], (1, *fac.sample_shape), ["a cat"], previews="none"))
    assert [u.nfe for u in ups] == [20, 40, 42]
    ref = sd(prompt=["a cat"], height=16, width=16, schedule="progressive", total_nfe=42, generator=[gen(5)],
             output_type="latent")
    assert torch.equal(ups[-1].x0, ref.images)


# ------------------------------------------------------------------------------------------------ eval runners
def schedule_factory(den):
    """toy_factory plus named schedules (as bundled_factory and the pipeline factories offer them)."""
    fac = toy_factory(den)
    fac.build_schedule = lambda name, budget: NestedSampler.from_schedule(den, name, budget, "ddim", 0.85)
    return fac


def test_parse_configs_takes_schedule_names():
    assert parse_configs("1x48, Progressive,4x12") == [(1, 48), "progressive", (4, 12)]
    with pytest.raises(ValueError, match="schedule name"):
        parse_configs("1x48,fancy")


def test_runners_key_a_named_schedule_by_its_name(tmp_path):
    den = mixture_images()
    fac = schedule_factory(den)
    doc = run_consistency(fac, [MSEDistance()], tmp_path / "c", "1x48,progressive", total_nfe=48, step=8,
                          n_samples=3, chunk=3, log=None)
    rows = {r["label"]: r for r in doc["configs"]}
    assert set(rows) == {"1x48", "progressive"}
    p = rows["progressive"]
    assert p["schedule"] == "progressive" and p["inner"] == [20, 20, 8] and p["outer_times"] == [999, 899, 799]
    assert rows["1x48"]["outer"] == 1 and rows["1x48"]["inner"] == 48 and "schedule" not in rows["1x48"]
    assert p["curves"]["mse"]["mean"][-1] == 0.0                        # the final result against itself
    saved = json.loads((tmp_path / "c" / "consistency.json").read_text())
    assert [r["label"] for r in saved["configs"]] == ["1x48", "progressive"]
    keys = sorted(d.name.split("-")[0] for d in (tmp_path / "c" / "cache").iterdir())
    assert keys == ["1x48", "progressive48"]                           # the cache folder names the schedule
    snaps = collect_config_snapshots(fac, "progressive", 48, 3, 0, list(range(8, 49, 8)), tmp_path / "c" / "cache",
                                     3)
    assert snaps.timing["chunks_cached"] == 1                          # the runner's chunk, reused
    q = run_qualitative(fac, tmp_path / "q", "progressive,4x12", total_nfe=48, samples=[0], rows_every=24,
                        log=None)
    assert q["configs"] == ["progressive", "4x12"]


def test_budget_table_with_a_named_nested_schedule(tmp_path):
    from nested_diffusion.bundled import FashionClassifier
    from nested_diffusion.bundled.features import ClassifierFeatures
    from nested_diffusion.evaluation.reference import reference_from_images
    from nested_diffusion.evaluation.runners import run_budget_table
    den = mixture_images()
    real = den.sample(120, torch.Generator().manual_seed(1)).float().reshape(-1, 1, 8, 8).clamp(-1, 1)
    torch.manual_seed(0)
    ref = reference_from_images(ClassifierFeatures(FashionClassifier(feature_dim=8).eval()), real[:60], real[60:],
                                "toy mixture")
    doc = run_budget_table(schedule_factory(den), ref, tmp_path, budgets=[48], fractions=[0.5, 1.0], step=8,
                           n_samples=4, chunk=4, bootstrap=0, log=None, nested_schedule="progressive")
    assert [r["nested_config"] for r in doc["rows"]] == ["progressive"] * 2
    assert [r["vanilla_config"] for r in doc["rows"]] == ["1x48"] * 2
    assert set(doc["timing"]) == {"1x48", "progressive-48"} and "progressive" in doc["nested"]
    with pytest.raises(ValueError, match="expected a schedule name"):
        run_budget_table(schedule_factory(den), ref, tmp_path, budgets=[48], nested_schedule="4x12", log=None)


def test_a_named_schedule_needs_a_factory_that_offers_it(tmp_path):
    with pytest.raises(ValueError, match="no named schedules"):
        run_consistency(toy_factory(mixture_images()), [MSEDistance()], tmp_path, "progressive", total_nfe=48,
                        step=8, n_samples=2, log=None)
    assert SamplerFactory(lambda o, i: None, (1,)).build_schedule is None


def test_cli_consistency_on_the_bundled_factory_with_a_progressive_config(tmp_path, capsys):
    unet = TinyUNet(channels=(16, 32)).eval()
    unet.save_pretrained(tmp_path / "unet")
    p = argparse.ArgumentParser()
    cli_eval.add_parser(p.add_subparsers(dest="command", required=True))
    rc = cli_eval.run(p.parse_args(["eval", "consistency", "--model", str(tmp_path / "unet"), "--configs",
                                    "1x50,progressive", "--total-nfe", "50", "--samples", "2", "--chunk", "2",
                                    "--metrics", "mse", "--out", str(tmp_path / "out"), "--quiet"]))
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "out" / "consistency.json").read_text())
    p = {r["label"]: r for r in doc["configs"]}["progressive"]
    assert p["inner"] == [20, 20, 10] and p["outer_times"] == [999, 899, 799] and p["outer"] == 3
    assert doc["sampler"]["solver"] == "ddpm"


# -------------------------------------------------------------------------------------------------------- web
class Model:
    """A tiny random TinyUNet with the bundled model's call/config (the backend reads null_class)."""

    def __init__(self):
        torch.manual_seed(0)
        self.net = TinyUNet(channels=(16, 32)).eval()
        self.config, self.null_class = self.net.config, self.net.null_class

    def __call__(self, x, t, labels):
        return self.net(x, t, labels)


def test_web_progressive_job_runs_the_schedule_sampler():
    model = Model()
    backend = BundledBackend(model)
    req = JobRequest(classes="0,3", seed=5, nfe=45, schedule="progressive")
    prep = backend.prepare(req, Limits())
    s = backend.sampler(prep.run)
    assert s.inner_steps == [20, 20, 5] and s.times == [999, 899, 799, -1]
    uniform = backend.prepare(JobRequest(classes="0", outer_steps=3, inner_steps=15), Limits())
    assert backend.sampler(uniform.run).inner_steps == [15, 15, 15]      # outer × inner: uniform
    ups = list(stream_updates(backend, req))
    assert ups[-1].state == "done" and ups[-1].total_nfe == 45 and ups[-1].outer_steps == 3
    assert [u.nfe for u in ups[:-1] if u.source == "inner_result"] == [20, 40, 45]
    from nested_diffusion.bundled import make_denoiser
    from nested_diffusion.web.render import model_to_rgb
    lib = NestedSampler.from_schedule(make_denoiser(model, prep.guidance), "progressive", 45, "ddpm")
    ref = lib.sample(prep.seeds, (2, 1, 28, 28), cond=prep.cond)
    assert np.array_equal(ups[-1].images, model_to_rgb(ref.x0))
    with pytest.raises(ValueError, match="schedule: unknown schedule 'warp'"):
        backend.prepare(JobRequest(classes="0", schedule="warp"), Limits())
    with pytest.raises(ValueError, match="nfe: 40 NFE leave nothing"):     # 2 × 20 = 40 NFE: checked up front
        backend.prepare(JobRequest(classes="0", nfe=40, schedule="progressive"), Limits())
