"""``nested-diffusion generate``: anytime sampling on the bundled Fashion-MNIST model; prints every update and
writes final.png, progression.png/.gif and updates.json (each atomically)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bundled.data import CLASS_NAMES
from .argtypes import inner_eta_for, nonneg_float, positive_int, solver_choices, writable_dir
from .progress import Progress
from .schedule_args import add_schedule_args, describe, resolve_schedule


def add_parser(subparsers) -> argparse.ArgumentParser:
    g = subparsers.add_parser("generate", help="anytime sampling on the bundled Fashion-MNIST model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=(
                           "Sample with nested diffusion, print every anytime update, and write into --out: "
                           "final.png, progression.png (rows: samples, columns: updates), progression.gif and "
                           "updates.json. Ctrl+C stops and writes the latest result."))
    g.add_argument("--out", type=writable_dir("--out"), default=Path("out/generate"), help="output folder")
    g.add_argument("--classes", default="all",
                   help=f"comma-separated class indices or names, or 'all' ({', '.join(CLASS_NAMES)})")
    g.add_argument("--seed", type=int, default=0, help="sample i uses seed + i (same seed, same image)")
    add_schedule_args(g)
    g.add_argument("--solver", choices=solver_choices(), default="ddpm",
                   help="inner solver (ddpm = learned-variance ancestral sampling, the paper's DiT setting)")
    g.add_argument("--inner-eta", type=nonneg_float("--inner-eta"), default=None,
                   help="η of a DDIM inner solver (default 0.85, as in the paper's SD setting)")
    g.add_argument("--outer-eta", type=nonneg_float("--outer-eta"), default=0.0,
                   help="η of the outer DDIM step (a number or sqrt_one_minus_alpha_bar)")
    g.add_argument("--guidance", type=nonneg_float("--guidance"), default=None,
                   help="classifier-free guidance scale, inner process only (default: 1.25, the FD-best for nested and "
                        "vanilla sampling of the bundled model at 100 NFE; docs/RESULTS.md)")
    g.add_argument("--budget", type=positive_int("--budget"), default=None, help="max NFE; best result within it")
    g.add_argument("--deadline", type=float, default=None, help="wall-clock seconds; best result before it")
    g.add_argument("--grid", choices=("clean", "authors"), default="clean", help="grid convention (README)")
    g.add_argument("--vanilla", action="store_true",
                   help="also run vanilla sampling at the same NFE (outer=1) and write it to OUT/vanilla/")
    g.add_argument("--model", default=None, help="a from_pretrained folder (default: the bundled model)")
    g.add_argument("--scale", type=positive_int("--scale"), default=4, help="pixel upscaling in pictures")
    g.add_argument("--threads", type=positive_int("--threads"), default=None, help="torch CPU threads")
    g.add_argument("--quiet", action="store_true", help="no per-update lines or progress bar")
    g.add_argument("--calibration", default="auto", help="expected change: 'auto' (the shipped pixel-signal "
                   "calibration of this configuration, if any), 'feature' (the shipped one with classifier signals), "
                   "'none', or a file from `nested-diffusion calibrate`")

    return g


def build_samplers(args) -> tuple[list, dict, list[int]]:
    """[(name, NestedSampler)] for the nested run and, with --vanilla, vanilla at the same NFE; the settings
    record; the class of each sample. Raises ValueError/TypeError/FileNotFoundError with a message naming the option."""
    from ..bundled import DEMO_GUIDANCE, load_unet, make_denoiser, parse_classes
    from ..core.nested import NestedSampler

    classes = parse_classes(args.classes)
    if args.deadline is not None and not args.deadline > 0:
        raise ValueError(f"--deadline: must be a positive number of seconds, got {args.deadline}")
    inner_eta = inner_eta_for(args.solver, args.inner_eta)
    model = load_unet(args.model)
    guidance = DEMO_GUIDANCE if args.guidance is None else args.guidance
    den = make_denoiser(model, guidance)
    schedule = resolve_schedule(args, den.schedule.num_train_timesteps - 1)
    nested = NestedSampler.from_schedule(den, schedule, inner_solver=args.solver, inner_eta=inner_eta,
                                         outer_eta=args.outer_eta, grid=args.grid)
    samplers = [("nested", nested)] + ([("vanilla", NestedSampler(den, 1, schedule.inner_total, args.solver,
                                                                  inner_eta, args.outer_eta, args.grid))]
                                       if args.vanilla else [])
    settings = dict(classes=[CLASS_NAMES[c] for c in classes],
                    seeds=[args.seed + i for i in range(len(classes))], schedule=schedule.name,
                    outer=schedule.outer_steps, inner=list(schedule.inner_steps),
                    outer_times=None if schedule.outer_times is None else list(schedule.outer_times),
                    solver=args.solver, inner_eta=inner_eta, outer_eta=args.outer_eta, guidance=guidance,
                    budget=args.budget, deadline=args.deadline, grid=args.grid, model=args.model or "bundled")
    from ..bundled.expected_change import resolve_calibration
    samplers[0][1].calibration = resolve_calibration(args.calibration, samplers[0][1], model, guidance)
    settings["calibration"] = getattr(samplers[0][1].calibration, "hash", None)
    return samplers, settings, classes


def run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        samplers, settings, classes = build_samplers(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, sampler in samplers:
        out = args.out if name == "nested" else args.out / "vanilla"
        code = sample_one(name, sampler, settings, classes, out, args)
        if code:
            return code
    return 0


def sample_one(name: str, sampler, settings: dict, classes: list[int], out: Path, args) -> int:
    """Stream one sampler, print each update, write the files; 130 after Ctrl+C (the latest result is kept)."""
    import torch

    from .recorder import AnytimeRecorder

    out.mkdir(parents=True, exist_ok=True)
    rec = AnytimeRecorder(out, {**settings, "method": name, "outer": sampler.outer_steps,
                                "inner": list(sampler.inner_steps)}, scale=args.scale)
    total = sampler.total_nfe if args.budget is None else min(args.budget, sampler.total_nfe)
    progress = Progress(total, quiet=args.quiet)
    shape = describe(sampler.inner_steps, sampler.solver.outer_times)
    progress.line(f"[{name}] {shape} ({args.solver}), "
                  f"{sampler.total_nfe} NFE, guidance {settings['guidance']}, classes {', '.join(settings['classes'])}")
    code = 0
    try:
        for u in sampler.stream(settings["seeds"], (len(classes), 1, 28, 28), torch.tensor(classes),
                                max_nfe=args.budget, deadline=args.deadline):
            rec.add(u)
            progress.update(u.nfe, f"  nfe {u.nfe:4d}/{total}  outer {u.outer_step}/{u.outer_steps}  t={u.t:3d}  "
                                   f"{u.elapsed:6.2f} s  {'final' if u.final else u.source}"
                                   + (f"  {u.expected_change.summary()}" if u.expected_change is not None else ""))
    except KeyboardInterrupt:
        code = 130
        print("\ninterrupted: writing the latest result", file=sys.stderr)
    finally:
        progress.close()
    paths = rec.write(interrupted=code == 130)
    if paths:
        print(f"[{name}] wrote {', '.join(str(p) for p in paths)}")
    return code
