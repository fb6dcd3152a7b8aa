"""Throughput of `nested-diffusion sample` (the command users run) across processes, side by side in one run.

CPU (always): the bundled model, 1 process × 1 thread vs `torchrun --nproc-per-node 2` × 1 thread each, same
configuration, fresh folders, interleaved repeats; prints aggregate image-NFE/s (samples × NFE / slowest rank's
sampling time) and the end-to-end wall time (with process start-up), the speed-up ratios, and checks that both
runs wrote the same bytes. Target on 2 free cores: aggregate speed-up ≥ 1.8×.

GPU (when CUDA is available): per-GPU throughput of one process, `--noise cpu` (per-sample CPU generators, the
default) vs `--noise device` (per-sample generators on the GPU), for the bundled model (batch --gpu-batch) and
for a DiT-XL/2-256-sized random-weight NestedDiTPipeline in fp16 (the modules of benchmarks/gpu_pipelines.py).
`--gpu-smoke-on-cpu` runs that branch's code on the CPU with tiny models (a plumbing check, not a measurement).

    python benchmarks/distributed_throughput.py [--num-samples 64] [--batch-size 16] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def sample_cmd(nproc: int, out: Path, args) -> list[str]:
    flags = ["--out-dir", str(out), "--num-samples", str(args.num_samples), "--outer-steps", str(args.outer),
             "--inner-steps", str(args.inner), "--batch-size", str(args.batch_size), "--threads", "1", "--quiet",
             "--device", "cpu"]
    if nproc == 1:
        return [sys.executable, "-m", "nested_diffusion.cli", "sample", *flags]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "nested_diffusion.cli", "sample", *flags]


def run_once(nproc: int, out: Path, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    p = subprocess.run(sample_cmd(nproc, out, args), env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"{nproc} process(es) failed:\n{p.stdout}\n{p.stderr}")
    dec, ranks, i = json.JSONDecoder(), [], p.stdout.find('{"summary"')
    while i >= 0:                  # the ranks share one pipe: two summaries may end up on one line
        obj, end = dec.raw_decode(p.stdout, i)
        ranks.append(obj["summary"])
        i = p.stdout.find('{"summary"', end)
    if len(ranks) != nproc:
        raise RuntimeError(f"expected {nproc} rank summaries, got {len(ranks)}:\n{p.stdout}")
    nfe = args.num_samples * args.outer * args.inner
    sampling = max(r["wall_s"] for r in ranks)
    return dict(wall=wall, sampling=sampling, agg=nfe / sampling, e2e=nfe / wall)


def items(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "items").rglob("*.npz"))}


def cpu_branch(args) -> None:
    print(f"CPU: bundled model, {args.num_samples} samples, {args.outer}x{args.inner} ({args.outer * args.inner} "
          f"NFE), batch {args.batch_size}, 1 thread per process, {args.repeats} interleaved repeats, "
          f"{os.cpu_count()} CPUs visible")
    res = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for nproc in (1, 2):
                out = Path(tmp) / f"p{nproc}-r{k}"
                res[nproc].append(run_once(nproc, out, args))
                r = res[nproc][-1]
                print(f"  repeat {k}: {nproc} process(es): sampling {r['sampling']:6.2f} s "
                      f"({r['agg']:6.0f} image-NFE/s aggregate), wall {r['wall']:6.2f} s")
        same = items(Path(tmp) / "p1-r0") == items(Path(tmp) / "p2-r0")
    med = {n: {k: statistics.median(r[k] for r in v) for k in v[0]} for n, v in res.items()}
    print(f"median aggregate image-NFE/s: 1 process {med[1]['agg']:.0f}, 2 processes {med[2]['agg']:.0f} → "
          f"speed-up {med[2]['agg'] / med[1]['agg']:.2f}× (sampling); end to end with start-up "
          f"{med[1]['wall'] / med[2]['wall']:.2f}×")
    pairs = [b["agg"] / a["agg"] for a, b in zip(res[1], res[2])]
    print(f"paired speed-up per repeat (adjacent runs): {', '.join(f'{r:.2f}×' for r in pairs)}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a busy machine makes these numbers noisy)")
    print(f"items byte-identical between 1 and 2 processes: {same}")


def gpu_factory(kind: str, device: str, args, smoke: bool):
    if kind == "bundled":
        from nested_diffusion.bundled import load_unet
        from nested_diffusion.bundled.factory import bundled_factory
        return bundled_factory(load_unet(None, device), noise_prefetch=20, noise_workers=args.noise_workers)
    from gpu_pipelines import build, build_tiny
    from nested_diffusion.pipelines.factories import dit_factory
    _, pipe = (build_tiny if smoke else build)("dit", torch.device(device), torch.float32 if smoke else torch.float16)
    return dit_factory(pipe, "all", decode_batch=args.dit_batch)


def gpu_branch(args, smoke: bool) -> None:
    """One process, the worker of `sample` (SampleJob + run_shard), --noise cpu vs device, interleaved."""
    from nested_diffusion.distributed import SampleJob, SampleStore, Shard, run_shard
    device = "cpu" if smoke else "cuda:0"
    if smoke:
        args.gpu_batch, args.dit_batch, args.gpu_items, args.dit_inner = 4, 2, 1, 2
    for kind in ("bundled", "dit"):
        factory = gpu_factory(kind, device, args, smoke)
        outer, inner, batch = (args.outer, args.inner, args.gpu_batch) if kind == "bundled" else \
            (4, args.dit_inner, args.dit_batch)
        rates = {}
        for noise in ("cpu", "device", "cpu", "device"):            # warm-up round, then the measured one
            job = SampleJob(factory, outer, inner, batch * args.gpu_items, batch_size=batch,
                            step=inner if smoke else 10, noise=noise, device=device)
            with tempfile.TemporaryDirectory() as tmp:
                r = run_shard(job, SampleStore(tmp), Shard(0, 1))
            rates.setdefault(noise, []).append(r["image_nfe_per_s"])
        print(f"GPU {kind} {outer}x{inner}, batch {batch}: image-NFE/s per GPU, noise cpu {rates['cpu'][-1]:.0f}, "
              f"device {rates['device'][-1]:.0f} → {rates['device'][-1] / rates['cpu'][-1]:.2f}× "
              f"({'smoke test on CPU, not a measurement' if smoke else torch.cuda.get_device_name(0)})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gpu-batch", type=int, default=2000, help="GPU: bundled-model batch (default 2000)")
    ap.add_argument("--gpu-items", type=int, default=3, help="GPU: batches per measurement (default 3)")
    ap.add_argument("--dit-batch", type=int, default=32, help="GPU: DiT-XL/2 batch (default 32)")
    ap.add_argument("--dit-inner", type=int, default=10, help="GPU: DiT inner steps, 4 outer (default 10)")
    ap.add_argument("--noise-workers", type=int, default=14, help="GPU: CPU-noise threads (default 14)")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--gpu-smoke-on-cpu", action="store_true", help="run the GPU branch's code on CPU, tiny")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}; CUDA available: {torch.cuda.is_available()}")
    if not args.skip_cpu:
        cpu_branch(args)
    if torch.cuda.is_available() or args.gpu_smoke_on_cpu:
        gpu_branch(args, smoke=not torch.cuda.is_available())
    else:
        print("GPU branch skipped: no CUDA device")
    return 0


if __name__ == "__main__":
    sys.exit(main())
