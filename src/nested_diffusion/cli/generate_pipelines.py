"""``nested-diffusion generate --pipeline FAMILY --model-path DIR``: the same anytime run, files and progress lines
as for the bundled model, on any diffusers pipeline family of the family table (``families.py``).

The run options are resolved once (``cli.run_args`` → ``core.run.resolve_run`` with the family's defaults) and
handed to the pipeline as that resolved run (a ``Schedule`` plus the solver settings), so the pipeline decides
nothing again. Sample i uses seed ``--seed + i`` (its own generator), as everywhere in the library.
"""
from __future__ import annotations

import argparse
from typing import Any

from .argtypes import positive_int
from .run_args import add_dtype_arg, device_dtype

BUNDLED_ONLY = ("model",)                       # bundled-only options (pipelines take --model-path)
PIPELINE_ONLY = ("model_path", "prompt", "negative_prompt", "height", "width", "device")


def add_pipeline_options(g: argparse.ArgumentParser) -> None:
    from ..families import describe_families, family_names
    p = g.add_argument_group("model family (--pipeline) — a diffusers pipeline folder instead of the bundled model")
    p.add_argument("--pipeline", choices=family_names(), default="bundled",
                   help=f"the model family (default: bundled): {describe_families()}")
    p.add_argument("--model-path", default=None, help="local diffusers pipeline folder (save_pretrained layout)")
    p.add_argument("--prompt", action="append", default=None,
                   help="text prompt (prompt families); repeat for several images")
    p.add_argument("--negative-prompt", default=None, help="negative prompt for every image (prompt families)")
    p.add_argument("--height", type=positive_int("--height"), default=None, help="image height (default: model's)")
    p.add_argument("--width", type=positive_int("--width"), default=None, help="image width (default: model's)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_dtype_arg(p)


def check_family_options(args):
    """The family of ``--pipeline``; options that do not fit it are refused before anything is loaded."""
    from .generate import check_batch
    from ..families import get_family
    family = get_family(args.pipeline)
    given = lambda names: [n for n in names if getattr(args, n, None) not in (None, [])]  # noqa: E731
    if family.is_bundled:
        wrong = given(PIPELINE_ONLY)
        if wrong:
            opt = "--" + wrong[0].replace("_", "-")
            raise ValueError(f"{opt}: only with --pipeline FAMILY (a diffusers pipeline); the bundled model takes "
                             f"--classes and --model")
        return family
    wrong = given(BUNDLED_ONLY)
    if wrong:
        raise ValueError(f"--model: a TinyUNet folder is for the bundled model; use --model-path with "
                         f"--pipeline {family.name}")
    if args.vanilla:
        pass  # vanilla at the same NFE works for every family (one outer step)
    if family.takes_prompt:
        if not args.prompt:
            raise ValueError(f"--prompt: required with --pipeline {family.name} (a text prompt; repeat it for "
                             f"several images)")
        if args.classes is not None:
            raise ValueError(f"--classes: --pipeline {family.name} is prompt-conditioned; give --prompt instead")
        check_batch(len(args.prompt), args.max_batch, "--prompt")
    else:
        if args.prompt or args.negative_prompt is not None:
            raise ValueError(f"--prompt/--negative-prompt: --pipeline {family.name} is class-conditioned; give "
                             f"--classes (class ids or label names) instead")
        if args.classes is None:
            raise ValueError(f"--classes: required with --pipeline {family.name} (class ids or label names, "
                             f"comma-separated)")
        if args.height is not None or args.width is not None:
            raise ValueError(f"--height/--width: --pipeline {family.name} has a fixed sample size")
        check_batch(len([s for s in str(args.classes).split(",") if s.strip()]), args.max_batch, "--classes")
    if family.generic:
        from ..pipelines.any_pipeline import GENERIC_FAMILIES
        if args.solver is not None or args.inner_eta not in (None, 0.0):
            opt = "--solver" if args.solver is not None else "--inner-eta"
            raise ValueError(f"{opt}: --pipeline {family.name} runs its own scheduler as the inner solver (a stock "
                             f"pipeline through NestedScheduler); leave {opt} out")
        if GENERIC_FAMILIES[family.name].video:
            raise ValueError(f"--pipeline {family.name}: a video family; generate writes images — run it with "
                             f"nested_diffusion.anytime(pipe, ...) (every finished inner run decodes to frames)")
    if args.calibration not in ("auto", "none") and family.calibrations != "file":
        raise ValueError(f"--calibration: {args.calibration!r}; --pipeline {family.name} takes 'auto', 'none' or "
                         f"a calibration file")
    if args.calibration == "feature":
        raise ValueError(f"--calibration: 'feature' names the bundled model's shipped calibrations; with --pipeline "
                         f"{family.name} give a file from `nested-diffusion calibrate --pipeline {family.name}`, "
                         f"'auto' or 'none'")
    return family


def _conditioning(args, family, pipe) -> tuple[dict, list, str]:
    """(the pipeline's conditioning arguments, one entry per image, a description)."""
    if family.takes_prompt:
        prompts = list(args.prompt)
        cond = dict(prompt=prompts)
        if args.negative_prompt is not None:
            cond["negative_prompt"] = [args.negative_prompt] * len(prompts)
        for name in ("height", "width"):
            if getattr(args, name) is not None:
                cond[name] = getattr(args, name)
        return cond, prompts, "prompts " + " | ".join(prompts)
    labels = [s.strip() for s in str(args.classes).split(",") if s.strip()]
    labels = [int(s) if s.isdigit() else s for s in labels]
    if not labels:
        raise ValueError(f"--classes: no class given in {args.classes!r}")
    return dict(class_labels=labels), labels, "classes " + ", ".join(str(c) for c in labels)


def _calibration(args, family) -> Any:
    if args.calibration in ("auto", "none"):
        return None   # pipelines ship no calibrations: 'auto' finds none (said in the settings record)
    if not family.generic and "calibration" not in _call_parameters(family):
        raise ValueError(f"--calibration: --pipeline {family.name} takes no calibration yet (SD and DiT do)")
    return args.calibration


def _call_parameters(family) -> set:
    import inspect
    return set(inspect.signature(family.pipeline_class().__call__).parameters)


def pipeline_call(run, family, guidance: float | None) -> dict:
    """A resolved run as pipeline arguments (the pipeline re-reads nothing: the schedule is given whole)."""
    from ..core.schedules import Schedule
    kw = dict(schedule=Schedule(run.schedule, tuple(run.inner_steps), run.outer_times), inner_solver=run.inner_solver,
              inner_eta=run.inner_eta, outer_eta=run.outer_eta, grid=run.grid, max_nfe=run.max_nfe,
              deadline=run.deadline)
    if guidance is not None:
        kw["guidance_scale"] = guidance
    return kw


def build_pipeline_runs(args, family) -> tuple[list, dict]:
    """[(name, run, total NFE, stream)] for the nested run (and --vanilla) on the family's pipeline, and the
    settings record. Every option is checked before the pipeline is loaded."""
    from ..core.events import AnytimeUpdate
    from .run_args import run_from_args
    run = run_from_args(args, family.run_defaults())
    guidance = run.guidance if run.guidance is not None else family.guidance_default()
    calibration = _calibration(args, family)
    device, dtype = device_dtype(args)
    run = run.replace(dtype=str(dtype).replace("torch.", ""))     # the dtype the pipeline is loaded in
    pipe = family.load(args.model_path, device, dtype)
    cond, items, described = _conditioning(args, family, pipe)
    seeds = [args.seed + i for i in range(len(items))]
    runs = [("nested", run)] + ([("vanilla", run.vanilla())] if args.vanilla else [])
    if family.generic:
        return _generic_runs(args, family, pipe, cond, seeds, runs, run, guidance, described, device, dtype,
                             calibration)

    def stream_of(r):
        import torch
        kw = {**cond, **pipeline_call(r, family, guidance), "output_type": "pt", "previews": args.previews,
              "generator": [torch.Generator().manual_seed(s) for s in seeds]}
        if calibration is not None and r is run:
            kw["calibration"] = calibration

        def stream():
            for out in pipe.iter_anytime(**kw):
                images = out.images if isinstance(out.images, torch.Tensor) else torch.stack(list(out.images))
                u = AnytimeUpdate.of(images.float().cpu() * 2 - 1, out)   # [0, 1] → the recorder's [−1, 1]
                u.expected_change = getattr(out, "expected_change", None)
                yield u
        return stream

    total = lambda r: sum(r.build_inner().nfe(s) for s in r.inner_steps)  # noqa: E731
    built = [(name, r, total(r), stream_of(r)) for name, r in runs]
    settings = dict(family=family.name, conditioning=described, seeds=seeds, **run.record(), guidance_scale=guidance,
                    model=str(args.model_path), device=device,
                    calibration=None if calibration is None else str(calibration))
    return built, settings


def _generic_runs(args, family, pipe, cond, seeds, runs, run, guidance, described, device, dtype, calibration):
    """A generic family: the stock pipeline through ``nested_diffusion.anytime`` (its own scheduler as the inner
    solver), driven by the resolved run."""
    import torch

    from ..core.schedules import Schedule
    from ..pipelines.any_pipeline import anytime

    def stream_of(r):
        def stream():
            call = dict(cond, generator=[torch.Generator().manual_seed(s) for s in seeds])
            if args.guidance is not None:
                call["guidance_scale"] = guidance
            if calibration is not None and r is run:
                call["calibration"] = calibration
            yield from anytime(pipe, schedule=Schedule(r.schedule, tuple(r.inner_steps), r.outer_times),
                               previews=args.previews,
                               outer_eta=r.outer_eta, grid=r.grid, max_nfe=r.max_nfe, deadline=r.deadline,
                               seed=seeds, **call)
        return stream

    built = [(name, r, r.inner_total, stream_of(r)) for name, r in runs]
    record = {k: v for k, v in run.record().items() if k not in ("solver", "inner_eta", "guidance")}
    settings = dict(family=family.name, conditioning=described, seeds=seeds, **record, guidance=guidance,
                    solver=f"{type(pipe.scheduler).__name__} (the pipeline's own)", model=str(args.model_path),
                    device=device, calibration=None if calibration is None else str(calibration))
    return built, settings
