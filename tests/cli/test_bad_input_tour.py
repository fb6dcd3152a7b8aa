"""The bad-input tour (issue "Every bad input gets a clear answer, and nothing half-done survives a crash") kept as a
table: every row is one command line a new user might type; each must exit 2 with one message naming the option
or file at fault, print no traceback, and leave nothing behind (the row's ``absent`` path does not exist after
the run; for an existing folder: nothing new in it).

Rows run in this process (``cli.main``; an exception escaping it is a traceback) except the read-only ones, which
need a folder this process really cannot write: run as root (as here) a child gets a read-only bind mount of it in
its own mount namespace (``unshare -rm``); as another user the folder is chmod'ed read-only.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nested_diffusion import cli

SRC = Path(__file__).resolve().parents[2] / "src"
TWENTY_THOUSAND = ",".join(["0"] * 20000)
SAMPLE = ["--num-samples", "2", "--outer-steps", "1", "--inner-steps", "2", "--step", "1", "--batch-size", "1",
          "--quiet"]

# (name, argv, fragment the message must hold, path that must not exist afterwards (None: nothing to check))
# placeholders: {d} the row's fresh folder, {file} a file, {done} a finished sample folder, {half} an unfinished one,
# {bad_manifest} a folder with a damaged manifest.json, {bad_item} a finished folder with one damaged item,
# {bad_model} a model folder with a damaged config, {trunc} a truncated calibration JSON
ROWS = [
    # --out / --out-dir / --cache-dir pointing at a file, under a file, or where nothing can be written
    ("generate --out file", ["generate", "--out", "{file}"], "--out: '{file}' is a file, not a folder", None),
    ("generate --out under a file", ["generate", "--out", "{file}/sub"], "which is a file, not a folder",
     "{file}/sub"),
    ("generate --out /proc/x", ["generate", "--out", "/proc/nd-x"], "--out: cannot write into '/proc/nd-x'",
     "/proc/nd-x"),
    ("sample --out-dir file", ["sample", "--out-dir", "{file}", *SAMPLE], "--out-dir: '{file}' is a file", None),
    ("sample --out-dir /proc/x", ["sample", "--out-dir", "/proc/nd-x", *SAMPLE],
     "--out-dir: cannot write into '/proc/nd-x'", "/proc/nd-x"),
    ("eval rnd-sweep --out file", ["eval", "rnd-sweep", "--out", "{file}"], "--out: '{file}' is a file", None),
    ("eval rnd-sweep --cache-dir file", ["eval", "rnd-sweep", "--out", "{d}/o", "--cache-dir", "{file}"],
     "--cache-dir: '{file}' is a file", "{d}/o"),
    ("eval from-samples --out file", ["eval", "from-samples", "--samples-from", "{done}", "--out", "{file}"],
     "--out: '{file}' is a file", None),
    ("restore --out file", ["restore", "--index", "0", "--out", "{file}"], "--out: '{file}' is a file", None),
    ("restore-table --out file", ["restore-table", "--out", "{file}"], "--out: '{file}' is a file", None),
    ("train --out file", ["train", "--out", "{file}"], "--out: '{file}' is a file", None),
    ("train-classifier --out file", ["train-classifier", "--out", "{file}"], "--out: '{file}' is a file", None),
    ("quality --cache-dir file", ["quality", "--cache-dir", "{file}"], "--cache-dir: '{file}' is a file", None),
    ("calibrate --out file", ["calibrate", "--out", "{file}", "--samples", "20", "--cache-dir", "{d}/c"],
     "--out: '{file}' is a file, not a folder", "{d}/c"),
    ("calibrate --cache-dir file", ["calibrate", "--cache-dir", "{file}", "--out", "{d}/o"],
     "--cache-dir: '{file}' is a file, not a folder", "{d}/o"),
    ("calibrate --out /proc/x", ["calibrate", "--out", "/proc/nd-x", "--cache-dir", "{d}/c"],
     "--out: cannot write into '/proc/nd-x'", "{d}/c"),
    # run options and their messages
    ("generate --classes hat", ["generate", "--out", "{d}/o", "--classes", "hat"], "--classes: unknown class 'hat'",
     "{d}/o"),
    ("generate --classes all,hat", ["generate", "--out", "{d}/o", "--classes", "all,hat"],
     "--classes: unknown class 'hat'; valid: 0–9, 'all' or names", "{d}/o"),     # (all,all: 20 images, valid)
    ("generate --classes ,", ["generate", "--out", "{d}/o", "--classes", ","], "--classes: unknown class ''",
     "{d}/o"),
    ("generate --classes 20,000 entries", ["generate", "--out", "{d}/o", "--classes", TWENTY_THOUSAND],
     "--classes: 20000 images requested, more than --max-batch 64", "{d}/o"),
    ("generate --max-batch 5 with 10 classes", ["generate", "--out", "{d}/o", "--max-batch", "5"],
     "--classes: 10 images requested, more than --max-batch 5", "{d}/o"),
    ("generate --outer 50 --inner 30", ["generate", "--out", "{d}/o", "--outer", "50", "--inner", "30"],
     "--inner: 30 inner steps", "{d}/o"),
    ("generate --nfe 2000 (ramp)", ["generate", "--out", "{d}/o", "--nfe", "2000"],
     "--nfe: schedule ramp at 2000 NFE splits into 10+20+1970 inner steps", "{d}/o"),
    ("generate --nfe 30 (ramp)", ["generate", "--out", "{d}/o", "--nfe", "30"],
     "--nfe: 30 NFE leave nothing for the final run", "{d}/o"),
    ("generate --calibration truncated", ["generate", "--out", "{d}/o", "--calibration", "{trunc}"], "'{trunc}'",
     "{d}/o"),
    ("generate --calibration missing", ["generate", "--out", "{d}/o", "--calibration", "{d}/none.json"],
     "{d}/none.json", "{d}/o"),
    ("train --max-minutes -1", ["train", "--out", "{d}/o", "--max-minutes", "-1"], "--max-minutes: must be > 0",
     "{d}/o"),
    ("quality --model corrupt", ["quality", "--model", "{bad_model}", "--cache-dir", "{d}/c"], "config.json",
     "{d}/c"),
    ("quality --steps 5000", ["quality", "--steps", "5000", "--cache-dir", "{d}/c"], "--steps: 5000 inner steps",
     "{d}/c"),
    ("calibrate --evaluate missing", ["calibrate", "--evaluate", "{d}/none.json", "--heldout", "20",
                                      "--out", "{d}/o", "--cache-dir", "{d}/c"],
     "--evaluate: '{d}/none.json' does not exist", "{d}/c"),
    ("calibrate --evaluate truncated", ["calibrate", "--evaluate", "{trunc}", "--heldout", "20", "--out", "{d}/o",
                                        "--cache-dir", "{d}/c"],
     "--evaluate: '{trunc}' is not a readable calibration file", "{d}/c"),
    ("eval budget-table --budgets 0", ["eval", "budget-table", "--budgets", "0", "--out", "{d}/o"],
     "--budgets: each value must be ≥ 1, got 0", "{d}/o"),
    ("eval budget-table --budgets 5000", ["eval", "budget-table", "--budgets", "5000", "--out", "{d}/o"],
     "--budgets: 5000 NFE cannot be sampled", "{d}/o"),
    ("eval rnd-sweep --configs 3y4", ["eval", "rnd-sweep", "--configs", "3y4", "--out", "{d}/o"],
     "--configs: '3y4' is not an OUTERxINNER pair", "{d}/o"),
    ("eval consistency --configs 3x4", ["eval", "consistency", "--configs", "3x4", "--total-nfe", "10",
                                        "--out", "{d}/o"], "--configs: every configuration must spend", "{d}/o"),
    ("eval from-samples missing folder", ["eval", "from-samples", "--samples-from", "{d}/none", "--out", "{d}/o"],
     "--samples-from: '{d}/none' holds no manifest.json", "{d}/o"),
    ("eval from-samples unfinished", ["eval", "from-samples", "--samples-from", "{half}", "--out", "{d}/o"],
     "--samples-from: '{half}' is incomplete", "{d}/o"),
    ("eval from-samples damaged item", ["eval", "from-samples", "--samples-from", "{bad_item}", "--out", "{d}/o"],
     "--samples-from: '{bad_item}' is incomplete", "{d}/o"),
    # sample folders
    ("merge damaged manifest", ["merge", "--out-dir", "{bad_manifest}"], "manifest.json' is damaged",
     "{bad_manifest}/merged"),
    ("merge damaged item", ["merge", "--out-dir", "{bad_item}"], "is incomplete: 1 of 2 items missing",
     "{bad_item}/merged"),
    ("merge unfinished", ["merge", "--out-dir", "{half}"], "is incomplete", "{half}/merged"),
    ("merge not a sample folder", ["merge", "--out-dir", "{d}/none"], "--out-dir: '{d}/none' holds no manifest",
     "{d}/none"),
    ("sample --png without --merge-when-done", ["sample", "--out-dir", "{d}/o", *SAMPLE, "--png"],
     "--png: only with --merge-when-done", "{d}/o"),
    # serve: checked before the model is loaded
    ("serve --port 99999", ["serve", "--port", "99999"], "--port: a TCP port lies in 1–65535, got 99999", None),
    ("serve --host no.such.host", ["serve", "--host", "no.such.host.invalid", "--port", "7999"],
     "--host: cannot resolve 'no.such.host.invalid'", None),
    ("serve --device cuda (no CUDA here)", ["serve", "--device", "cuda:0", "--port", "7999"],
     "--device: 'cuda:0'", None),
]

# read-only folders: (name, argv, fragment, absent); {ro} is the read-only folder (a copy of {done} or {half})
READ_ONLY_ROWS = [
    ("merge read-only folder", "done", ["merge", "--out-dir", "{ro}"], "--out-dir: cannot write into '{ro}/merged'",
     "{ro}/merged"),
    ("sample --merge-when-done read-only folder", "done",
     ["sample", "--out-dir", "{ro}", *SAMPLE, "--merge-when-done"], "--out-dir: cannot write into '{ro}'",
     "{ro}/merged"),
    ("sample into an unfinished read-only folder", "half", ["sample", "--out-dir", "{ro}", *SAMPLE],
     "--out-dir: cannot write into '{ro}'", "{ro}/items/000/000001.npz"),
    ("sample new --out-dir under a read-only parent", "empty", ["sample", "--out-dir", "{ro}/new", *SAMPLE],
     "--out-dir: cannot write into '{ro}/new'", "{ro}/new"),
]


def _call(argv: list[str]) -> tuple[object, str]:
    """(exit code, stderr) of ``cli.main(argv)`` in this process; an escaping exception counts as a traceback."""
    import contextlib
    import io
    import traceback
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:                                        # noqa: BLE001 — the tour records it
            code = 1
            traceback.print_exc()
    return code, err.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The files and folders the rows point at (a finished and an unfinished sample folder, damaged copies)."""
    root = tmp_path_factory.mktemp("tour")
    (root / "file").write_text("not a folder")
    done = root / "done"
    assert cli.main(["sample", "--out-dir", str(done), *SAMPLE, "--threads", "1"]) == 0
    half = root / "half"
    shutil.copytree(done, half)
    for p in (half / "items").rglob("000001.*"):
        p.unlink()
    bad_manifest = root / "bad_manifest"
    shutil.copytree(done, bad_manifest)
    text = (bad_manifest / "manifest.json").read_text()
    (bad_manifest / "manifest.json").write_text(text[: len(text) // 2])
    bad_item = root / "bad_item"
    shutil.copytree(done, bad_item)
    item = bad_item / "items" / "000" / "000001.npz"
    item.write_bytes(item.read_bytes()[:100])
    bad_model = root / "bad_model"
    bad_model.mkdir()
    (bad_model / "config.json").write_text('{"channels": ')
    trunc = root / "trunc.json"
    trunc.write_text('{"hash": "abc", "model": {')
    return dict(root=root, file=str(root / "file"), done=str(done), half=str(half),
                bad_manifest=str(bad_manifest), bad_item=str(bad_item), bad_model=str(bad_model), trunc=str(trunc))


def _fill(s: str, paths: dict) -> str:
    return s.format(**paths) if "{" in s and len(s) < 1000 else s


def _snapshot(path: Path) -> set:
    return {str(p) for p in path.rglob("*")} if path.is_dir() else set()


def test_every_bad_input_gets_a_clear_answer(world, tmp_path):
    results = []
    for i, (name, argv, fragment, absent) in enumerate(ROWS):
        d = tmp_path / f"row{i}"
        d.mkdir()
        paths = dict(world, d=str(d))
        before = {k: _snapshot(Path(world[k])) for k in ("done", "half", "bad_manifest", "bad_item")}
        t0 = time.perf_counter()
        code, err = _call([_fill(a, paths) for a in argv])
        want = _fill(fragment, paths)
        left = absent is not None and os.path.lexists(_fill(absent, paths))
        changed = [k for k in before if _snapshot(Path(world[k])) != before[k]]
        clean = (code == 2 and want in err and "Traceback" not in err and not left and not changed
                 and not any(d.iterdir()))
        results.append(dict(name=name, clean=clean, code=code, seconds=round(time.perf_counter() - t0, 1),
                            left=left, changed=changed, message=err.strip().splitlines()[-1:] if err else []))
    dirty = [r for r in results if not r["clean"]]
    print(f"\nbad-input tour: {len(results)} rows, {len(results) - len(dirty)} clean")
    assert len(results) == len(ROWS) == 46
    assert not dirty, "\n".join(json.dumps(r, ensure_ascii=False) for r in dirty)
    slow = [r for r in results if r["seconds"] > 20]
    assert not slow, f"refused only after work was done: {slow}"


def _read_only_runner():
    """How this machine makes a folder truly read-only for a child process, or None."""
    if os.geteuid() != 0:
        return "chmod"
    if shutil.which("unshare") and subprocess.run(
            ["unshare", "-rm", "sh", "-c", "mount --bind / /mnt 2>/dev/null || mount -t tmpfs none /mnt"],
            capture_output=True).returncode == 0:
        return "unshare"
    return None


def test_read_only_folders_are_refused_before_any_work(world, tmp_path):
    how = _read_only_runner()
    if how is None:
        pytest.skip("cannot make a read-only folder here (root without user namespaces)")
    results = []
    for i, (name, source, argv, fragment, absent) in enumerate(READ_ONLY_ROWS):
        ro = tmp_path / f"ro{i}"
        if source == "empty":
            ro.mkdir()
        else:
            shutil.copytree(world[source], ro)
        before = _snapshot(ro)
        paths = dict(world, ro=str(ro))
        cmd = [sys.executable, "-m", "nested_diffusion.cli", *[_fill(a, paths) for a in argv]]
        env = dict(os.environ, PYTHONPATH=str(SRC))
        if how == "unshare":
            script = (f'mount --bind "{ro}" "{ro}" && mount -o remount,bind,ro "{ro}" && exec "$@"')
            cmd = ["unshare", "-rm", "sh", "-c", script, "sh", *cmd]
        else:
            for p in [ro, *ro.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o555)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        finally:
            for p in [ro, *ro.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o755)
        want = _fill(fragment, paths)
        left = os.path.lexists(_fill(absent, paths))
        clean = (r.returncode == 2 and want in r.stderr and "Traceback" not in r.stderr and not left
                 and _snapshot(ro) == before)
        results.append(dict(name=name, clean=clean, code=r.returncode, left=left, message=r.stderr.strip()[-300:]))
    dirty = [r for r in results if not r["clean"]]
    print(f"\nread-only tour ({how}): {len(results)} rows, {len(results) - len(dirty)} clean")
    assert len(results) == len(READ_ONLY_ROWS) == 4
    assert not dirty, "\n".join(json.dumps(r, ensure_ascii=False) for r in dirty)
