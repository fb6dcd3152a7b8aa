"""The evaluation runners on the diffusers pipelines (tiny random-weight Nested SD and DiT): snapshots equal
separately budgeted iter_anytime runs, per-seed prompts/labels, resume without recomputation, FD and prompt
scores in the runners, prompt/label parsing, CLIP score from a local folder, the `eval --pipeline` CLI."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from fixtures_tiny import tiny_clip, tiny_dit, tiny_sd  # noqa: E402
from nested_diffusion.cli import eval as cli_eval  # noqa: E402
from nested_diffusion.evaluation.consistency import FeatureCosineDistance, MSEDistance  # noqa: E402
from nested_diffusion.evaluation.features import extract_features, quantize  # noqa: E402
from nested_diffusion.evaluation.frechet import FeatureStats, frechet_distance  # noqa: E402
from nested_diffusion.pipelines.factories import (dit_factory, parse_class_labels, prompt_score,  # noqa
                                                            read_prompts, sd_factory)
from nested_diffusion.evaluation.reference import reference_from_images  # noqa: E402
from nested_diffusion.evaluation.rgb_metrics import (CLIPScorer, InceptionFeatures, RandomRGBFeatures,  # noqa
                                                     reference_from_stats)
from nested_diffusion.evaluation.runners import run_budget_table, run_consistency, run_rnd_sweep  # noqa: E402
from nested_diffusion.evaluation.snapshots import cache_key, collect_snapshots  # noqa: E402
from nested_diffusion.pipelines import NestedDiTPipeline, NestedStableDiffusionPipeline  # noqa: E402

PROMPTS = ["a photo of a cat", "a red dog", "the blue cat"]   # 3 prompts for 4 samples: sample 3 wraps to 0
LABELS = [5, 7, 9]
SEED = 3


@pytest.fixture(scope="module")
def sd():
    pipe = NestedStableDiffusionPipeline.from_pipe(tiny_sd())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def dit():
    pipe = NestedDiTPipeline.from_pipe(tiny_dit())
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Counter:
    """Counts forward calls of modules (UNet / transformer calls and VAE decodes)."""

    def __init__(self, *modules):
        self.n = [0] * len(modules)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i):
        def hook(*_):
            self.n[i] += 1
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def decode_counter(pipe):
    """VAE decodes (the decoder's forward runs once per vae.decode)."""
    return Counter(pipe.unet if hasattr(pipe, "unet") else pipe.transformer, pipe.vae.decoder)


def alone(pipe, cond_arg, conds, samples, outer, inner, max_nfe, **kw):
    """The last output of a separate iter_anytime run of the given samples (seed SEED + i, its own prompt)."""
    last = None
    for last in pipe.iter_anytime(**{cond_arg: [conds[i % len(conds)] for i in samples]}, outer_steps=outer,
                                  inner_steps=inner, max_nfe=max_nfe, output_type="pt",
                                  generator=[torch.Generator().manual_seed(SEED + i) for i in samples], **kw):
        pass
    return last


def assert_same_image(snapshot, pt_images):
    """uint8 snapshot vs a pipeline's "pt" output in [0, 1]: equal up to float rounding at .5 boundaries."""
    ref = quantize(pt_images * 2 - 1)
    diff = (snapshot.int() - ref.int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01


# ------------------------------------------------------------------------------------------ snapshots
@pytest.mark.parametrize("outer,inner", [(1, 12), (3, 4)])
def test_sd_snapshots_equal_separate_budgeted_runs(sd, tmp_path, outer, inner):
    fac = sd_factory(sd, PROMPTS, height=16, width=16)
    marks = [2, 3, 6, 9, 12]
    snaps = collect_snapshots(fac, outer, inner, 4, SEED, marks, tmp_path, chunk=4)
    assert snaps.final.shape == (4, 3, 16, 16) and snaps.final.dtype == torch.uint8
    assert snaps.timing["denoiser_calls"] == 12 and snaps.timing["decode_s"] > 0
    for m in marks:
        out = alone(sd, "prompt", PROMPTS, range(4), outer, inner, m, height=16, width=16)
        assert out.nfe == snaps.update_nfes[snaps.mark_index[marks.index(m)]]
        assert_same_image(snaps.at(m), out.images)
    # samples 1 and 3 alone, in another batch: the same seed and prompt per sample index
    out = alone(sd, "prompt", PROMPTS, [1, 3], outer, inner, None, height=16, width=16)
    assert_same_image(snaps.final[[1, 3]], out.images)
    # negative control: sample 3 with sample 1's prompt is another image (the prompt assignment matters)
    other = alone(sd, "prompt", [PROMPTS[1]] * 4, [3], outer, inner, None, height=16, width=16)
    assert (quantize(other.images * 2 - 1).int() - snaps.final[[3]].int()).abs().max() > 2


def test_dit_snapshots_equal_separate_budgeted_runs_and_chunking(dit, tmp_path):
    fac = dit_factory(dit, LABELS)
    marks = [2, 4, 6, 8]
    snaps = collect_snapshots(fac, 2, 4, 4, SEED, marks, tmp_path / "a", chunk=4)
    for m in marks:
        out = alone(dit, "class_labels", LABELS, range(4), 2, 4, m)
        assert out.nfe == snaps.update_nfes[snaps.mark_index[marks.index(m)]]
        assert_same_image(snaps.at(m), out.images)
    chunked = collect_snapshots(fac, 2, 4, 4, SEED, marks, tmp_path / "b", chunk=3)   # batches [0,1,2], [3]
    assert all(torch.equal(a, b) for a, b in zip(snaps.images, chunked.images))
    other = alone(dit, "class_labels", [LABELS[1]], [0], 2, 4, None)                   # wrong label for sample 0
    assert (quantize(other.images * 2 - 1).int() - snaps.final[[0]].int()).abs().max() > 2


def test_resume_recomputes_nothing(sd, tmp_path):
    fac = sd_factory(sd, PROMPTS, height=16, width=16)
    marks = [3, 6, 9, 12]
    c = decode_counter(sd)
    try:
        first = collect_snapshots(fac, 3, 4, 2, SEED, marks, tmp_path, chunk=2)        # chunk [0, 1]
        assert c.n == [12, 4]          # 12 UNet calls; 4 decodes: preview 3, results 4 (mark 6), 8, 12
        full = collect_snapshots(sd_factory(sd, PROMPTS, height=16, width=16), 3, 4, 4, SEED, marks, tmp_path,
                                 chunk=2)
        assert c.n == [24, 8] and full.timing["chunks_cached"] == 1 and full.timing["samples_computed"] == 2
        again = collect_snapshots(sd_factory(sd, PROMPTS, height=16, width=16), 3, 4, 4, SEED, marks, tmp_path,
                                  chunk=2)
        assert c.n == [24, 8] and again.timing["chunks_cached"] == 2
    finally:
        c.close()
    assert all(torch.equal(a[:2], b) for a, b in zip(full.images, first.images))
    assert all(torch.equal(a, b) for a, b in zip(full.images, again.images))


def test_cache_key_identifies_prompts_options_and_weights(sd):
    base = sd_factory(sd, PROMPTS, height=16, width=16)
    same = sd_factory(sd, list(PROMPTS), height=16, width=16)
    assert cache_key(base, 2, 6, [6, 12]) == cache_key(same, 2, 6, [6, 12])
    others = [sd_factory(sd, PROMPTS[::-1], height=16, width=16),
              sd_factory(sd, PROMPTS, height=16, width=16, guidance_scale=3.0),
              sd_factory(sd, PROMPTS, height=24, width=16),
              sd_factory(sd, PROMPTS, height=16, width=16, inner_solver="dpmpp_2m")]
    keys = {cache_key(f, 2, 6, [6, 12]) for f in others}
    assert len(keys) == 4 and cache_key(base, 2, 6, [6, 12]) not in keys
    pipe2 = NestedStableDiffusionPipeline.from_pipe(tiny_sd(seed=1))
    assert cache_key(sd_factory(pipe2, PROMPTS, height=16, width=16), 2, 6, [6, 12]) != cache_key(base, 2, 6, [6, 12])


# ------------------------------------------------------------------------------------------ runners
class StandInScore:
    """A stand-in for the CLIP score: mean pixel value plus the prompt's length (checks prompt assignment)."""

    name, description = "stand_in", "mean pixel + len(prompt)"

    def __call__(self, images, prompts):
        return images.float().mean((1, 2, 3)) + torch.tensor([float(len(p)) for p in prompts])


@pytest.fixture(scope="module")
def rgb_reference():
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(24, 3, 16, 16, generator=g) * 2 - 1).clamp(-1, 1)
    ext = RandomRGBFeatures(8)
    return reference_from_images(ext, real[:16], real[16:], "random RGB images")


def test_rnd_sweep_and_budget_table_on_sd_with_prompt_scores(sd, rgb_reference, tmp_path):
    ref = rgb_reference
    fac = sd_factory(sd, PROMPTS, height=16, width=16)
    scores = [prompt_score(fac, StandInScore())]
    c = decode_counter(sd)
    try:
        doc = run_rnd_sweep(fac, ref, tmp_path, "1x12,3x4", total_nfe=12, step=3, n_samples=4, seed=SEED,
                            chunk=4, bootstrap=5, log=None, scores=scores)
        calls = list(c.n)
        bt = run_budget_table(fac, ref, tmp_path, budgets=(12,), fractions=(0.25, 0.5, 1.0), nested_outer=3,
                              step=3, n_samples=4, seed=SEED, chunk=4, bootstrap=5, log=None, scores=scores)
        assert c.n == calls and calls[0] == 24                       # the budget table reuses the sweep's cache
    finally:
        c.close()
    assert json.loads((tmp_path / "rnd_sweep.json").read_text())["scores"] == {"stand_in": "mean pixel + len(prompt)"}
    row = doc["configs"][1]
    assert row["label"] == "3x4" and row["distinct_update_nfes"] == [3, 4, 8, 12]
    for m in (3, 6, 12):
        out = alone(sd, "prompt", PROMPTS, range(4), 3, 4, m, height=16, width=16)
        img = quantize(out.images * 2 - 1)
        f = extract_features(ref.extractor, img)
        direct = frechet_distance(FeatureStats(torch.from_numpy(ref.stats.mu), torch.from_numpy(ref.stats.sigma),
                                               ref.stats.n), FeatureStats.from_features(f))
        k = doc["marks"].index(m)
        assert row["fd"][k] == pytest.approx(direct, rel=1e-4, abs=1e-6)
        expected = StandInScore()(img, [PROMPTS[i % 3] for i in range(4)]).double().mean()
        assert row["scores"]["stand_in"]["mean"][k] == pytest.approx(float(expected), abs=0.3)  # ≤ 1 level
    assert math.isfinite(row["auc"]) and "final_kid" in row and "final_precision_recall" in row
    for r in bt["rows"]:
        k = doc["marks"].index(r["nfe"])
        assert r["nested_stand_in"] == doc["configs"][1]["scores"]["stand_in"]["mean"][k]
        assert r["vanilla_fd"] == doc["configs"][0]["fd"][k]


def test_consistency_on_dit_and_stats_only_reference(dit, tmp_path):
    fac = dit_factory(dit, LABELS)
    ext = RandomRGBFeatures(8)
    doc = run_consistency(fac, [MSEDistance(), FeatureCosineDistance(ext)], tmp_path, "2x4,4x2", total_nfe=8,
                          step=2, n_samples=4, seed=SEED, chunk=4, log=None)
    row = doc["configs"][0]
    assert row["curves"]["mse"]["mean"][-1] == 0.0
    assert row["curves"]["feature_cosine"]["mean"][-1] == pytest.approx(0, abs=1e-6)
    early = quantize(alone(dit, "class_labels", LABELS, range(4), 2, 4, 2).images * 2 - 1).float() / 255
    final = quantize(alone(dit, "class_labels", LABELS, range(4), 2, 4, None).images * 2 - 1).float() / 255
    assert row["curves"]["mse"]["mean"][0] == pytest.approx(float(((early - final) ** 2).mean()), rel=1e-5)
    # a statistics-only reference: FD without KID / precision-recall
    f = extract_features(ext, torch.rand(12, 3, 16, 16) * 2 - 1)
    np.savez(tmp_path / "ref.npz", mu=f.double().mean(0).numpy(), sigma=np.cov(f.double().numpy(), rowvar=False))
    ref = reference_from_stats(ext, tmp_path / "ref.npz")
    doc = run_rnd_sweep(fac, ref, tmp_path / "sweep", "2x4", total_nfe=8, step=2, n_samples=4, seed=SEED, chunk=4,
                        bootstrap=0, cache_dir=tmp_path, log=None)
    r = doc["configs"][0]
    assert all(v > 0 for v in r["fd"]) and "final_kid" not in r and "final_precision_recall" not in r
    assert doc["reference"]["n"] is None
    with pytest.raises(ValueError, match="8-d, but the feature network .* gives 16-d"):
        reference_from_stats(RandomRGBFeatures(16), tmp_path / "ref.npz")


# ------------------------------------------------------------------------------------------ inputs
def test_prompt_files_and_class_labels(tmp_path, dit):
    (tmp_path / "p.txt").write_text("a photo of a cat\n\n  a red   dog \n")
    assert read_prompts(tmp_path / "p.txt") == ["a photo of a cat", "a red dog"]
    (tmp_path / "p.json").write_text(json.dumps(["x", "y"]))
    assert read_prompts(tmp_path / "p.json", limit=1) == ["x"]
    coco = {"annotations": [{"image_id": 9, "caption": "nine a"}, {"image_id": 2, "caption": "two"},
                            {"image_id": 9, "caption": "nine b"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    assert read_prompts(tmp_path / "c.json") == ["two", "nine a"]
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(tmp_path / "e.txt")
    with pytest.raises(FileNotFoundError, match="prompts: no file"):
        read_prompts(tmp_path / "missing.txt")
    assert parse_class_labels("all", 4) == [0, 1, 2, 3] and parse_class_labels("1,5,2-4") == [1, 5, 2, 3, 4]
    (tmp_path / "l.txt").write_text("7\ngoldfish\n")
    fac = dit_factory(dit, str(tmp_path / "l.txt"))
    assert fac.cond_for([0, 1, 2]) == [7, 1, 7] and fac.info["labels"]["count"] == 2
    assert dit_factory(dit).cond_for([0, 999, 1000]) == [0, 999, 0]    # 'all': class-balanced i % 1000
    for bad, msg in (("1000", "not a class id in"), ("5-2", "range '5-2' is empty"), ("salmon", "unknown label")):
        with pytest.raises(ValueError, match=msg):
            dit_factory(dit, bad)


def test_bad_arguments_fail_before_sampling(sd, dit, tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="NestedStableDiffusionPipeline.from_pipe"):
        sd_factory(tiny_sd(), PROMPTS)
    with pytest.raises(ValueError, match="decode_batch"):
        sd_factory(sd, PROMPTS, decode_batch=0)
    with pytest.raises(ValueError, match="height: must be a positive multiple of 8"):
        sd_factory(sd, PROMPTS, height=12)
    with pytest.raises(ValueError, match="inner_eta"):
        sd_factory(sd, PROMPTS, inner_solver="dpmpp_2m", inner_eta=0.5)
    with pytest.raises(ValueError, match="prompt scores need an sd_factory"):
        prompt_score(dit_factory(dit, LABELS), StandInScore())
    with pytest.raises(FileNotFoundError, match="no CLIP model"):
        CLIPScorer(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(FileNotFoundError, match="Inception weights not found"):
        InceptionFeatures()


# ------------------------------------------------------------------------------------------ CLIP score
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_scorer_from_a_local_folder(clip_dir):
    scorer = CLIPScorer(clip_dir, batch=2)
    g = torch.Generator().manual_seed(0)
    imgs = (torch.rand(3, 3, 20, 24, generator=g) * 255).to(torch.uint8)     # non-square: resized + cropped
    prompts = ["a photo of a cat", "a red dog", "the blue cat " * 40]          # the last one is truncated
    cos = scorer.cosine(imgs, prompts)
    assert cos.shape == (3,) and bool((cos.abs() <= 1 + 1e-6).all())
    assert torch.allclose(scorer(imgs, prompts), (100 * cos).clamp(min=0), atol=1e-4)   # score = max(100·cos, 0)
    alone = torch.cat([scorer.cosine(imgs[i:i + 1], prompts[i:i + 1]) for i in range(3)])
    assert torch.allclose(cos, alone, atol=1e-5)                               # batch-independent, in order
    swapped = scorer.cosine(imgs[:2], prompts[1::-1])
    assert not torch.allclose(swapped, cos[:2], atol=1e-4)                     # the prompt matters
    other = scorer.cosine(imgs.flip(0), prompts)
    assert not torch.allclose(other, cos, atol=1e-4)                           # the image matters
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        scorer(imgs, prompts[:2])


# ------------------------------------------------------------------------------------------ CLI
def _cli(argv):
    p = argparse.ArgumentParser()
    cli_eval.add_parser(p.add_subparsers(dest="command", required=True))
    return cli_eval.run(p.parse_args(["eval"] + argv))


def test_cli_with_pipelines(tmp_path, capsys, clip_dir):
    tiny_sd().save_pretrained(tmp_path / "sd")
    tiny_dit().save_pretrained(tmp_path / "dit")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS))
    (tmp_path / "real").mkdir()
    g = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(g.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "real" / f"{i:02d}.png")
    sd_args = ["--pipeline", "sd", "--model-path", str(tmp_path / "sd"), "--prompts", str(tmp_path / "prompts.txt"),
               "--height", "16", "--width", "16", "--quiet", "--samples", "4", "--chunk", "4"]
    code = _cli(["rnd-sweep", *sd_args, "--out", str(tmp_path / "o"), "--configs", "1x4,2x2", "--total-nfe", "4",
                 "--step", "2", "--features", "random-rgb", "--reference-images", str(tmp_path / "real"),
                 "--reference-limit", "6", "--heldout", "4", "--bootstrap", "3", "--clip-model", str(clip_dir)])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "o" / "rnd_sweep.json").read_text())
    assert doc["sampler"]["pipeline"] == "sd" and doc["sampler"]["solver"] == "ddim"
    assert doc["sampler"]["prompts"]["count"] == 3 and doc["reference"]["n"] == 6 and doc["noise_floor"]["n"] == 4
    assert all(len(r["scores"]["clip_score"]["mean"]) == 2 for r in doc["configs"])
    code = _cli(["consistency", "--pipeline", "dit", "--model-path", str(tmp_path / "dit"), "--class-labels", "0-3",
                 "--metrics", "mse,feature_cosine", "--features", "random-rgb", "--samples", "4", "--chunk", "4",
                 "--configs", "2x2,4x1", "--total-nfe", "4", "--step", "2", "--out", str(tmp_path / "c"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "c" / "consistency.json").read_text())
    assert doc["sampler"]["pipeline"] == "dit" and doc["sampler"]["solver"] == "ddpm"
    code = _cli(["qualitative", "--pipeline", "dit", "--model-path", str(tmp_path / "dit"), "--configs", "1x4,2x2",
                 "--total-nfe", "4", "--rows-every", "2", "--show", "0,1", "--out", str(tmp_path / "q"), "--quiet"])
    assert code == 0 and (tmp_path / "q" / "qualitative.png").is_file()
    capsys.readouterr()
    for argv, msg in ((["consistency", "--pipeline", "sd", "--model-path", str(tmp_path / "sd")],
                       "--prompts: required"),
                      (["consistency", *sd_args, "--model", "x"], "--model: a TinyUNet folder"),
                      (["consistency", "--prompts", "p.txt"], "--prompts: only for --pipeline sd|dit"),
                      (["rnd-sweep", *sd_args, "--features", "random-rgb"], "give exactly one reference"),
                      (["consistency", "--pipeline", "dit", "--model-path", str(tmp_path)], "model_index.json missing"),
                      (["rnd-sweep", "--pipeline", "dit", "--model-path", str(tmp_path / "dit"), "--reference-stats",
                        str(tmp_path / "prompts.txt"), "--clip-model", str(clip_dir)], "--clip-model: the CLIP score")):
        assert _cli(argv + ["--out", str(tmp_path / "bad")]) == 2
        assert msg in capsys.readouterr().err, argv
