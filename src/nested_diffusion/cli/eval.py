"""``nested-diffusion eval <experiment>``: the paper's anytime evaluations on the bundled Fashion-MNIST model, or
on a diffusers Nested SD / DiT pipeline (``--pipeline sd|dit``, see ``cli_pipelines``).

Wiring (cli/main.py): ``cli_eval.add_parser(sub)`` in ``build_parser`` and ``"eval": cli_eval.run`` in
``COMMANDS``. Every experiment caches each (configuration, chunk of seeds) in
``--cache-dir``: rerun the same command after an interruption and only unfinished chunks are sampled.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..core.schedules import schedule_names
from .argtypes import int_at_least as _int, writable_dir
from .run_args import add_solver_args
from . import eval_pipelines as pipeline_opts

RND_DEFAULT = "1x200,2x100,4x50,5x40,10x20,20x10"
CONSISTENCY_DEFAULT = "2x100,4x50,5x40,10x20"
SD_CONSISTENCY_DEFAULT = "2x30,3x20,4x15,6x10"
SCHEDULES = ", ".join(schedule_names())


def _list(name: str, kind, low=None):
    """A comma-separated list of ``kind`` values, each ≥ ``low`` when given."""
    def parse(s):
        try:
            values = [kind(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a comma-separated list of numbers, got {s!r}")
        if not values:
            raise argparse.ArgumentTypeError(f"{name}: expected a comma-separated list of numbers, got {s!r}")
        bad = [v for v in values if low is not None and not v >= low]
        if bad:
            raise argparse.ArgumentTypeError(f"{name}: each value must be ≥ {low}, got {', '.join(map(str, bad))}")
        return values
    return parse


# a runner's argument → this command's option (the runners' errors name their arguments first)
RUNNER_OPTION_NAMES = {"configs": "--configs", "budgets": "--budgets", "fractions": "--fractions",
                       "nested_schedule": "--nested-schedule", "nested_outer": "--nested-outer",
                       "total_nfe": "--total-nfe", "n_samples": "--samples", "chunk": "--chunk",
                       "bootstrap": "--bootstrap", "samples": "--show"}


def runner_error(e: Exception) -> Exception:
    """``e`` with its leading runner argument name replaced by the command-line option."""
    head, sep, rest = str(e).partition(":")
    if sep and head.strip() in RUNNER_OPTION_NAMES:
        return type(e)(f"{RUNNER_OPTION_NAMES[head.strip()]}:{rest}")
    return e


def check_plan(args, factory) -> None:
    """Every configuration (or budget) of the experiment, built and so validated, before any reference feature
    is computed or any sample drawn; ValueError naming the option."""
    from ..evaluation import runners
    try:
        if args.experiment == "budget-table":
            runners.budget_plans(factory, args.budgets, args.fractions, args.nested_outer, args.step,
                                 args.nested_schedule)
        else:
            runners.build_configs(factory, args.configs, args.total_nfe)
    except ValueError as e:
        raise runner_error(e) from None


def _sampling_args(e: argparse.ArgumentParser, samples: bool = True) -> None:
    e.add_argument("--out", type=writable_dir("--out"), default=Path("runs/eval"),
                   help="folder for the JSON and PNG files (default: %(default)s)")
    e.add_argument("--cache-dir", type=writable_dir("--cache-dir"), default=None, help="sample cache (resume); default OUT/cache")
    if samples:
        e.add_argument("--samples", type=_int("--samples", 2), default=2000,
                       help="samples per configuration (default: %(default)s)")
        e.add_argument("--chunk", type=_int("--chunk"), default=100,
                       help="samples per cached chunk = batch size (default: %(default)s)")
    e.add_argument("--seed", type=int, default=0,
                   help="sample i uses seed + i and label i %% classes (or prompt i %% prompts) under every "
                        "configuration (default: %(default)s)")
    e.add_argument("--model", default=None, help="a TinyUNet from_pretrained folder (default: the bundled model)")
    add_solver_args(e, kind=None)   # defaults: the family's (families.py); guidance: the evaluation protocol's
    e.add_argument("--threads", type=_int("--threads"), default=1, help="torch CPU threads (default: %(default)s)")
    e.add_argument("--noise-workers", type=_int("--noise-workers"), default=1,
                   help="bundled: threads drawing the per-sample noise (large chunks on a GPU; default: 1)")
    e.add_argument("--quiet", action="store_true")
    pipeline_opts.add_pipeline_args(e)


def _metric_args(e: argparse.ArgumentParser) -> None:
    e.add_argument("--classifier", default=None, help="feature classifier folder (default: the bundled one)")
    e.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (reference: test split)")
    e.add_argument("--reference-limit", type=_int("--reference-limit", 2), default=None,
                   help="use the first N test images as the reference (default: all 10000)")
    e.add_argument("--heldout", type=_int("--heldout", 2), default=None,
                   help="train images in the noise-floor pool (default: min(60000, max(10000, 3 × --samples)), so "
                        "that the floor's random subsets differ)")
    e.add_argument("--bootstrap", type=_int("--bootstrap", 0), default=200,
                   help="bootstrap replicates, 0 for none (default: %(default)s)")
    pipeline_opts.add_rgb_metric_args(e)


def add_parser(subparsers) -> argparse.ArgumentParser:
    fmt = argparse.HelpFormatter
    p = subparsers.add_parser("eval", help="anytime evaluations: AUC sweep, budget table, consistency, figure",
                              description="Evaluations of the paper's supplementary (Tables 1, 3; Figs. 9–11) at "
                                          "this project's scale. Distances are Fréchet distances on the project "
                                          "classifier's features (not Inception FID); with --pipeline sd|dit "
                                          "on Inception features from local weights (FID).")
    sub = p.add_subparsers(dest="experiment", required=True)
    e = sub.add_parser("rnd-sweep", formatter_class=fmt, help="Table 1 / Fig. 9: log-FD-per-NFE AUC per split")
    _sampling_args(e)
    _metric_args(e)
    e.add_argument("--configs", default=None, help=f"OUTERxINNER list; a schedule name ({SCHEDULES}) runs that "
                                                   f"schedule at --total-nfe (default: {RND_DEFAULT}; sd: "
                                                   f"{pipeline_opts.SD_RND_DEFAULT})")
    e.add_argument("--total-nfe", type=_int("--total-nfe"), default=None, help="NFE per run (default: 200; sd: 60)")
    e.add_argument("--step", type=_int("--step"), default=10,
                   help="FD every STEP NFE, the AUC grid (default: %(default)s)")
    e.add_argument("--no-kid", action="store_true", help="skip KID (needs torchmetrics)")
    e = sub.add_parser("budget-table", formatter_class=fmt, help="Table 3: vanilla x̂0 vs nested at %% of budgets")
    _sampling_args(e)
    _metric_args(e)
    e.add_argument("--budgets", type=_list("--budgets", int, 1), default=[100, 150, 200, 250],
                   help="total NFE budgets (default: 100,150,200,250)")
    e.add_argument("--fractions", type=_list("--fractions", float), default=[0.2, 0.4, 0.6, 0.8, 1.0],
                   help="fractions of each budget (default: 0.2,0.4,0.6,0.8,1.0)")
    e.add_argument("--nested-outer", type=_int("--nested-outer"), default=5,
                   help="outer steps of the nested sampler, inner = budget / outer (default: 5)")
    e.add_argument("--nested-schedule", choices=schedule_names(), default=None,
                   help="a named schedule as the nested sampler at each budget, instead of --nested-outer")
    e.add_argument("--step", type=_int("--step"), default=10,
                   help="snapshot grid; equal grids share the sweep's cache (default: %(default)s)")
    e = sub.add_parser("consistency", formatter_class=fmt, help="Fig. 11: distance of intermediates to the final")
    _sampling_args(e)
    e.add_argument("--classifier", default=None, help="feature classifier folder (feature_cosine)")
    pipeline_opts.add_rgb_metric_args(e, reference=False)
    e.add_argument("--configs", default=None, help=f"OUTERxINNER list or schedule names ({SCHEDULES}) "
                                                   f"(default: {CONSISTENCY_DEFAULT}; sd: {SD_CONSISTENCY_DEFAULT})")
    e.add_argument("--total-nfe", type=_int("--total-nfe"), default=None, help="NFE per run (default: 200; sd: 60)")
    e.add_argument("--step", type=_int("--step"), default=10, help="NFE grid (default: 10)")
    e.add_argument("--metrics", default="mse,feature_cosine",
                   help="comma list of mse, feature_cosine, lpips, clip_image, dreamsim (local weights only)")
    e.add_argument("--lpips-net", choices=("alex", "vgg", "squeeze"), default="alex")
    e.add_argument("--clip-weights", default=None, help="open_clip checkpoint file (clip_image)")
    e.add_argument("--clip-arch", default="ViT-B-32")
    e.add_argument("--dreamsim-dir", default=None, help="folder with DreamSim weights")
    e = sub.add_parser("noise-floor", formatter_class=fmt,
                       help="FD of real train subsets to the test reference: the best FD at each sample count")
    e.add_argument("--samples", type=_list("--samples", int, 2), default=[2000, 10000],
                   help="sample counts, comma list (default: 2000,10000)")
    e.add_argument("--heldout", type=_int("--heldout", 2), default=60000,
                   help="train images in the pool (default: all 60000)")
    e.add_argument("--repeats", type=_int("--repeats", 2), default=10, help="random subsets per count")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--classifier", default=None, help="feature classifier folder (default: the bundled one)")
    e.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    e.add_argument("--out", type=writable_dir("--out"), default=Path("runs/eval"))
    e.add_argument("--threads", type=_int("--threads"), default=1, help="torch CPU threads (default: %(default)s)")
    e = sub.add_parser("qualitative", formatter_class=fmt, help="Fig. 10: same seeds under each split")
    _sampling_args(e, samples=False)
    e.add_argument("--configs", default=None, help=f"OUTERxINNER list or schedule names ({SCHEDULES}), one column "
                                                   f"each (default: {RND_DEFAULT}; "
                                                   f"sd: {pipeline_opts.SD_RND_DEFAULT})")
    e.add_argument("--total-nfe", type=_int("--total-nfe"), default=None, help="NFE per run (default: 200; sd: 60)")
    e.add_argument("--show", type=_list("--show", int, 0), default=[0, 1, 2, 3],
                   help="sample indices to show (default: 0,1,2,3)")
    e.add_argument("--rows-every", type=_int("--rows-every"), default=20,
                   help="one row every N NFE (default: %(default)s)")
    e.add_argument("--scale", type=_int("--scale"), default=2, help="pixel upscaling (default: 2)")
    from . import eval_samples
    eval_samples.add_parser(sub)
    return p


def _defaults(args) -> None:
    """Per-pipeline defaults of --configs and --total-nfe (SD: the COCO protocol's 60 NFE)."""
    sd = pipeline_opts.text_family(args.pipeline)
    if getattr(args, "total_nfe", 0) is None:
        args.total_nfe = 60 if sd else 200
    if getattr(args, "configs", 0) is None:
        consistency = args.experiment == "consistency"
        args.configs = ((SD_CONSISTENCY_DEFAULT if consistency else pipeline_opts.SD_RND_DEFAULT) if sd
                        else (CONSISTENCY_DEFAULT if consistency else RND_DEFAULT))


def _factory(args):
    if args.pipeline != "bundled":
        return pipeline_opts.pipeline_factory(args)
    return bundled_factory_of(args, pipeline_opts.device_dtype(args)[0])


def bundled_factory_of(args, device: str):
    """The bundled model's SamplerFactory from the shared sampling options (eval and sample commands)."""
    from ..bundled import RUN_DEFAULTS, compute_dtype, load_unet
    from ..bundled.factory import bundled_factory
    from ..core.run import resolve_run
    from .run_args import RUN_OPTION_NAMES
    args.solver = args.solver or RUN_DEFAULTS.inner_solver
    dtype = compute_dtype(resolve_run(defaults=RUN_DEFAULTS, names=RUN_OPTION_NAMES, dtype=args.dtype).dtype,
                          "--dtype")
    prefetch = 1 if device == "cpu" and args.noise_workers == 1 else 20   # same values, fewer calls (NoiseSource)
    return bundled_factory(load_unet(args.model, device, dtype), args.guidance, args.solver, args.inner_eta,
                           args.outer_eta, args.grid, prefetch, args.noise_workers)


def _classifier(args, factory):
    """The feature classifier on the sampler's device (features come back to the CPU)."""
    from ..bundled.features import load_feature_classifier
    return load_feature_classifier(args.classifier).to(factory.device or "cpu")


def default_heldout(samples: int) -> int:
    """Noise-floor pool: 3× the sample count (at least 10k, at most the 60k train images), so its subsets vary."""
    return min(60000, max(10000, 3 * samples))


def _noise_floor(args) -> int:
    from ..evaluation.distances import fd_noise_floor
    from ..evaluation.frechet import FrechetToReference
    from ..bundled.features import load_feature_classifier
    from ..bundled.reference import fashion_reference
    from ..io import atomic_write_json
    bad = [n for n in args.samples if not 2 <= n <= args.heldout]
    if bad:
        print(f"error: --samples: each count must lie in [2, --heldout={args.heldout}], got {bad}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        ref = fashion_reference(load_feature_classifier(args.classifier), args.data_dir, None, args.heldout,
                                args.seed, args.out / "cache")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fd = FrechetToReference(ref.stats)
    floors = [fd_noise_floor(fd, ref.heldout, n, args.repeats, args.seed) for n in args.samples]
    doc = dict(experiment="noise_floor", feature_network=ref.stats.extractor_id, reference=ref.info(),
               definition="FD of random n-image subsets of the train split to the test-split reference",
               floors=floors, wall_time_s=time.time() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "noise_floor.json", doc)
    for f in floors:
        print(f"n={f['n']}: FD floor {f['mean']:.4f} ± {f['std']:.4f} (std over {len(f['values'])} subsets of "
              f"{f['pool']})")
    print(f"wrote {args.out / 'noise_floor.json'}")
    return 0


def run(args) -> int:
    import torch
    torch.set_num_threads(args.threads)
    if args.experiment == "noise-floor":
        return _noise_floor(args)
    if args.experiment == "from-samples":
        from . import eval_samples
        return eval_samples.run(args)
    from ..evaluation import runners
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    cache = args.cache_dir or args.out / "cache"
    try:
        _defaults(args)
        pipeline_opts.check_pipeline_args(args)
        factory = _factory(args)
        check_plan(args, factory)
        pipeline = args.pipeline != "bundled"
        if args.experiment == "qualitative":
            doc = runners.run_qualitative(factory, args.out, args.configs, args.total_nfe, args.show,
                                          args.rows_every, args.seed, cache, args.scale, log)
        elif args.experiment == "consistency":
            from ..evaluation.consistency import build_consistency_metrics
            names = [m.strip() for m in args.metrics.split(",") if m.strip()]
            ext = None
            if "feature_cosine" in names:
                ext = pipeline_opts.pipeline_features(args) if pipeline else _classifier(args, factory)
            metrics = build_consistency_metrics(names, ext, args.lpips_net, args.clip_weights, args.clip_arch,
                                                args.dreamsim_dir)
            doc = runners.run_consistency(factory, metrics, args.out, args.configs, args.total_nfe, args.step,
                                          args.samples, args.seed, args.chunk, cache, log)
        else:
            from ..bundled.reference import fashion_reference
            if pipeline:
                scores = pipeline_opts.pipeline_scores(args, factory)
                ext = pipeline_opts.pipeline_features(args)
                ref = pipeline_opts.pipeline_reference(args, factory, ext, cache, log)
            else:
                scores = []
                ext = _classifier(args, factory)
                heldout = args.heldout or default_heldout(args.samples)
                ref = fashion_reference(ext, args.data_dir, args.reference_limit, heldout, args.seed, cache, log)
            if args.experiment == "rnd-sweep":
                doc = runners.run_rnd_sweep(factory, ref, args.out, args.configs, args.total_nfe, args.step,
                                            args.samples, args.seed, args.chunk, args.bootstrap, cache,
                                            not args.no_kid, log, scores)
            else:
                doc = runners.run_budget_table(factory, ref, args.out, args.budgets, args.fractions,
                                               args.nested_outer, args.step, args.samples, args.seed, args.chunk,
                                               args.bootstrap, cache, log, scores, args.nested_schedule)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished chunks are cached in {cache}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    print(f"wrote {', '.join(str(args.out / f) for f in doc['files'])} ({doc['wall_time_s']:.1f} s)")
    return 0
