"""Sampling at scale (nested_diffusion.distributed, `sample` / `merge` / `eval from-samples`), on CPU with gloo:
torchrun with 2 processes gives the same bytes as one process; a SIGKILLed run resumes with another process
count, computing every missing item exactly once; fewer items than ranks; a folder of another configuration is
refused; the merged .npz has the ADM evaluator's layout."""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nested_diffusion.bundled.data import DEFAULT_DIR
from nested_diffusion.cli import main
from nested_diffusion.cli import sample as cli_sample
from nested_diffusion.core.noise import DeviceNoiseSource, NoiseSource
from nested_diffusion.distributed import (SampleJob, SampleStore, Shard, assign, parse_shard, run_shard,
                                          shard_from_env)
from nested_diffusion.evaluation.snapshots import collect_snapshots

ENV = dict(os.environ, OMP_NUM_THREADS="1")
TINY = ["--num-samples", "7", "--outer-steps", "3", "--inner-steps", "2", "--step", "2", "--batch-size", "2",
        "--quiet"]


def torchrun(nproc: int, args, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "nested_diffusion.cli", "sample", *args]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(p: subprocess.Popen, timeout: float = 120) -> str:
    """stdout (the ranks' lines), then stderr (torchrun's and the workers' warnings) kept apart."""
    out, err = p.communicate(timeout=timeout)
    return out + "\n--- stderr ---\n" + err


def summaries(log: str) -> list[dict]:
    """The ranks' summary objects in a torchrun log (two ranks' lines may share a line of the joint pipe)."""
    dec, out, i = json.JSONDecoder(), [], log.find('{"summary"')
    while i >= 0:
        obj, end = dec.raw_decode(log, i)
        out.append(obj["summary"])
        i = log.find('{"summary"', end)
    return out


def merged_bytes(root: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted((root / "merged").glob("nfe_*.npz"))}


def item_bytes(root: Path) -> dict:
    """The samples of every item (the npz container itself may differ only in member order, never here)."""
    store = SampleStore(root)
    cfg = store.read_manifest()["config"]
    return {b: store.item_path(b).read_bytes() for b in range(store.num_items(cfg))}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert main(["sample", "--out-dir", str(out), *TINY]) == 0
    assert main(["merge", "--out-dir", str(out)]) == 0
    return out


# ------------------------------------------------------------------------------------------- ranks and shards
def test_assignment_partitions_items_without_padding():
    for n in (0, 1, 5, 12):
        for world in (1, 2, 3, 7):
            for mode in ("strided", "contiguous"):
                parts = [assign(n, r, world, mode) for r in range(world)]
                flat = [i for p in parts for i in p]
                assert sorted(flat) == list(range(n)) and len(flat) == n, (n, world, mode)
                assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    assert assign(2, 2, 3) == [] and assign(10, 1, 3, "contiguous") == [4, 5, 6]
    with pytest.raises(ValueError, match="--assign"):
        assign(4, 0, 2, "random")


def test_shard_from_env_and_spec():
    assert shard_from_env(None, {}) == Shard(0, 1, 0, 1)
    assert shard_from_env(None, dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")) == Shard(1, 2, 1, 2)
    assert shard_from_env("3/8", {}) == Shard(3, 8, 0, 1)
    # a SLURM array task that is itself a torchrun job of 2: global rank i·W + r of N·W
    assert shard_from_env("1/4", dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1")) == Shard(3, 8, 1, 2)
    for bad in ("8/8", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="RANK"):
        shard_from_env(None, dict(RANK="2", WORLD_SIZE="2"))


def test_sample_flags_survive_torchrun_prefix_matching():
    """torchrun abbreviates its own flags even after the module name: none of ours may be a prefix of one."""
    import argparse
    from torch.distributed.run import get_args_parser
    theirs = {s for a in get_args_parser()._actions for s in a.option_strings if s.startswith("--")}
    sub = argparse.ArgumentParser().add_subparsers()
    cli_sample.add_parser(sub)
    ours = {s for p in sub.choices.values() for a in p._actions for s in a.option_strings
            if s.startswith("--") and s != "--help"}
    assert "--num-samples" in ours and "--out-dir" in ours
    clashes = sorted((o, t) for o in ours for t in theirs if t.startswith(o))
    assert clashes == []


# --------------------------------------------------------------------------------------- world-size invariance
def test_torchrun_two_processes_equal_single_process(single, tmp_path):
    out = tmp_path / "two"
    log = finish(torchrun(2, ["--out-dir", str(out), *TINY, "--merge-when-done"]))
    assert "wrote 3 .npz files" in log, log
    ranks = summaries(log)
    assert sorted(s["rank"] for s in ranks) == [0, 1] and sum(s["computed"] for s in ranks) == 4
    assert merged_bytes(out) == merged_bytes(single) and len(merged_bytes(out)) == 3
    assert item_bytes(out) == item_bytes(single)


def test_shards_without_rendezvous_equal_single_process(single, tmp_path):
    out = tmp_path / "shards"
    for i in (1, 0):                                          # order does not matter
        assert main(["sample", "--out-dir", str(out), *TINY, "--shard", f"{i}/2", "--assign", "contiguous"]) == 0
    assert main(["merge", "--out-dir", str(out)]) == 0
    assert merged_bytes(out) == merged_bytes(single)


def test_fewer_items_than_ranks(tmp_path):
    out = tmp_path / "few"
    args = ["--out-dir", str(out), "--num-samples", "2", "--outer-steps", "3", "--inner-steps", "2", "--step",
            "2", "--batch-size", "1", "--quiet", "--merge-when-done"]
    log = finish(torchrun(3, args))
    ranks = {s["rank"]: s for s in summaries(log)}
    assert sorted(ranks) == [0, 1, 2], log
    assert ranks[2]["assigned"] == 0 and ranks[0]["computed"] + ranks[1]["computed"] == 2
    ref = tmp_path / "few1"
    assert main(["sample", *args[:1], str(ref), *args[2:-1]]) == 0 and main(["merge", "--out-dir", str(ref)]) == 0
    assert merged_bytes(out) == merged_bytes(ref)


# ------------------------------------------------------------------------------------------------- resume
def _pids_with_items(root: Path, rank: int) -> list[int]:
    logs = list((root / "logs").glob(f"*-rank{rank}of*.jsonl")) if (root / "logs").is_dir() else []
    return [int(p.name.rsplit("-", 2)[-2]) for p in logs if p.read_text().strip()]


def test_sigkill_one_rank_then_resume_with_three_processes(tmp_path):
    out, ref = tmp_path / "killed", tmp_path / "ref"
    args = ["--out-dir", str(out), "--num-samples", "10", "--outer-steps", "4", "--inner-steps", "10",
            "--batch-size", "1", "--quiet"]
    p = torchrun(2, args)
    deadline = time.time() + 60
    while not _pids_with_items(out, 1) and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    pids = _pids_with_items(out, 1)
    assert pids, "rank 1 never finished an item"
    os.kill(pids[0], signal.SIGKILL)
    log = finish(p)
    assert p.returncode != 0, log                   # torchrun tears the group down
    store = SampleStore(out)
    cfg = store.read_manifest()["config"]
    before = {b for b in range(10) if store.is_done(b)}
    first_logged = [r["item"] for r in store.computed_log()]
    assert 0 < len(before) < 10 and set(first_logged) <= before
    log = finish(torchrun(3, args))                  # the same command, another process count
    assert "computed" in log, log
    rows = store.computed_log()
    logged = [r["item"] for r in rows]
    assert len(logged) == len(set(logged)), "an item was computed twice"
    assert store.missing(cfg) == []
    resumed = set(logged) - set(first_logged)
    assert resumed == set(range(10)) - before        # exactly the missing items, each once
    ranks = summaries(log)
    assert len(ranks) == 3 and sum(s["computed"] for s in ranks) == 10 - len(before)
    assert sum(s["skipped"] for s in ranks) == len(before)
    assert main(["sample", "--out-dir", str(ref), *args[2:]]) == 0
    assert item_bytes(out) == item_bytes(ref)
    assert main(["merge", "--out-dir", str(out)]) == 0 and main(["merge", "--out-dir", str(ref)]) == 0
    assert merged_bytes(out) == merged_bytes(ref)


def test_other_configuration_is_refused(single, capsys):
    before = item_bytes(single)
    assert main(["sample", "--out-dir", str(single), *TINY, "--guidance", "3.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out-dir:") and "sampler.guidance (2.0 → 3.5)" in err
    assert main(["sample", "--out-dir", str(single), *TINY, "--noise", "device"]) == 2
    assert "noise.mode ('cpu' → 'device')" in capsys.readouterr().err
    assert item_bytes(single) == before              # nothing touched


def test_merge_refuses_incomplete_run(tmp_path, capsys):
    out = tmp_path / "half"
    assert main(["sample", "--out-dir", str(out), *TINY, "--shard", "0/2"]) == 0
    assert main(["merge", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "2 of 4 items missing (3 of 7 samples; items 1, 3)" in err
    assert not (out / "merged").exists() or not list((out / "merged").glob("*.npz"))
    assert main(["merge", "--out-dir", str(tmp_path / "nothing")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- outputs
def _adm_read(path: Path, name: str = "arr_0", batch: int = 3) -> np.ndarray:
    """Read an array the way guided-diffusion's evaluator streams it: zip member, .npy header, raw batches."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        assert not fortran
        per = int(np.prod(shape[1:])) * dtype.itemsize
        rows = []
        while chunk := f.read(per * batch):
            rows.append(np.frombuffer(chunk, dtype).reshape(-1, *shape[1:]))
    return np.concatenate(rows)


def test_merged_npz_has_the_adm_layout(single):
    store = SampleStore(single)
    for m in (2, 4, 6):
        path = single / "merged" / f"nfe_{m:04d}.npz"
        with np.load(path) as z:
            assert z.files == ["arr_0", "arr_1"]
            x, y = z["arr_0"], z["arr_1"]
        assert x.shape == (7, 28, 28, 3) and x.dtype == np.uint8
        assert (x[..., 0] == x[..., 1]).all() and (x[..., 0] == x[..., 2]).all()   # grayscale → RGB
        assert x.min() < 60 and x.max() > 200                                  # the 0–255 range, not [−1, 1]
        assert y.tolist() == [i % 10 for i in range(7)]                        # label i % classes
        assert np.array_equal(_adm_read(path), x)
        expect = []
        for b in range(4):
            part = store.read_item(b)
            j = int(part["mark_index"][[2, 4, 6].index(m)])
            expect.append(part["images"][j][:, 0])
            assert part["seeds"].tolist() == part["indices"].tolist()           # seed 0: sample i has seed i
        assert np.array_equal(x[..., 0], np.concatenate(expect))
    with np.load(single / "merged" / "nfe_0002.npz") as a, np.load(single / "merged" / "nfe_0006.npz") as b:
        assert not np.array_equal(a["arr_0"], b["arr_0"])                      # anytime results differ


def test_png_folders(single, tmp_path):
    assert main(["merge", "--out-dir", str(single), "--png"]) == 0
    from PIL import Image
    folder = single / "merged" / "png" / "nfe_0006"
    files = sorted(p.name for p in folder.iterdir())
    assert files == [f"{i:06d}.png" for i in range(7)]
    with np.load(single / "merged" / "nfe_0006.npz") as z:
        assert np.array_equal(np.asarray(Image.open(folder / "000005.png")), z["arr_0"][5, ..., 0])
    assert main(["merge", "--out-dir", str(single), "--png"]) == 0            # a rerun swaps the folders
    assert sorted(p.name for p in folder.iterdir()) == files


# -------------------------------------------------------------------------------------------------- noise
def test_device_noise_rows_depend_on_their_seed_only():
    a = DeviceNoiseSource([5, 9], "cpu", prefetch=4).randn((3, 16))
    b = DeviceNoiseSource([9], "cpu", prefetch=4).randn((3, 16))
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    again = DeviceNoiseSource([5, 9], "cpu", prefetch=4)
    x = torch.zeros(2, 3, 16)
    assert torch.equal(again.randn_like(x), a) and again.batch_size == 2
    assert isinstance(again, NoiseSource)          # accepted wherever a NoiseSource is (pipelines' make_noise)
    with pytest.raises(ValueError, match="prefetch"):
        DeviceNoiseSource([1], prefetch=0)


def test_device_noise_run_is_deterministic_and_recorded(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["sample", "--out-dir", str(a), *TINY, "--noise", "device", "--noise-prefetch", "3"]) == 0
    assert main(["sample", "--out-dir", str(b), *TINY, "--noise", "device", "--noise-prefetch", "3",
                 "--shard", "0/1", "--assign", "contiguous"]) == 0
    assert item_bytes(a) == item_bytes(b)
    noise = SampleStore(a).read_manifest()["config"]["noise"]
    assert noise == dict(mode="device", prefetch=3, device_type="cpu")


# ------------------------------------------------------------------------------------------- from samples
def test_from_samples_equals_the_runners_on_the_same_images(tmp_path):
    """A sample folder's images are the eval cache's (same seeds, conditioning, batches); FD/AUC from the
    folder (read item by item) equal `run_rnd_sweep`'s, consistency equals `run_consistency`'s."""
    from toy import mixture_images, toy_factory
    from toy import calibrated_classifier
    from nested_diffusion.bundled.features import ClassifierFeatures
    from nested_diffusion.evaluation.reference import reference_from_images
    from nested_diffusion.evaluation.runners import run_rnd_sweep
    from nested_diffusion.evaluation.sample_folder import SampleSet, evaluate_sample_sets
    den = mixture_images()
    real = den.sample(400, torch.Generator().manual_seed(1)).float().reshape(-1, 1, 8, 8).clamp(-1, 1)
    ref = reference_from_images(ClassifierFeatures(calibrated_classifier(real[:200])), real[:200], real[200:])
    factory = toy_factory(den)
    job = SampleJob(factory, 3, 8, 24, seed=4, batch_size=8, step=3)
    store = SampleStore(tmp_path / "toy")
    for r in (0, 1, 2):
        run_shard(job, store, Shard(r, 3))
    snaps, _ = store.snapshots()
    cached = collect_snapshots(factory, 3, 8, 24, 4, job.marks, tmp_path / "cache", 8)
    assert all(torch.equal(x, y) for x, y in zip(snaps.images, cached.images))
    sweep = run_rnd_sweep(factory, ref, tmp_path / "sweep", "3x8", 24, 3, 24, 4, 8, bootstrap=0, kid=False, log=None)
    doc = evaluate_sample_sets([SampleSet("3x8", 3, 8, 24, store.iter_items)], ref, step=3)
    mem = evaluate_sample_sets([SampleSet.of("3x8", 3, 8, 24, snaps)], ref, step=3)
    assert mem["configs"][0]["fd"] == doc["configs"][0]["fd"]
    from nested_diffusion.evaluation.consistency import MSEDistance
    from nested_diffusion.evaluation.runners import run_consistency
    cons = run_consistency(factory, [MSEDistance()], tmp_path / "cons", "3x8", 24, 3, 24, 4, 8, log=None)
    ours = evaluate_sample_sets([SampleSet("3x8", 3, 8, 24, store.iter_items)], None, [MSEDistance()], step=3)
    for key in ("mean", "std", "sem"):
        assert ours["configs"][0]["consistency"]["mse"][key] == pytest.approx(
            cons["configs"][0]["curves"]["mse"][key], rel=1e-9, abs=1e-15)
    assert doc["configs"][0]["fd"] == pytest.approx(sweep["configs"][0]["fd"], rel=1e-12)
    assert doc["configs"][0]["auc"] == pytest.approx(sweep["configs"][0]["auc"], rel=1e-12)


@pytest.mark.skipif(not Path(DEFAULT_DIR).is_dir(),
                    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
def test_eval_from_samples_cli(single, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "from-samples", "--samples-from", str(single), "--out", str(out), "--step", "2",
                 "--reference-limit", "100", "--heldout", "100", "--metrics", "mse,feature_cosine",
                 "--bootstrap", "5", "--quiet"]) == 0
    doc = json.loads((out / "from_samples.json").read_text())
    row = doc["configs"][0]
    assert row["label"] == "3x2" and row["samples"] == 7 and len(row["fd"]) == 3
    assert row["auc"] == pytest.approx(2 * sum(np.log(row["fd"])))
    assert [b["nfe"] for b in row["budget"]] == [1, 2, 4, 5, 6] and row["budget"][0]["fd"] is None
    assert row["budget"][3]["fd"] == row["fd"][1]                     # after 5 NFE: the result of NFE 4
    assert row["consistency"]["mse"]["mean"][-1] == 0.0 and row["consistency"]["mse"]["mean"][0] > 0
    assert (out / "from_samples_fd.png").is_file()
    half = tmp_path / "half"
    assert main(["sample", "--out-dir", str(half), *TINY, "--shard", "1/2"]) == 0
    capsys.readouterr()
    assert main(["eval", "from-samples", "--samples-from", str(half), "--out", str(out)]) == 2
    assert "incomplete: 2 of 4 items missing" in capsys.readouterr().err


def test_bad_sample_arguments(tmp_path, capsys):
    for extra, msg in ((["--shard", "2/2"], "--shard"), (["--step", "0"], "--step"),
                       (["--step", "4"], "total_nfe: 6 is not a multiple of step=4"),
                       (["--merge-when-done", "--shard", "0/2"], "--merge-when-done"),
                       (["--png"], "--png"), (["--device", "tpu-x"], "--device")):
        args = ["sample", "--out-dir", str(tmp_path / "x"), *TINY, *extra]
        try:
            code = main(args)
        except SystemExit as e:
            code = e.code
        assert code == 2, extra
        assert msg in capsys.readouterr().err, extra


def test_dit_pipeline_run_is_world_size_invariant_and_class_balanced(tmp_path):
    """--pipeline dit from a saved tiny random-weight DiT: 2 shards = 1 process, labels i % 1000 in arr_1, RGB."""
    pytest.importorskip("diffusers")
    from fixtures_tiny import tiny_dit
    from nested_diffusion.pipelines import NestedDiTPipeline
    model = tmp_path / "dit"
    NestedDiTPipeline.from_pipe(tiny_dit()).save_pretrained(model)
    args = ["--pipeline", "dit", "--model-path", str(model), "--num-samples", "3", "--outer-steps", "2",
            "--inner-steps", "2", "--step", "update", "--batch-size", "2", "--device", "cpu", "--quiet"]
    for i in (0, 1):                        # two shards (as two ranks would run them), in this process
        assert main(["sample", "--out-dir", str(tmp_path / "two"), *args, "--shard", f"{i}/2"]) == 0
    assert main(["merge", "--out-dir", str(tmp_path / "two")]) == 0
    assert main(["sample", "--out-dir", str(tmp_path / "one"), *args]) == 0
    assert main(["merge", "--out-dir", str(tmp_path / "one")]) == 0
    assert merged_bytes(tmp_path / "two") == merged_bytes(tmp_path / "one")
    assert sorted(merged_bytes(tmp_path / "one")) == ["nfe_0001.npz", "nfe_0002.npz", "nfe_0004.npz"]
    with np.load(tmp_path / "one" / "merged" / "nfe_0004.npz") as z:
        assert z["arr_0"].shape == (3, 16, 16, 3) and z["arr_0"].dtype == np.uint8
        assert z["arr_1"].tolist() == [0, 1, 2]
    # from-samples on pipeline samples: a reference made of the final images themselves gives FD 0 at the end
    assert main(["merge", "--out-dir", str(tmp_path / "one"), "--png", "--quiet"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "from-samples", "--samples-from", str(tmp_path / "one"), "--out", str(out), "--step", "2",
                 "--features", "random-rgb", "--reference-images",
                 str(tmp_path / "one" / "merged" / "png" / "nfe_0004"), "--quiet"]) == 0
    row = json.loads((out / "from_samples.json").read_text())["configs"][0]
    assert row["stored_marks"] == [1, 2, 4] and len(row["fd"]) == 2
    assert abs(row["final_fd"]) < 1e-3 * max(row["fd_at_stored_marks"]) and row["fd_at_stored_marks"][0] > 0
    assert row["auc"] is None and "ln needs a finite positive value" in row["auc_error"]


def test_sd_pipeline_prompt_per_index(tmp_path):
    """--pipeline sd with a prompt file: sample i gets prompt i % count (in the manifest), no label array."""
    pytest.importorskip("diffusers")
    from fixtures_tiny import tiny_sd
    from nested_diffusion.pipelines import NestedStableDiffusionPipeline
    model, prompts = tmp_path / "sd", tmp_path / "prompts.txt"
    NestedStableDiffusionPipeline.from_pipe(tiny_sd()).save_pretrained(model)
    prompts.write_text("a photo of a cat\na red dog\n")
    args = ["--pipeline", "sd", "--model-path", str(model), "--prompts", str(prompts), "--num-samples", "3",
            "--outer-steps", "2", "--inner-steps", "2", "--step", "2", "--batch-size", "2", "--device", "cpu",
            "--quiet"]
    assert main(["sample", "--out-dir", str(tmp_path / "a"), *args]) == 0
    assert main(["sample", "--out-dir", str(tmp_path / "b"), *args, "--shard", "1/2"]) == 0
    assert main(["sample", "--out-dir", str(tmp_path / "b"), *args, "--shard", "0/2"]) == 0
    assert item_bytes(tmp_path / "a") == item_bytes(tmp_path / "b")
    info = SampleStore(tmp_path / "a").read_manifest()["config"]["sampler"]
    assert info["prompts"]["count"] == 2 and info["conditioning"] == "sample i: seed + i, prompt i % count"
    assert main(["merge", "--out-dir", str(tmp_path / "a")]) == 0
    with np.load(tmp_path / "a" / "merged" / "nfe_0004.npz") as z:
        assert z.files == ["arr_0"] and z["arr_0"].shape == (3, 16, 16, 3)


def test_ctrl_c_keeps_finished_items_and_exits_130(tmp_path):
    out = tmp_path / "int"
    n = 12   # enough work that the run cannot finish between its first item and the signal
    cmd = [sys.executable, "-m", "nested_diffusion.cli", "sample", "--out-dir", str(out), "--num-samples", str(n),
           "--outer-steps", "4", "--inner-steps", "20", "--batch-size", "1", "--quiet"]
    # a shell without job control starts background jobs with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: give the child the default disposition, as an interactive Ctrl+C would find it
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not _pids_with_items(out, 0) and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "rerun the same command to resume" in err, err
    store = SampleStore(out)
    done = [b for b in range(n) if store.is_done(b)]
    assert 0 < len(done) < n
    assert not list(out.rglob("*.tmp"))                       # the item in flight left no half-written file
    assert main(["sample", *cmd[4:]]) == 0 and store.missing(store.read_manifest()["config"]) == []


def test_a_damaged_item_is_recomputed_on_rerun_and_merge_is_byte_identical(tmp_path):
    """Issue: a rerun over a corrupt item used to count it as done (exit 0) and merge failed with BadZipFile."""
    from nested_diffusion import cli
    from nested_diffusion.distributed import SampleStore
    args = ["--num-samples", "6", "--outer-steps", "2", "--inner-steps", "2", "--step", "2", "--batch-size", "2",
            "--quiet", "--threads", "1"]
    good, bad = tmp_path / "good", tmp_path / "bad"
    for out in (good, bad):
        assert cli.main(["sample", "--out-dir", str(out), *args]) == 0
    item = SampleStore(bad).item_path(1)
    data = bytearray(item.read_bytes())
    data[len(data) // 2] ^= 0xFF                                    # one flipped byte inside the images
    item.write_bytes(bytes(data))
    assert cli.main(["merge", "--out-dir", str(bad), "--quiet"]) == 2   # a clear error, not a traceback
    assert cli.main(["sample", "--out-dir", str(bad), *args]) == 0      # the rerun recomputes item 1 only
    assert cli.main(["merge", "--out-dir", str(good), "--quiet"]) == 0
    assert cli.main(["merge", "--out-dir", str(bad), "--quiet"]) == 0
    for a in sorted((good / "merged").glob("*.npz")):
        assert a.read_bytes() == (bad / "merged" / a.name).read_bytes()
