"""``nested-diffusion restore-table``: the Table 2 analog (nested DDRM vs vanilla DDRM on Fashion-MNIST test images).

Writes OUT/table2.json (per task: mean PSNR ± standard error, FD on classifier features, consistency) and
OUT/table2_psnr.png (anytime PSNR per NFE). Resumable: finished chunks live in OUT/cache.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .argtypes import int_at_least as _int_at_least, writable_dir


def add_parser(subparsers) -> argparse.ArgumentParser:
    r = subparsers.add_parser(
        "restore-table", help="Table 2 analog: nested DDRM vs vanilla DDRM on Fashion-MNIST test images",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--images", type=_int_at_least("--images", 1), default=1000, help="test images (the first N)")
    r.add_argument("--outer", type=_int_at_least("--outer", 1), default=3, help="outer steps of nested DDRM")
    r.add_argument("--inner", type=_int_at_least("--inner", 1), default=10, help="DDRM steps per outer step")
    r.add_argument("--vanilla-steps", type=_int_at_least("--vanilla-steps", 1), default=20,
                   help="steps of the vanilla DDRM baseline")
    r.add_argument("--batch", type=_int_at_least("--batch", 1), default=50, help="images per chunk")
    r.add_argument("--seed", type=int, default=0, help="sample i uses seed SEED + i")
    r.add_argument("--tasks", default=None, help="comma list of tasks (default: all of denoise,sr4,inpaint50,deblur)")
    r.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    r.add_argument("--lpips-net", choices=("alex", "vgg", "squeeze"), default=None,
                   help="also report LPIPS to the clean image (torchvision backbone weights must be in "
                        "$TORCH_HOME/hub/checkpoints; nothing is downloaded)")
    r.add_argument("--out", type=writable_dir("--out"), default=Path("runs/table2"))
    r.add_argument("--threads", type=_int_at_least("--threads", 1), default=1, help="torch CPU threads")
    r.add_argument("--quiet", action="store_true")
    return r


def run(args) -> int:
    import torch

    from ..evaluation.plots import plot_restoration_psnr
    from ..bundled.table2 import TASKS, run_table2
    torch.set_num_threads(args.threads)
    tasks = None
    if args.tasks:
        names = [t.strip() for t in args.tasks.split(",") if t.strip()]
        bad = [t for t in names if t not in TASKS]
        if bad or not names:
            print(f"error: --tasks: unknown task(s) {bad or names}; valid: {','.join(TASKS)}", file=sys.stderr)
            return 2
        tasks = {t: TASKS[t] for t in names}
    try:
        distances = []
        if args.lpips_net:
            from ..evaluation.consistency import LPIPSDistance
            distances.append(LPIPSDistance(args.lpips_net))
        doc = run_table2(args.out / "table2.json", args.images, tasks, args.outer, args.inner, args.vanilla_steps,
                         args.batch, args.seed, data_dir=args.data_dir, cache_dir=args.out / "cache",
                         progress=None if args.quiet else (lambda s: print(s, flush=True)), distances=distances)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plot = plot_restoration_psnr(doc, args.out / "table2_psnr.png")
    for name, row in doc["tasks"].items():
        cells = "  ".join(f"{c} {row['psnr'][c]:.2f}±{row['psnr_sem'][c] or 0:.2f} dB" for c in doc["columns"])
        print(f"{name}: {cells}")
    print(f"wrote {args.out / 'table2.json'}, {plot}")
    return 0
