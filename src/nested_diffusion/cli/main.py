"""Command line: ``nested-diffusion generate | train``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from .. import __version__
from .argtypes import inner_eta_for, int_at_least as _int_at_least, nonneg_float as _nonneg_float, solver_choices
from ..bundled.data import CLASS_NAMES


def _positive_int(name):
    return _int_at_least(name, 1)



def _writable_dir(s: str) -> Path:
    p = Path(s)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"--out: cannot write into {s!r} ({e.strerror or e})")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nested-diffusion", description=(
        "Anytime image generation with Nested Diffusion. An outer DDIM process uses a complete inner diffusion "
        "run as its denoiser, so a finished image is available after every inner run."))
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="anytime sampling on the bundled Fashion-MNIST model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=(
                           "Sample with nested diffusion, print every anytime update, and write into --out: "
                           "final.png, progression.png (rows: samples, columns: updates), progression.gif and "
                           "updates.json. Ctrl+C stops and writes the latest result."))
    g.add_argument("--out", type=_writable_dir, default=Path("out/generate"), help="output folder")
    g.add_argument("--classes", default="all",
                   help=f"comma-separated class indices or names, or 'all' ({', '.join(CLASS_NAMES)})")
    g.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (same seed, same image)")
    g.add_argument("--outer", type=_positive_int("--outer"), default=5, help="outer steps")
    g.add_argument("--inner", type=_positive_int("--inner"), default=20, help="inner steps per outer step")
    g.add_argument("--solver", choices=solver_choices(), default="ddpm",
                   help="inner solver (ddpm = learned-variance ancestral sampling, the paper's DiT setting)")
    g.add_argument("--inner-eta", type=_nonneg_float("--inner-eta"), default=None,
                   help="η of a DDIM inner solver (default 0.85, as in the paper's SD setting)")
    g.add_argument("--outer-eta", type=_nonneg_float("--outer-eta"), default=0.0,
                   help="η of the outer DDIM step (a number or sqrt_one_minus_alpha_bar)")
    g.add_argument("--guidance", type=_nonneg_float("--guidance"), default=None,
                   help="classifier-free guidance scale, inner process only (default: the model's documented one)")
    g.add_argument("--budget", type=_positive_int("--budget"), default=None, help="max NFE; best result within it")
    g.add_argument("--deadline", type=float, default=None, help="wall-clock seconds; best result before it")
    g.add_argument("--grid", choices=("clean", "authors"), default="clean", help="grid convention (README)")
    g.add_argument("--vanilla", action="store_true",
                   help="also run vanilla sampling at the same NFE (outer=1) and write it to OUT/vanilla/")
    g.add_argument("--model", default=None, help="a from_pretrained folder (default: the bundled model)")
    g.add_argument("--scale", type=_positive_int("--scale"), default=4, help="pixel upscaling in pictures")
    g.add_argument("--threads", type=_positive_int("--threads"), default=None, help="torch CPU threads")
    g.add_argument("--quiet", action="store_true", help="no per-update lines or progress bar")

    t = sub.add_parser("train", help="train (or resume) the Fashion-MNIST denoiser",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--out", default="runs/fashion-unet", help="run folder (checkpoint.pt, ema/)")
    t.add_argument("--steps", type=_positive_int("--steps"), default=12000, help="total optimizer steps")
    t.add_argument("--batch-size", type=_positive_int("--batch-size"), default=128)
    t.add_argument("--max-minutes", type=float, default=None, help="stop (checkpointed) after this long")
    t.add_argument("--checkpoint-minutes", type=float, default=5.0)
    t.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    t.add_argument("--threads", type=_positive_int("--threads"), default=None)

    q = sub.add_parser("quality", help="print the bundled model's quality-gate numbers (FD, floor, agreement)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--samples", type=_positive_int("--samples"), default=5000)
    q.add_argument("--steps", type=_positive_int("--steps"), default=100, help="vanilla sampling steps")
    q.add_argument("--solver", choices=solver_choices(), default="ddim")
    q.add_argument("--guidance", type=_nonneg_float("--guidance"), default=None)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--model", default=None, help="a from_pretrained folder (default: the bundled model)")
    q.add_argument("--classifier", default=None, help="classifier folder (default: the bundled one)")
    q.add_argument("--cache-dir", default="runs/quality-cache", help="generated chunks (resume)")
    q.add_argument("--data-dir", default=None)
    q.add_argument("--threads", type=_positive_int("--threads"), default=None)

    c = sub.add_parser("train-classifier", help="train the Fashion-MNIST feature classifier",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--out", default="runs/fashion-classifier")
    c.add_argument("--epochs", type=_positive_int("--epochs"), default=3)
    c.add_argument("--data-dir", default=None)

    from . import eval as cli_eval
    from . import restore as cli_restore, restore_table as cli_table2
    cli_eval.add_parser(sub)
    cli_restore.add_parser(sub)
    cli_table2.add_parser(sub)
    from . import sample as cli_sample
    cli_sample.add_parser(sub)
    return p


def cmd_quality(args) -> int:
    import torch

    from ..bundled import DEFAULT_GUIDANCE
    from ..bundled.quality import main_report
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.guidance is None:
        args.guidance = DEFAULT_GUIDANCE
    try:
        return main_report(args)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_train_classifier(args) -> int:
    from ..bundled.classifier_training import train_classifier
    try:
        print(json.dumps(train_classifier(args.out, args.epochs, data_dir=args.data_dir)))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_generate(args) -> int:
    import torch

    from ..bundled import DEFAULT_GUIDANCE, load_unet, make_denoiser, parse_classes
    from ..core.nested import NestedSampler
    from .recorder import AnytimeRecorder

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        classes = parse_classes(args.classes)
        if args.deadline is not None and not args.deadline > 0:
            raise ValueError(f"--deadline: must be a positive number of seconds, got {args.deadline}")
        inner_eta = inner_eta_for(args.solver, args.inner_eta)
        model = load_unet(args.model)
        guidance = DEFAULT_GUIDANCE if args.guidance is None else args.guidance
        den = make_denoiser(model, guidance)
        runs = [("nested", args.outer, args.inner)]
        if args.vanilla:
            runs.append(("vanilla", 1, args.outer * args.inner))
        samplers = [(name, NestedSampler(den, k, n, args.solver, inner_eta, args.outer_eta, args.grid))
                    for name, k, n in runs]
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    labels = torch.tensor(classes)
    seeds = [args.seed + i for i in range(len(classes))]
    settings = dict(classes=[CLASS_NAMES[c] for c in classes], seeds=seeds, outer=args.outer, inner=args.inner,
                    solver=args.solver, inner_eta=inner_eta, outer_eta=args.outer_eta, guidance=guidance,
                    budget=args.budget, deadline=args.deadline, grid=args.grid, model=args.model or "bundled")
    code = 0
    for name, sampler in samplers:
        out = args.out if name == "nested" else args.out / "vanilla"
        out.mkdir(parents=True, exist_ok=True)
        rec = AnytimeRecorder(out, {**settings, "method": name, "outer": sampler.outer_steps,
                                    "inner": sampler.inner_steps[0]}, scale=args.scale)
        total = sampler.total_nfe if args.budget is None else min(args.budget, sampler.total_nfe)
        bar = None
        if not args.quiet:
            from tqdm import tqdm
            print(f"[{name}] {sampler.outer_steps} outer × {sampler.inner_steps[0]} inner ({args.solver}), "
                  f"{sampler.total_nfe} NFE, guidance {guidance}, classes {', '.join(settings['classes'])}")
            bar = tqdm(total=total, unit="NFE", leave=False, dynamic_ncols=True)
        try:
            for u in sampler.stream(seeds, (len(classes), 1, 28, 28), labels, max_nfe=args.budget,
                                    deadline=args.deadline):
                rec.add(u)
                if bar is not None:
                    bar.update(u.nfe - bar.n)
                    bar.write(f"  nfe {u.nfe:4d}/{total}  outer {u.outer_step}/{u.outer_steps}  "
                              f"t={u.t:3d}  {u.elapsed:6.2f} s  {'final' if u.final else u.source}")
        except KeyboardInterrupt:
            code = 130
            print("\ninterrupted: writing the latest result", file=sys.stderr)
        finally:
            if bar is not None:
                bar.close()
        paths = rec.write(interrupted=code == 130)
        if paths:
            print(f"[{name}] wrote {', '.join(str(p) for p in paths)}")
        if code:
            break
    return code


def cmd_train(args) -> int:
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


def _run_eval(args) -> int:
    from . import eval as cli_eval
    return cli_eval.run(args)


def _run_restore(args) -> int:
    from . import restore as cli_restore
    return cli_restore.run(args)


def _run_restore_table(args) -> int:
    from . import restore_table as cli_table2
    return cli_table2.run(args)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"generate": cmd_generate, "train": cmd_train, "quality": cmd_quality,
                "train-classifier": cmd_train_classifier, "eval": _run_eval,
                "restore": _run_restore, "restore-table": _run_restore_table}
    from . import sample as cli_sample
    commands.update({"sample": cli_sample.run_sample, "merge": cli_sample.run_merge})
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
