"""``nested-diffusion generate``: anytime sampling on any model family of the family table (the bundled
Fashion-MNIST model by default; ``--pipeline sd|dit|sdxl|sd3|flux --model-path DIR`` for a diffusers pipeline);
prints every update and writes final.png, progression.png/.gif and updates.json (each atomically)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bundled.data import CLASS_NAMES
from .argtypes import positive_int, writable_dir
from .progress import Progress
from .run_args import add_schedule_args, add_solver_args, add_stop_args, build_checked, run_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    g = subparsers.add_parser("generate", help="anytime sampling on the bundled model or any model family",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=(
                           "Sample with nested diffusion, print every anytime update, and write into --out: "
                           "final.png, progression.png (rows: samples, columns: updates), progression.gif and "
                           "updates.json. Ctrl+C stops and writes the latest result."))
    g.add_argument("--out", type=writable_dir("--out"), default=Path("out/generate"), help="output folder")
    g.add_argument("--classes", default=None,
                   help=f"bundled model: comma-separated class indices or names, or 'all' (the default; "
                        f"{', '.join(CLASS_NAMES)}); class-conditioned pipelines (dit): ids or label names, one "
                        f"image each")
    g.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (same seed, same image)")
    add_schedule_args(g)
    add_solver_args(g, kind=None)   # every kind: the family's resolver says which fit
    add_stop_args(g)
    from ..core.nested import PREVIEW_MODES
    g.add_argument("--previews", choices=PREVIEW_MODES, default=None,
                   help="which x̂0 predictions are updates besides the finished inner runs: first (the first run's), "
                        "fill (also each later run's from half its calls: closer to the final, blurrier), all, "
                        "none (default: the run's, core.nested.default_previews: first)")
    g.add_argument("--vanilla", action="store_true",
                   help="also run vanilla sampling at the same NFE (outer=1) and write it to OUT/vanilla/")
    g.add_argument("--model", default=None, help="a from_pretrained folder (default: the bundled model)")
    g.add_argument("--scale", type=positive_int("--scale"), default=None,
                   help="pixel upscaling in pictures (default: 4 for the bundled 28-px model, 1 for pipelines)")
    g.add_argument("--max-batch", type=positive_int("--max-batch"), default=64,
                   help="most images in one run (--classes entries or --prompt repeats); more is refused before "
                        "the model is loaded")
    g.add_argument("--threads", type=positive_int("--threads"), default=None, help="torch CPU threads")
    g.add_argument("--quiet", action="store_true", help="no per-update lines or progress bar")
    g.add_argument("--calibration", default="auto", help="expected change: 'auto' (the shipped pixel-signal "
                   "calibration of this configuration, if any), 'feature' (the shipped one with classifier signals), "
                   "'none', or a file from `nested-diffusion calibrate`")
    from .generate_pipelines import add_pipeline_options
    add_pipeline_options(g)

    return g


def build_samplers(args) -> tuple[list, dict, list[int]]:
    """[(name, NestedSampler)] for the nested run and, with --vanilla, vanilla at the same NFE; the settings
    record; the class of each sample. Raises ValueError/TypeError/FileNotFoundError with a message naming the option."""
    from ..bundled import RUN_DEFAULTS, compute_dtype, load_unet, make_denoiser, parse_classes
    from ..bundled.expected_change import resolve_calibration
    from ..core.nested import NestedSampler, calibration_settings

    try:
        classes = parse_classes("all" if args.classes is None else args.classes)
    except ValueError as e:                       # the parser names its argument 'classes'; the option is --classes
        raise ValueError(f"--{e}" if str(e).startswith("classes:") else str(e)) from None
    check_batch(len(classes), args.max_batch, "--classes")
    run = run_from_args(args, RUN_DEFAULTS)                      # every run option, resolved once
    model = load_unet(args.model, dtype=compute_dtype(run.dtype, "--dtype"))
    den = make_denoiser(model, run.guidance)
    T = den.schedule.num_train_timesteps
    settings_for = calibration_settings(run, T, args.previews)
    run = run.replace(calibration=resolve_calibration(args.calibration, settings_for, model,
                                                      run.guidance))
    samplers = [("nested", build_checked(NestedSampler.from_run, den, run))]
    if args.vanilla:
        samplers.append(("vanilla", build_checked(NestedSampler.from_run, den, run.vanilla())))
    settings = dict(family="bundled", classes=[CLASS_NAMES[c] for c in classes],
                    conditioning="classes " + ", ".join(CLASS_NAMES[c] for c in classes),
                    seeds=[args.seed + i for i in range(len(classes))], **run.record(), model=args.model or "bundled",
                    calibration=getattr(run.calibration, "hash", None))
    return samplers, settings, classes


def check_batch(n: int, max_batch: int, option: str) -> None:
    """A run of ``n`` images fits ``--max-batch``; ValueError naming ``option`` otherwise."""
    if n > max_batch:
        raise ValueError(f"{option}: {n} images requested, more than --max-batch {max_batch} in one run; give at "
                         f"most {max_batch}, split the run, or raise --max-batch")


def run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from .generate_pipelines import build_pipeline_runs, check_family_options
    try:
        family = check_family_options(args)
        if family.is_bundled:
            samplers, settings, classes = build_samplers(args)
            runs = [(name, s.config, s.total_nfe, _bundled_stream(s, settings["seeds"], classes, args.previews))
                    for name, s in samplers]
        else:
            runs, settings = build_pipeline_runs(args, family)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, run, total_nfe, stream in runs:
        out = args.out if name == "nested" else args.out / "vanilla"
        code = sample_one(name, run, total_nfe, stream, settings, out, args)
        if code:
            return code
    return 0


def _bundled_stream(sampler, seeds: list[int], classes: list[int], previews: str | None):
    import torch
    return lambda: sampler.stream(seeds, (len(classes), 1, 28, 28), torch.tensor(classes), previews=previews)


def sample_one(name: str, run, total_nfe: int, stream, settings: dict, out: Path, args) -> int:
    """Stream one run (``stream()`` → AnytimeUpdates), print each update, write the files; 130 after Ctrl+C
    (the latest result is kept)."""
    from .recorder import AnytimeRecorder

    rec = AnytimeRecorder(out, {**settings, "method": name, "outer": run.outer_steps,
                                "inner": list(run.inner_steps)},
                          scale=args.scale or (4 if settings["family"] == "bundled" else 1))
    total = total_nfe if run.max_nfe is None else min(run.max_nfe, total_nfe)
    progress = Progress(total, quiet=args.quiet)
    progress.line(f"[{name}] {run.describe()} ({run.solver_name}), {total_nfe} NFE, guidance {settings['guidance']}, "
                  f"{settings['conditioning']}")
    code = 0
    try:
        for u in stream():
            rec.add(u)
            progress.update(u.nfe, f"  nfe {u.nfe:4d}/{total}  outer {u.outer_step}/{u.outer_steps}  t={u.t:.4g}  "
                                   f"{u.elapsed:6.2f} s  {'final' if u.final else u.source}"
                                   + (f"  {u.expected_change.summary()}" if u.expected_change is not None else ""))
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        progress.close()
        raise
    from ..io import interrupts_deferred
    with interrupts_deferred() as late:   # the files of a run are written whole, even on a second Ctrl+C
        progress.close()
        if code == 130:
            print("\ninterrupted: writing the latest result", file=sys.stderr)
        paths = rec.write(interrupted=code == 130)
    if late.interrupted:
        code = 130
    if paths:
        print(f"[{name}] wrote {', '.join(str(p) for p in paths)}")
    return code
