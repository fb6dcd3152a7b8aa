"""`nested-diffusion eval ... --pipeline sd|dit`: the options and loaders that put the diffusers pipelines under
the evaluation runners (used by ``cli_eval``).

    nested-diffusion eval rnd-sweep --pipeline sd --model-path sd-1.5/ --prompts captions_val2014.json \\
        --configs 1x60,2x30,3x20,4x15,6x10 --total-nfe 60 --reference-images coco-val/ --clip-model clip-l14/
    nested-diffusion eval consistency --pipeline dit --model-path dit-xl-2-256/ --class-labels all --metrics mse

Pipelines are loaded from local folders only (``local_files_only``); FD uses the FID Inception network from its
local weights file (``--features inception``, the default) and a reference given as real images or mu/sigma.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .argtypes import int_at_least as _int
from .run_args import add_dtype_arg, device_dtype  # noqa: F401 — device_dtype: pipeline_opts.device_dtype
SD_RND_DEFAULT = "1x60,2x30,3x20,4x15,6x10"   # the COCO protocol's 60 NFE


def add_pipeline_args(e: argparse.ArgumentParser) -> None:
    from ..families import describe_families, family_names
    g = e.add_argument_group("model family (--pipeline) and diffusers pipelines")
    g.add_argument("--pipeline", choices=family_names(), default="bundled",
                   help=f"the model family (default: bundled): {describe_families()}")
    g.add_argument("--model-path", default=None, help="local diffusers pipeline folder (sd, dit)")
    g.add_argument("--prompts", default=None,
                   help="sd: prompt file, one per line, a JSON list, or COCO captions JSON; sample i gets prompt "
                        "i %% count")
    g.add_argument("--negative-prompt", default=None, help="sd: negative prompt for every sample")
    g.add_argument("--class-labels", default="all",
                   help="dit: 'all' (sample i gets class i %% classes), ids '1,5,9', ranges '0-9', or a file")
    g.add_argument("--height", type=_int("--height"), default=None, help="sd: image height (default: model's)")
    g.add_argument("--width", type=_int("--width"), default=None, help="sd: image width (default: model's)")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_dtype_arg(g)
    g.add_argument("--decode-batch", type=_int("--decode-batch"), default=8, help="VAE decode batch (default 8)")


def add_rgb_metric_args(e: argparse.ArgumentParser, reference: bool = True) -> None:
    g = e.add_argument_group("metrics for --pipeline sd|dit")
    g.add_argument("--features", choices=("inception", "random-rgb"), default=None,
                   help="feature network (default: inception from its local weights file; random-rgb: smoke "
                        "tests only)")
    if reference:
        g.add_argument("--reference-images", default=None,
                       help="folder of real images (first --reference-limit files; next --heldout: noise floor)")
        g.add_argument("--reference-stats", default=None, help="mu/sigma .npz of the reference (FD only)")
        g.add_argument("--clip-model", default=None,
                       help="sd: local transformers CLIP folder; adds the CLIP score to each prompt per mark")


def check_pipeline_args(args) -> None:
    """Options that do not fit the chosen pipeline; raised before anything is loaded."""
    from ..families import get_family
    get_family(args.pipeline).require("sample" if getattr(args, "experiment", None) == "sample" else "eval")
    if args.pipeline == "bundled":
        for opt in ("model_path", "prompts", "negative_prompt", "height", "width", "features", "reference_images",
                    "reference_stats", "clip_model"):
            if getattr(args, opt, None) is not None:
                raise ValueError(f"--{opt.replace('_', '-')}: only for --pipeline sd|dit (the bundled model takes "
                                 f"--model, --classifier, --data-dir)")
        return
    fam = get_family(args.pipeline)
    if fam.generic and (getattr(args, "solver", None) is not None or getattr(args, "inner_eta", None) not in (None, 0.0)):
        opt = "--solver" if getattr(args, "solver", None) is not None else "--inner-eta"
        raise ValueError(f"{opt}: --pipeline {fam.name} runs its own scheduler as the inner solver (a stock "
                         f"pipeline through NestedScheduler); leave {opt} out")
    if args.model is not None:
        raise ValueError(f"--model: a TinyUNet folder is for --pipeline bundled; use --model-path with "
                         f"--pipeline {args.pipeline}")
    if args.model_path is None:
        raise ValueError(f"--model-path: required with --pipeline {args.pipeline} (a local diffusers folder)")
    if text_family(args.pipeline) and args.prompts is None:
        raise ValueError(f"--prompts: required with --pipeline {args.pipeline} (a prompt file or COCO captions JSON)")
    if not text_family(args.pipeline) and (args.prompts is not None or args.negative_prompt is not None):
        raise ValueError(f"--prompts/--negative-prompt: only for prompt-conditioned families ({text_families()}); "
                         f"{args.pipeline} takes --class-labels")
    if not text_family(args.pipeline) and (args.height is not None or args.width is not None):
        raise ValueError(f"--height/--width: only for prompt-conditioned families ({text_families()}); "
                         f"{args.pipeline} has a fixed sample size")
    if getattr(args, "clip_model", None) is not None and not text_family(args.pipeline):
        raise ValueError("--clip-model: the CLIP score needs prompts (--pipeline sd)")
    if not (Path(args.model_path) / "model_index.json").is_file():
        raise FileNotFoundError(f"--model-path: no diffusers pipeline at {args.model_path!r} (model_index.json "
                                f"missing)")
    for opt, v, want in (("--prompts", args.prompts, "file"), ("--clip-model", getattr(args, "clip_model", None),
                         "dir"), ("--reference-stats", getattr(args, "reference_stats", None), "file"),
                         ("--reference-images", getattr(args, "reference_images", None), "dir")):
        if v is not None and not (Path(v).is_file() if want == "file" else Path(v).is_dir()):
            raise FileNotFoundError(f"{opt}: no {'file' if want == 'file' else 'folder'} at {v!r}")
    distribution = args.experiment in ("rnd-sweep", "budget-table")
    if distribution and (args.reference_stats is None) == (args.reference_images is None):
        raise ValueError(f"--reference-images / --reference-stats: give exactly one reference for "
                         f"{args.experiment} with --pipeline {args.pipeline}")
    needs_features = distribution or "feature_cosine" in getattr(args, "metrics", "")
    if needs_features and getattr(args, "features", None) in (None, "inception"):
        from ..evaluation.features import require_inception_weights
        require_inception_weights()  # fail before the pipeline is loaded


def load_pipeline(args):
    """The family's Nested pipeline from ``--model-path`` on ``--device`` / ``--dtype`` (local files only)."""
    from ..families import get_family
    device, dtype = device_dtype(args)
    return get_family(args.pipeline).load(args.model_path, device, dtype)


def text_family(name: str) -> bool:
    from ..families import get_family
    return get_family(name).takes_prompt


def text_families() -> str:
    from ..families import family_names
    return ", ".join(n for n in family_names() if text_family(n))


def pipeline_factory(args, pipe=None):
    """The SamplerFactory of ``--pipeline`` (a pipeline family) with the sampling options of the command line."""
    from ..families import get_family
    from ..pipelines.factories import dit_factory, sd_factory
    pipe = load_pipeline(args) if pipe is None else pipe
    factory = get_family(args.pipeline).factory
    if factory == "generic":
        from ..pipelines.factories_generic import generic_factory
        return generic_factory(pipe, args.prompts, args.guidance, args.outer_eta, args.grid, args.negative_prompt,
                               args.height, args.width, args.decode_batch, family=args.pipeline)
    if factory == "modern":
        from ..pipelines.factories_modern import modern_factory
        return modern_factory(pipe, args.prompts, args.guidance, args.solver, args.inner_eta, args.outer_eta,
                              args.grid, args.negative_prompt, args.height, args.width, args.decode_batch)
    common = dict(inner_solver=args.solver,
                  inner_eta=args.inner_eta, outer_eta=args.outer_eta, grid=args.grid,
                  decode_batch=args.decode_batch, model_id=None)
    if args.guidance is not None:
        common["guidance_scale"] = args.guidance
    if factory == "sd":
        return sd_factory(pipe, args.prompts, negative_prompt=args.negative_prompt, height=args.height,
                          width=args.width, **common)
    return dit_factory(pipe, args.class_labels, **common)


def image_size(factory) -> tuple[int, int]:
    if isinstance(factory.info.get("height"), int) and isinstance(factory.info.get("width"), int):
        return factory.info["height"], factory.info["width"]   # text pipelines (FLUX latents are packed)
    sampler = factory.build(1, 1)
    f = sampler.pipe.vae_scale_factor
    return factory.sample_shape[1] * f, factory.sample_shape[2] * f


def pipeline_features(args):
    from ..evaluation.rgb_metrics import feature_network
    return feature_network(args.features or "inception", device_dtype(args)[0])


def pipeline_reference(args, factory, extractor, cache_dir, log=None):
    """``--reference-stats`` (FD only) or ``--reference-images`` (features of real images, cached)."""
    from ..evaluation.rgb_metrics import reference_from_folder, reference_from_stats
    if args.reference_stats is not None:
        return reference_from_stats(extractor, args.reference_stats)
    if log:
        log(f"reference features: {args.reference_images}")
    return reference_from_folder(extractor, args.reference_images, image_size(factory), args.reference_limit,
                                 args.heldout or 0, cache_dir=cache_dir)


def pipeline_scores(args, factory) -> list:
    if getattr(args, "clip_model", None) is None:
        return []
    from ..pipelines.factories import prompt_score
    from ..evaluation.rgb_metrics import CLIPScorer
    return [prompt_score(factory, CLIPScorer(args.clip_model, device_dtype(args)[0]))]
