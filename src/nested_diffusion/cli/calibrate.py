"""``nested-diffusion calibrate``: fit the expected-change predictor for one sampler configuration of the bundled
model, and (with ``--heldout``) measure it on held-out seeds.

Runs ``--samples`` calibration samples (seeds ``--seed`` …, class of seed s = classes[s mod len(classes)]) in
chunks cached under ``--cache-dir`` (resumable: finished chunks are skipped), computes each shown update's
remaining change to the final (pixel RMSE, 1 − cosine of the bundled classifier's features, class flip), fits
``core.change_fit`` and writes ``<outer>x<inner>-<solver>-<hash>.json`` into ``--out`` atomically. With
``--heldout N`` it also runs N seeds from ``--heldout-seed`` (never used in fitting) and writes
``evaluation-<hash>-<signals>.json`` (Spearman, MAE vs the population curve, interval coverage, Brier score).

With ``--pipeline sd|dit --model-path DIR (--prompts FILE | --class-labels SPEC) --feature-model ...`` it
calibrates a Nested Stable Diffusion / DiT pipeline configuration instead (see ``cli/calibrate_pipelines``):
latent signals, decoded-image targets, the same resumable chunk cache and configuration hash.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import calibrate_pipelines
from .argtypes import int_at_least, writable_dir
from .run_args import add_schedule_args, add_solver_args, build_checked, run_from_args


def add_parser(sub) -> None:
    c = sub.add_parser("calibrate", help="fit the expected-change predictor for a sampler configuration",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_schedule_args(c)  # defaults: the family's (bundled: generate's ramp at 100 NFE; sd/dit: uniform)
    add_solver_args(c, kind=None)
    c.add_argument("--classes", default="all", help="classes the seeds cycle through (default: all)")
    c.add_argument("--samples", type=int_at_least("--samples", 20), default=1000, help="calibration samples")
    c.add_argument("--seed", type=int, default=100000, help="first calibration seed (default: 100000)")
    c.add_argument("--heldout", type=int_at_least("--heldout", 0), default=0, help="held-out samples to evaluate")
    c.add_argument("--heldout-seed", type=int, default=200000, help="first held-out seed (default: 200000)")
    c.add_argument("--signals", choices=("feature", "pixel", "none"), default=None,
                   help="feature: pixel + classifier signals (default for the bundled model); pixel: no feature "
                        "network at run time (default for sd/dit: signals on the latents); none: the population "
                        "curve")
    c.add_argument("--evaluate", type=Path, nargs="+", default=None, metavar="FILE",
                   help="measure these calibration files of this configuration on the --heldout seeds instead of "
                        "fitting a new one (no calibration samples are run)")
    c.add_argument("--chunk", type=int_at_least("--chunk"), default=100, help="samples per cached chunk")
    c.add_argument("--cache-dir", type=writable_dir("--cache-dir"), default=None, help="chunk cache (default: runs/calibrate/<hash>)")
    c.add_argument("--out", type=writable_dir("--out"), default=Path("runs/calibrate"), help="folder for the calibration file")
    c.add_argument("--model", default=None, help="a from_pretrained folder (default: the bundled model)")
    c.add_argument("--classifier", default=None, help="classifier folder (default: the bundled one)")
    c.add_argument("--threads", type=int_at_least("--threads"), default=None, help="torch CPU threads")
    calibrate_pipelines.add_pipeline_args(c)


def setup(args):
    """Sampler, configuration and the classifier; ValueError/FileNotFoundError on bad input."""
    import torch

    from ..bundled import RUN_DEFAULTS, compute_dtype, load_unet, make_denoiser, parse_classes
    from ..bundled.expected_change import model_identity
    from ..core.nested import NestedSampler
    from ..bundled.features import load_feature_classifier
    if args.seed < 0 or args.heldout_seed < 0:
        raise ValueError(f"--seed/--heldout-seed: seeds must be ≥ 0, got {args.seed}/{args.heldout_seed}")
    if args.heldout and not args.evaluate and args.seed < args.heldout_seed + args.heldout and \
            args.heldout_seed < args.seed + args.samples:
        raise ValueError(f"--heldout-seed: held-out seeds [{args.heldout_seed}, {args.heldout_seed + args.heldout})"
                         f" overlap the calibration seeds [{args.seed}, {args.seed + args.samples})")
    classes = parse_classes(args.classes)
    run = run_from_args(args, RUN_DEFAULTS)
    unet = load_unet(args.model, dtype=compute_dtype(run.dtype, "--dtype"))
    guidance = run.guidance
    den = make_denoiser(unet, guidance)
    args.tag = (f"{run.outer_steps}x{run.inner_steps[0]}" if run.schedule == "uniform"
                else f"{run.schedule}-{run.inner_total}")
    args.solver = run.solver_name
    sampler = build_checked(NestedSampler.from_run, den, run)
    config = {"sampler": sampler.calibration_settings(), "model": model_identity(unet, guidance)}
    fx = load_feature_classifier(args.classifier)
    labels = lambda seeds: torch.tensor([classes[s % len(classes)] for s in seeds])  # noqa: E731
    return sampler, config, fx, labels, classes


def run(args) -> int:
    if args.pipeline != "bundled":
        return calibrate_pipelines.run(args)
    import torch

    from ..core.change_fit import fit_calibration
    from ..evaluation.calibration_runs import claimed_cache, run_chunks
    from ..evaluation.expected_change import PIXEL_SIGNALS, calibration_set
    from ..io import atomic_write_json
    if args.threads:
        torch.set_num_threads(args.threads)
    args.signals = args.signals or "feature"
    try:
        calibrate_pipelines.check_args(args)
        if args.evaluate and not args.heldout:
            raise ValueError("--evaluate: give --heldout N, the held-out samples to measure the files on")
        sampler, config, fx, labels, classes = setup(args)
        cals = [load_checked(path, config, range(args.heldout_seed, args.heldout_seed + args.heldout))
                for path in args.evaluate or ()]
        h, cache = claimed_cache(config, args.cache_dir)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.evaluate:
        for cal in cals:
            evaluate_heldout(args, sampler, cal, fx, labels, cache, h, cal.meta.get("signals", "feature"), log)
        return 0
    fit_paths = run_chunks(sampler, range(args.seed, args.seed + args.samples), labels, (1, 28, 28), cache,
                           args.chunk, log)
    feats = {"feature": None, "pixel": PIXEL_SIGNALS, "none": ()}[args.signals]
    data = calibration_set(fit_paths, sampler.inner_steps, fx.classifier, args.signals == "feature")
    meta = dict(seeds=[args.seed, args.seed + args.samples], classes=classes, signals=args.signals,
                feature_network=fx.extractor_id, distances=["pixel RMSE on [0, 1]", f"1 - cos({fx.extractor_id})",
                                                           "class flip (argmax of the classifier)"],
                first_result_nfe=sampler.solver.inner.nfe(sampler.inner_steps[0]))
    cal = fit_calibration(data["signals"], data["targets"], data["nfe"], config, meta, feats)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{args.tag}-{args.solver}-{args.signals}-{h}.json"
    log(f"wrote {atomic_write_json(args.out / name, cal.to_dict())} ({args.samples} samples)")
    if args.heldout:
        evaluate_heldout(args, sampler, cal, fx, labels, cache, h, args.signals, log)
    return 0


def load_checked(path: Path, config: dict, heldout: range):
    """A calibration file, ValueError unless it was made for ``config`` (naming both hashes) from seeds outside
    ``heldout``."""
    from ..core.expected_change import config_hash, load_calibration
    cal = load_calibration(path, option="--evaluate")
    if cal.hash != config_hash(config):
        raise ValueError(f"--evaluate: {str(path)!r} is a calibration of configuration {cal.hash}, not of this "
                         f"command's {config_hash(config)}; give the matching --outer/--inner/--solver/--guidance")
    lo, hi = cal.meta.get("seeds", [0, 0])
    if lo < heldout.stop and heldout.start < hi:
        raise ValueError(f"--heldout-seed: held-out seeds [{heldout.start}, {heldout.stop}) overlap the seeds "
                         f"[{lo}, {hi}) {str(path)!r} was fitted on")
    return cal


def evaluate_heldout(args, sampler, cal, fx, labels, cache: Path, h: str, signals: str, log) -> Path:
    """Run the held-out seeds (cached chunks) and write ``evaluation-<hash>-<signals>.json`` for ``cal``."""
    from ..evaluation.calibration_runs import run_chunks
    from ..evaluation.expected_change import calibration_set, evaluate
    from ..io import atomic_write_json
    ho_paths = run_chunks(sampler, range(args.heldout_seed, args.heldout_seed + args.heldout), labels,
                          (1, 28, 28), cache, args.chunk, log)
    ho = calibration_set(ho_paths, sampler.inner_steps, fx.classifier, signals == "feature")
    doc = evaluate(cal, ho["signals"], ho["targets"], ho["nfe"])
    doc.update(config_hash=h, signals=signals, heldout_seeds=[args.heldout_seed, args.heldout_seed + args.heldout])
    args.out.mkdir(parents=True, exist_ok=True)
    path = atomic_write_json(args.out / f"evaluation-{h}-{signals}.json", doc)
    p = doc["pooled"]["after_first_result"]
    log(f"wrote {path}: from the first inner result on, MAE {-100 * p['rmse']['mae_reduction']:+.0f}% (rmse), "
        f"{-100 * p['semantic']['mae_reduction']:+.0f}% (semantic) vs the population curve; 80% coverage "
        f"{p['rmse']['coverage_80']:.2f}/{p['semantic']['coverage_80']:.2f}; Brier {p['flip']['brier']:.4f} vs "
        f"{p['flip']['brier_population']:.4f}")
    return path
