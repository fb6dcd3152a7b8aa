"""`nested-diffusion calibrate --pipeline FAMILY`: the expected-change calibration of a pipeline configuration of any
pipeline family of the model-family table (sd, dit, sdxl, sd3, flux, …; used by ``cli/calibrate``).

    nested-diffusion calibrate --pipeline sd --model-path sd-1.5/ --prompts prompts.txt --feature-model clip-l14/ \\
        --outer 5 --inner 20 --samples 500
    nested-diffusion calibrate --pipeline dit --model-path dit-xl-2-256/ --class-labels all --feature-model clip-l14/
    nested-diffusion calibrate --pipeline sd3 --model-path sd3.5-medium/ --prompts prompts.txt \\
        --feature-model clip-l14/ --schedule progressive --nfe 28 --first 7

The run options (``--schedule``/``--nfe``/``--first`` or ``--outer``/``--inner``, ``--solver``, ``--guidance``, …)
are resolved by ``core.run.resolve_run`` with the family's defaults (``cli.run_args``), as for every command. The
conditioning follows the family (``Family.conditioning``): ``--prompts`` (and ``--negative-prompt``, ``--height``,
``--width``) for prompt families, ``--class-labels`` for class-conditioned ones; sample s (seeds ``--seed`` …) gets
prompt / label ``s mod count``. The runs are cached in chunks (x̂0 latents) under ``--cache-dir`` and resume; the
targets are on the decoded images: pixel RMSE on [0, 1] and 1 − cos of the ``--feature-model`` features (a local
CLIP folder: its image embeddings; 'inception': the local FID weights; 'random-rgb': smoke tests only), cached per
feature network. The flip target needs a classifier: for a class-conditioned family with a CLIP folder and named
classes (id2label), CLIP's zero-shot class among the calibration labels' names; otherwise there is none, and the
calibration predicts no flip probability (NaN). The run-time signals are on the latents (``--signals pixel``, the
default; ``none``: the population curve), so a pipeline call with ``calibration=`` needs no feature network and no
extra decode. Writes ``<pipeline>-<outer>x<inner>-<solver>-<signals>-<hash>.json`` (named schedules:
``<pipeline>-<schedule>-<nfe>-…``); the hash covers the sampler settings, the pipeline's weights fingerprint,
guidance (and size / guided channels) and the prompt / label source.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .run_args import add_dtype_arg

PIPELINE_ONLY = ("model_path", "prompts", "negative_prompt", "class_labels", "height", "width", "feature_model",
                 "device", "decode_batch")


def add_pipeline_args(c) -> None:
    from ..families import describe_families, family_names
    from .argtypes import int_at_least
    g = c.add_argument_group("model family (--pipeline) and diffusers pipelines")
    g.add_argument("--pipeline", choices=family_names(), default="bundled",
                   help=f"the model family (default: bundled): {describe_families()}")
    g.add_argument("--model-path", default=None, help="local diffusers pipeline folder (pipeline families)")
    g.add_argument("--prompts", default=None,
                   help="prompt families: prompt file (one per line, JSON list or COCO captions)")
    g.add_argument("--negative-prompt", default=None, help="prompt families: negative prompt for every sample")
    g.add_argument("--class-labels", default=None,
                   help="class-conditioned families: 'all', ids '1,5,9', ranges '0-9', or a file")
    g.add_argument("--height", type=int_at_least("--height"), default=None, help="prompt families: image height")
    g.add_argument("--width", type=int_at_least("--width"), default=None, help="prompt families: image width")
    g.add_argument("--feature-model", default=None,
                   help="pipeline families: the semantic distance's network: a local CLIP folder, 'inception' "
                        "(local FID weights) or 'random-rgb' (smoke tests)")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_dtype_arg(g)
    g.add_argument("--decode-batch", type=int_at_least("--decode-batch"), default=None,
                   help="VAE decode batch (default 8)")


def pipeline_families() -> str:
    from ..families import family_names, get_family
    return ", ".join(n for n in family_names() if not get_family(n).is_bundled
                     and "calibrate" in get_family(n).surfaces)


def check_calibratable(family) -> None:
    """ValueError naming the family and why, for a family whose pipeline calls cannot use a calibration."""
    import inspect
    if family.generic:      # a stock pipeline through nested_diffusion.anytime(..., calibration=)
        return
    if "calibration" not in inspect.signature(family.pipeline_class().__call__).parameters:
        raise ValueError(f"--pipeline {family.name}: its pipeline ({family.pipeline_class().__name__}) takes no "
                         f"calibration= argument, so a calibration could never be used at run time")


def check_args(args) -> None:
    """Options that do not fit ``--pipeline``; ValueError / FileNotFoundError before anything is loaded."""
    from ..families import get_family
    get_family(args.pipeline).require("calibrate")
    if args.pipeline == "bundled":
        for opt in PIPELINE_ONLY:
            if getattr(args, opt) is not None:
                raise ValueError(f"--{opt.replace('_', '-')}: {getattr(args, opt)!r} is only for the pipeline "
                                 f"families ({pipeline_families()}); the bundled model takes --model, --classifier, "
                                 f"--classes")
        return
    fam = get_family(args.pipeline)
    p, prompts = fam.name, fam.takes_prompt
    check_calibratable(fam)
    for opt, v in (("--model", args.model), ("--classifier", args.classifier),
                   ("--classes", None if args.classes == "all" else args.classes)):
        if v is not None:
            raise ValueError(f"{opt}: {v!r} is for --pipeline bundled; with --pipeline {p} use --model-path, "
                             f"--feature-model and {'--prompts' if prompts else '--class-labels'}")
    if args.model_path is None:
        raise ValueError(f"--model-path: required with --pipeline {p} (a local diffusers pipeline folder)")
    if prompts:
        if args.prompts is None:
            raise ValueError(f"--prompts: required with --pipeline {p} (a prompt file: one prompt per line, a JSON "
                             f"list or COCO captions)")
        if args.class_labels is not None:
            raise ValueError(f"--class-labels: {args.class_labels!r} is for class-conditioned families; "
                             f"--pipeline {p} takes --prompts")
    else:
        if args.prompts is not None or args.negative_prompt is not None:
            raise ValueError(f"--prompts/--negative-prompt: {args.prompts or args.negative_prompt!r} is for "
                             f"prompt families; --pipeline {p} takes --class-labels ('all', '1,5,9', '0-9' or a "
                             f"file)")
        if args.class_labels is None:
            raise ValueError(f"--class-labels: required with --pipeline {p} ('all', ids '1,5,9', ranges '0-9' or "
                             f"a file)")
        if args.height is not None or args.width is not None:
            raise ValueError(f"--height/--width: only for prompt families (--pipeline {p} has a fixed sample size)")
    if args.feature_model is None:
        raise ValueError(f"--feature-model: required with --pipeline {p} (the semantic distance's network: a local "
                         f"CLIP folder, 'inception' or 'random-rgb')")
    if args.feature_model not in ("inception", "random-rgb") and not Path(args.feature_model).is_dir():
        raise ValueError(f"--feature-model: {args.feature_model!r} is not a folder; give a local CLIP folder, "
                         f"'inception' or 'random-rgb'")
    if args.signals == "feature":
        raise ValueError(f"--signals: 'feature' is not available with --pipeline {p} (it would decode every update "
                         f"at run time); use 'pixel' (latent signals, the default) or 'none'")
    if args.heldout:
        raise ValueError(f"--heldout: {args.heldout} held-out samples are evaluated for --pipeline bundled only")
    if args.evaluate:
        raise ValueError(f"--evaluate: {[str(f) for f in args.evaluate]} — measuring existing calibrations is for "
                         f"--pipeline bundled only")
    if not (Path(args.model_path) / "model_index.json").is_file():
        raise FileNotFoundError(f"--model-path: no diffusers pipeline at {args.model_path!r} (model_index.json "
                                f"missing)")
    if args.prompts is not None and not Path(args.prompts).is_file():
        raise FileNotFoundError(f"--prompts: no file at {args.prompts!r}")


def setup(args):
    """(sampler, configuration, conditioning of seeds, feature network, classifier or None, classifier id). The run
    options are resolved with the family's defaults (``cli.run_args.run_from_args``); the sampler is the family's
    factory sampler of that run."""
    from ..core.schedules import Schedule
    from ..families import get_family
    from ..pipelines.expected_change import sampler_identity
    from .eval_pipelines import device_dtype, load_pipeline, pipeline_factory
    from .run_args import build_checked, run_from_args
    from ..evaluation.rgb_metrics import CLIPImageFeatures, feature_network
    fam = get_family(args.pipeline)
    args.decode_batch = args.decode_batch or 8
    pipe = load_pipeline(args)
    T = int(pipe.scheduler.config.get("num_train_timesteps", 1000))
    run = run_from_args(args, fam.run_defaults(), T)
    factory = pipeline_factory(args, pipe)
    sampler = build_checked(factory.build_schedule, Schedule(run.schedule, tuple(run.inner_steps), run.outer_times),
                            None)
    args.tag = (f"{run.outer_steps}x{run.inner_steps[0]}" if run.schedule == "uniform"
                else f"{run.schedule}-{run.inner_total}")
    info = factory.info
    source = ({"prompts": info["prompts"], "negative_prompt": info.get("negative_prompt")} if fam.takes_prompt
              else {"class_labels": info["labels"]})
    source["conditioning"] = "seed s: prompt/label s mod count"
    config = {"sampler": sampler.calibration_settings(), "model": sampler_identity(sampler),
              "calibration_set": source}
    fx = feature_network(args.feature_model, device_dtype(args)[0])
    classify = classifier_id = None
    if not fam.takes_prompt and isinstance(fx, CLIPImageFeatures):
        names = class_names(sampler.pipe, sorted(set(factory.cond_for(range(info["labels"]["count"])))))
        if names is not None:
            classify = fx.zero_shot(names)
            classifier_id = f"zero-shot {fx.extractor_id} over {len(names)} class names"
    return sampler, config, factory.cond_for, fx, classify, classifier_id


def class_names(pipe, ids) -> list[str] | None:
    """The first id2label name of each class id ("tench, Tinca tinca" → "tench"), or None when one has none."""
    first = {int(i): str(n).split(",")[0].strip() for i, n in (getattr(pipe.config, "id2label", None) or {}).items()}
    for name, i in (getattr(pipe, "labels", None) or {}).items():
        first.setdefault(int(i), name)
    names = [first.get(int(i)) for i in ids]
    return None if any(n is None for n in names) else names


def run(args) -> int:
    import torch

    from ..evaluation.calibration_runs import claimed_cache
    from ..evaluation.pipeline_calibration import calibrate_sampler
    from ..io import atomic_write_json
    if args.threads:
        torch.set_num_threads(args.threads)
    args.signals = args.signals or "pixel"
    try:
        check_args(args)
        sampler, config, cond_for, fx, classify, classifier_id = setup(args)
        h, cache = claimed_cache(config, args.cache_dir)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = lambda m: print(m, flush=True)  # noqa: E731
    meta = dict(seeds=[args.seed, args.seed + args.samples], pipeline=args.pipeline,
                model_path=str(args.model_path), prompts=args.prompts, class_labels=args.class_labels,
                feature_description=getattr(fx, "description", fx.extractor_id),
                flip=classifier_id or "none: no classifier for this configuration (flip probability NaN)")
    cal = calibrate_sampler(sampler, config, range(args.seed, args.seed + args.samples), cond_for, cache, fx,
                            fx.extractor_id, classify, classifier_id, args.signals, args.chunk, meta, log)
    args.out.mkdir(parents=True, exist_ok=True)
    solver = sampler.solver.inner.name
    name = f"{args.pipeline}-{args.tag}-{solver}-{args.signals}-{h}.json"
    log(f"wrote {atomic_write_json(args.out / name, cal.to_dict())} ({args.samples} samples)")
    return 0
