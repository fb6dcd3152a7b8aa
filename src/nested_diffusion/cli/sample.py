"""``nested-diffusion sample`` and ``nested-diffusion merge``: the paper's 50K-sample anytime protocol over many
processes, GPUs and machines (nested_diffusion.distributed).

    nested-diffusion sample --out-dir runs/50k --num-samples 50000 --outer-steps 4 --inner-steps 50
    torchrun --standalone --nproc-per-node 8 -m nested_diffusion.cli sample --out-dir runs/50k ...
    nested-diffusion sample --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT --out-dir runs/50k ...
    nested-diffusion merge --out-dir runs/50k [--png]

Every flag is long and unique: torchrun prefix-matches its own flags even after the module name (--n, --num,
--nproc would be taken as torchrun's).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import eval_pipelines as pipeline_opts
from .argtypes import check_device, check_writable_dir, int_at_least, nonneg_float, solver_choices, writable_dir
from .run_args import SAMPLE_OPTION_NAMES, add_schedule_args, build_checked, run_from_args

if TYPE_CHECKING:
    from ..distributed import SampleJob


def _step(s: str):
    if s == "update":
        return s
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"--step: expected a positive integer or 'update', got {s!r}")
    return v


def _shard(s: str) -> str:
    from ..distributed.ranks import parse_shard
    try:
        parse_shard(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
    return s


def _sample_args(e: argparse.ArgumentParser) -> None:
    e.add_argument("--out-dir", type=writable_dir("--out-dir"), required=True, help="sample folder (created; a rerun resumes it)")
    e.add_argument("--num-samples", type=int_at_least("--num-samples"), required=True, help="samples N")
    add_schedule_args(e, "--outer-steps", "--inner-steps")   # defaults: the family's (families.py)
    e.add_argument("--step", type=_step, default=10,
                   help="record the anytime result every STEP NFE, or 'update' for every update (default: 10)")
    e.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (default: 0)")
    e.add_argument("--batch-size", type=int_at_least("--batch-size"), default=100,
                   help="samples per work item and batch; part of the configuration (default: 100)")
    e.add_argument("--shard", type=_shard, default=None,
                   help="i/N: this process runs shard i of N (SLURM arrays); combines with torchrun's ranks")
    e.add_argument("--assign", choices=("strided", "contiguous"), default="strided",
                   help="how items are dealt to ranks (default: strided)")
    e.add_argument("--noise", choices=("cpu", "device"), default="cpu",
                   help="cpu: per-sample CPU generators (default, bit-identical everywhere); device: per-sample "
                        "generators on the model's device (faster on GPUs, other values: not bit-identical)")
    e.add_argument("--noise-prefetch", type=int_at_least("--noise-prefetch"), default=20,
                   help="--noise device: requests drawn per generator launch; part of the configuration")
    e.add_argument("--noise-workers", type=int_at_least("--noise-workers"), default=1,
                   help="bundled, --noise cpu: threads drawing the CPU noise (speed only; default: 1)")
    e.add_argument("--model", default=None, help="a TinyUNet from_pretrained folder (default: the bundled model)")
    e.add_argument("--solver", choices=solver_choices(None), default=None,
                   help="inner solver (default: ddpm; ddim for --pipeline sd/sdxl; euler (or heun) for sd3/flux)")
    e.add_argument("--inner-eta", type=nonneg_float("--inner-eta"), default=None, help="η of a DDIM inner")
    e.add_argument("--outer-eta", type=nonneg_float("--outer-eta"), default=None, help="η of the outer step")
    e.add_argument("--guidance", type=nonneg_float("--guidance"), default=None, help="CFG scale (model default)")
    e.add_argument("--grid", choices=("clean", "authors"), default="clean", help="grid convention")
    e.add_argument("--threads", type=int_at_least("--threads"), default=1, help="torch CPU threads (default: 1)")
    e.add_argument("--merge-when-done", action="store_true",
                   help="after the final barrier, rank 0 merges (not with --shard: run `merge` later)")
    e.add_argument("--png", action="store_true", help="with --merge-when-done: also write PNG folders")
    e.add_argument("--barrier-timeout-min", type=float, default=120.0,
                   help="minutes a finished rank waits for the others (default: 120)")
    e.add_argument("--quiet", action="store_true", help="no per-item lines")
    pipeline_opts.add_pipeline_args(e)


def add_parser(subparsers) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    e = subparsers.add_parser("sample", help="N anytime samples over many processes (torchrun, --shard); resumable",
                              description="Sample N images, recording the anytime result every --step NFE, as "
                                          "atomic per-item files; sample i uses seed + i and a condition that "
                                          "depends on i alone, so the result is the same for any number of "
                                          "processes. Rerun the same command to resume (any number of processes).")
    _sample_args(e)
    m = subparsers.add_parser("merge", formatter_class=fmt, help="sample folder → per-NFE .npz (ADM layout), PNGs",
                              description="Per NFE mark an .npz with arr_0 (N, H, W, 3) uint8 (+ arr_1 labels), "
                                          "as the ADM evaluator, torch-fidelity and clean-fid read them.")
    m.add_argument("--out-dir", type=Path, required=True, help="a finished sample folder")
    m.add_argument("--png", action="store_true", help="also write one PNG folder per NFE mark")
    m.add_argument("--quiet", action="store_true")


def _device(args, local_rank: int) -> str:
    import torch
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev == "cuda":
        dev = f"cuda:{local_rank}"
    args.device = check_device(dev)
    return dev


def build_job(args, local_rank: int = 0) -> "SampleJob":
    """The SampleJob of the command line (loads the model or pipeline on this rank's device)."""
    from ..distributed import SampleJob
    args.experiment = "sample"                       # read by the pipeline option checks
    pipeline_opts.check_pipeline_args(args)
    device = _device(args, local_rank)
    from ..core.schedules import Schedule
    from ..families import get_family
    family = get_family(args.pipeline)
    run = run_from_args(args, family.run_defaults(), names=SAMPLE_OPTION_NAMES)  # the family's unless given
    if family.is_bundled:
        from .eval import bundled_factory_of
        factory = bundled_factory_of(args, device)
    else:
        factory = pipeline_opts.pipeline_factory(args)
    steps = dict(outer=run.outer_steps, inner=run.inner_steps[0]) if run.schedule == "uniform" else \
        dict(outer=run.outer_steps, inner=max(run.inner_steps), nfe=run.inner_total,
             schedule=Schedule(run.schedule, run.inner_steps, run.outer_times))   # the resolved split, whole
    return build_checked(SampleJob, factory, **steps, names=SAMPLE_OPTION_NAMES, num_samples=args.num_samples, seed=args.seed, batch_size=args.batch_size,
                     step=args.step, noise=args.noise, noise_prefetch=args.noise_prefetch, device=device)


def run_sample(args) -> int:
    import torch
    from ..distributed import SampleStore, close_group, open_group, run_shard, shard_from_env
    torch.set_num_threads(args.threads)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    try:
        shard = shard_from_env(args.shard)
        if args.merge_when_done and args.shard is not None:
            raise ValueError("--merge-when-done: not with --shard (the shards do not meet); run `nested-diffusion "
                             "merge --out-dir ...` once every shard has finished")
        if args.png and not args.merge_when_done:
            raise ValueError("--png: only with --merge-when-done (or give it to `nested-diffusion merge`)")
        job = build_job(args, shard.local_rank)
        grouped = open_group(shard, job.device, args.barrier_timeout_min)
        summary = run_shard(job, SampleStore(args.out_dir), shard, args.assign, log)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished items are saved in {args.out_dir}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    print(json.dumps(dict(summary=summary)), flush=True)
    if grouped:
        close_group(job.device)
    if args.merge_when_done and shard.is_main:
        return run_merge(args)
    return 0


def run_merge(args) -> int:
    from ..distributed import IncompleteRunError, merge_run
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    from ..distributed import SampleStore
    try:
        SampleStore(args.out_dir).read_manifest()     # a sample folder at all, then: can merged/ be written?
        check_writable_dir(Path(args.out_dir) / "merged", "--out-dir")
        doc = merge_run(args.out_dir, args.png, log)
    except (ValueError, FileNotFoundError, IncompleteRunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(doc['files'])} .npz files ({doc['num_samples']} samples, NFE marks {doc['marks'][0]}–"
          f"{doc['marks'][-1]}) to {Path(args.out_dir) / 'merged'} ({doc['merge_s']:.1f} s)")
    return 0
