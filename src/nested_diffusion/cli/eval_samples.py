"""``nested-diffusion eval from-samples --samples-from DIR [DIR ...]``: FD per NFE mark, AUC, FD at fractions of
the budget and consistency of finished sample folders (``nested-diffusion sample``), without sampling.

    nested-diffusion eval from-samples --samples-from runs/50k-1x200 runs/50k-4x50 --out runs/eval-50k

Bundled-model folders are measured on the project classifier's features against the Fashion-MNIST test split
(as ``eval rnd-sweep``); pipeline folders (sd, dit) on ``--features`` (Inception from its local weights file)
against ``--reference-images`` or ``--reference-stats``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import eval_pipelines as pipeline_opts
from .argtypes import int_at_least, writable_dir


def _fractions(s: str) -> list[float]:
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fractions: expected a comma-separated list of numbers, got {s!r}")


def add_parser(subparsers) -> None:
    e = subparsers.add_parser("from-samples", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              help="FD/AUC/budget/consistency of finished `sample` folders (no sampling)")
    e.add_argument("--samples-from", type=Path, nargs="+", required=True, help="finished sample folder(s)")
    e.add_argument("--out", type=writable_dir("--out"), default=Path("runs/eval-samples"), help="folder for JSON and PNG")
    e.add_argument("--step", type=int_at_least("--step"), default=10, help="AUC grid Δ (NFE)")
    e.add_argument("--fractions", type=_fractions, default=[0.2, 0.4, 0.6, 0.8, 1.0],
                   help="fractions of each run's NFE at which FD is reported (Table 3's readout)")
    e.add_argument("--metrics", default="mse", help="consistency metrics (mse, feature_cosine, ...; 'none')")
    e.add_argument("--bootstrap", type=int_at_least("--bootstrap", 0), default=0, help="bootstrap replicates")
    e.add_argument("--seed", type=int, default=0, help="bootstrap / noise-floor seed")
    e.add_argument("--classifier", default=None, help="bundled: feature classifier folder")
    e.add_argument("--data-dir", default=None, help="bundled: Fashion-MNIST IDX folder")
    e.add_argument("--reference-limit", type=int_at_least("--reference-limit", 2), default=None,
                   help="reference: the first N real images (default: all)")
    e.add_argument("--heldout", type=int_at_least("--heldout", 0), default=None,
                   help="real images in the noise-floor pool (bundled default: 10000; pipelines: 0)")
    e.add_argument("--device", default=None, help="feature network device (default: cpu)")
    e.add_argument("--cache-dir", type=writable_dir("--cache-dir"), default=None, help="reference feature cache (default: OUT/cache)")
    e.add_argument("--threads", type=int_at_least("--threads"), default=1)
    e.add_argument("--quiet", action="store_true")
    pipeline_opts.add_rgb_metric_args(e)


def _sets(folders):
    from ..distributed import SampleStore
    from ..evaluation.sample_folder import SampleSet
    out = []
    for d in folders:
        store = SampleStore(d, option="--samples-from")
        cfg = store.read_manifest()["config"]
        store.require_complete(cfg)                     # before any feature is computed
        out.append(SampleSet(f"{cfg['outer']}x{cfg['inner']}", cfg["outer"], cfg["inner"], cfg["total_nfe"],
                             store.iter_items, dict(cfg["sampler"], folder=str(d), seed=cfg["seed"])))
    return out


def _reference(args, sets, pipeline: bool, log):
    device = args.device or "cpu"
    cache = args.cache_dir or args.out / "cache"
    if not pipeline:
        from ..bundled.features import load_feature_classifier
        from ..bundled.reference import fashion_reference
        ext = load_feature_classifier(args.classifier).to(device)
        heldout = 10000 if args.heldout is None else args.heldout
        return ext, fashion_reference(ext, args.data_dir, args.reference_limit, heldout, args.seed, cache, log)
    from ..evaluation.rgb_metrics import feature_network, reference_from_folder, reference_from_stats
    ext = feature_network(args.features or "inception", device)
    if (args.reference_images is None) == (args.reference_stats is None):
        raise ValueError("--reference-images / --reference-stats: give exactly one reference for pipeline samples")
    if args.reference_stats is not None:
        return ext, reference_from_stats(ext, args.reference_stats)
    size = tuple(next(iter(sets[0].parts())).images[0].shape[-2:])
    return ext, reference_from_folder(ext, args.reference_images, size, args.reference_limit, args.heldout or 0,
                                      cache_dir=cache)


def run(args) -> int:
    import torch
    from ..distributed import IncompleteRunError
    from ..evaluation.consistency import build_consistency_metrics
    from ..evaluation.sample_folder import evaluate_sample_sets
    torch.set_num_threads(args.threads)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    try:
        if args.clip_model is not None:
            raise ValueError("--clip-model: the CLIP score is not computed from sample folders (the folder keeps "
                             "no prompts); use `eval rnd-sweep --pipeline sd --clip-model ...`")
        sets = _sets(args.samples_from)
        kinds = {"pipeline" if "pipeline" in s.info else "bundled" for s in sets}
        if len(kinds) > 1:
            raise ValueError("--samples-from: mixes bundled-model and pipeline folders; evaluate them separately")
        ext, ref = _reference(args, sets, kinds == {"pipeline"}, log)
        names = [m.strip() for m in args.metrics.split(",") if m.strip() and m.strip() != "none"]
        metrics = build_consistency_metrics(names, ext, clip_weights=None)
        doc = evaluate_sample_sets(sets, ref, metrics, args.step, args.fractions, args.bootstrap, args.seed,
                                   args.out, log)
    except (ValueError, TypeError, FileNotFoundError, ImportError, IncompleteRunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(args.out / f) for f in doc['files'])} ({doc['wall_time_s']:.1f} s)")
    return 0
