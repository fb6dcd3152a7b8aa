"""The bundled model's maintenance commands: ``train`` (the UNet), ``train-classifier`` (the feature
classifier) and ``quality`` (the quality gate's numbers)."""
from __future__ import annotations

import argparse
import json
import sys

from .argtypes import nonneg_float, positive_float, positive_int, solver_choices, writable_dir
from pathlib import Path


def add_parsers(subparsers) -> None:
    t = subparsers.add_parser("train", help="train (or resume) the Fashion-MNIST denoiser",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--out", type=writable_dir("--out"), default=Path("runs/fashion-unet"), help="run folder (checkpoint.pt, ema/)")
    t.add_argument("--steps", type=positive_int("--steps"), default=12000, help="total optimizer steps")
    t.add_argument("--batch-size", type=positive_int("--batch-size"), default=128)
    t.add_argument("--max-minutes", type=positive_float("--max-minutes"), default=None, help="stop (checkpointed) after this long")
    t.add_argument("--checkpoint-minutes", type=float, default=5.0)
    t.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    t.add_argument("--threads", type=positive_int("--threads"), default=None)

    q = subparsers.add_parser("quality", help="print the bundled model's quality-gate numbers (FD, floor, agreement)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--samples", type=positive_int("--samples"), default=5000)
    q.add_argument("--steps", type=positive_int("--steps"), default=100, help="vanilla sampling steps")
    q.add_argument("--solver", choices=solver_choices(), default="ddim")
    q.add_argument("--guidance", type=nonneg_float("--guidance"), default=None)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--model", default=None, help="a from_pretrained folder (default: the bundled model)")
    q.add_argument("--classifier", default=None, help="classifier folder (default: the bundled one)")
    q.add_argument("--cache-dir", type=writable_dir("--cache-dir"), default=Path("runs/quality-cache"), help="generated chunks (resume)")
    q.add_argument("--data-dir", default=None)
    q.add_argument("--threads", type=positive_int("--threads"), default=None)

    c = subparsers.add_parser("train-classifier", help="train the Fashion-MNIST feature classifier",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--out", type=writable_dir("--out"), default=Path("runs/fashion-classifier"))
    c.add_argument("--epochs", type=positive_int("--epochs"), default=3)
    c.add_argument("--data-dir", default=None)



def run_quality(args) -> int:
    import torch

    from ..bundled import DEFAULT_GUIDANCE, load_unet
    from ..bundled.classifier import FashionClassifier
    from ..bundled.pretrained import bundled_classifier_path
    from ..bundled.quality import quality_report, quality_sampler
    from .run_args import build_checked
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.guidance is None:
        args.guidance = DEFAULT_GUIDANCE
    try:  # everything the report needs, checked before any data is read or any sample computed
        model = load_unet(args.model)
        build_checked(quality_sampler, model, args.steps, args.solver, args.guidance,
                      names={"inner_steps": "--steps", "inner_solver": "--solver", "guidance": "--guidance"})
        clf = FashionClassifier.from_pretrained(args.classifier or bundled_classifier_path())
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        rep = quality_report(model, clf, args.samples, args.steps, args.solver, args.guidance, args.seed,
                             args.cache_dir, args.data_dir)
    except FileNotFoundError as e:   # the Fashion-MNIST files (--data-dir)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rep, indent=2))
    return 0


def run_train_classifier(args) -> int:
    from ..bundled.classifier_training import train_classifier
    try:
        print(json.dumps(train_classifier(args.out, args.epochs, data_dir=args.data_dir)))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run_train(args) -> int:
    from ..bundled.training import TrainConfig, train
    cfg = TrainConfig(out_dir=args.out, total_steps=args.steps, batch_size=args.batch_size,
                      max_minutes=args.max_minutes, checkpoint_minutes=args.checkpoint_minutes,
                      data_dir=args.data_dir, threads=args.threads)
    try:
        path = train(cfg)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"EMA weights: {path}")
    return 0
