"""A real interruption: SIGKILL an `eval rnd-sweep` process mid-run, rerun the same command, and get the JSON of
an uninterrupted run (everything but wall-clock timing), with no finished chunk sampled twice."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import nested_diffusion
from nested_diffusion.bundled import FashionClassifier, TinyUNet

TIMING_KEYS = {"timing", "timing_total", "wall_time_s", "started"}


def _strip(doc):
    if isinstance(doc, dict):
        return {k: _strip(v) for k, v in doc.items() if k not in TIMING_KEYS}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return doc


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    try:
        from nested_diffusion.bundled.data import find_data_dir
        find_data_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    TinyUNet(channels=(16, 32)).eval().save_pretrained(d / "unet")
    FashionClassifier().eval().save_pretrained(d / "clf")
    return d


def _command(models, out):
    return [sys.executable, "-m", "nested_diffusion.cli", "eval", "rnd-sweep", "--model", str(models / "unet"),
            "--classifier", str(models / "clf"), "--samples", "48", "--chunk", "2", "--configs", "1x4,2x2",
            "--total-nfe", "4", "--step", "2", "--reference-limit", "64", "--heldout", "64", "--bootstrap", "5",
            "--device", "cpu", "--out", str(out)]


def _env():
    src = str(Path(nested_diffusion.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_json(models, tmp_path):
    full = tmp_path / "full"
    subprocess.run(_command(models, full), env=_env(), check=True, capture_output=True, timeout=600)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(models, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("cache/1x4-*/*.pt"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = len(list(out.glob("cache/*/*.pt")))
    assert 3 <= done_before < 48 and not (out / "rnd_sweep.json").exists()
    for f in out.glob("cache/*/*.pt"):                 # a kill mid-write may leave a temp file, never a torn chunk
        torch.load(f, weights_only=True)

    rerun = subprocess.run(_command(models, out), env=_env(), check=True, capture_output=True, text=True,
                           timeout=600)
    assert "wrote" in rerun.stdout
    resumed = json.loads((out / "rnd_sweep.json").read_text())
    reference = json.loads((full / "rnd_sweep.json").read_text())
    assert _strip(resumed) == _strip(reference)
    cached = sum(r["timing"]["chunks_cached"] for r in resumed["configs"])
    assert cached == done_before                        # every chunk finished before the kill was reused
    assert sum(r["timing"]["chunks_computed"] for r in resumed["configs"]) == 48 - done_before
