"""The command-line options of a nested run and their translation into ``core.run.resolve_run`` — the one place
every command (``generate``, ``sample``, ``calibrate``, ``eval``, ``serve``) gets its run options from.

``--schedule`` (default: the model family's — ramp for the bundled model, uniform for the pipelines —,
uniform when ``--outer``/``--inner`` is given), ``--nfe`` (the budget a named schedule splits), ``--first``
(progressive: steps of each quick run), ``--outer``/``--inner`` (the uniform split), ``--solver``, ``--inner-eta``,
``--outer-eta``, ``--grid``, ``--guidance``, ``--dtype`` (the compute dtype); ``--budget`` (stop at this NFE) and ``--deadline`` (seconds) where a
command streams. Every default left out here comes from the family's ``RunDefaults``; every error names the
option as typed (``RUN_OPTION_NAMES``).
"""
from __future__ import annotations

from typing import Any

from .argtypes import nonneg_float, positive_float, positive_int, solver_choices

# canonical run option → the command-line option (errors from the resolver and the sampler name these)
RUN_OPTION_NAMES = {"schedule": "--schedule", "nfe": "--nfe", "first": "--first", "outer_steps": "--outer",
                    "inner_steps": "--inner", "inner_solver": "--solver", "inner_eta": "--inner-eta",
                    "outer_eta": "--outer-eta", "grid": "--grid", "guidance": "--guidance", "max_nfe": "--budget",
                    "deadline": "--deadline", "calibration": "--calibration", "schedule_options": "--first",
                    "dtype": "--dtype"}


def add_schedule_args(g, outer_flag: str = "--outer", inner_flag: str = "--inner") -> None:
    """--schedule, --nfe, --first and the uniform split (``sample`` spells it --outer-steps/--inner-steps)."""
    from ..core.schedules import schedule_names
    g.add_argument("--schedule", choices=schedule_names(), default=None,
                   help="how the NFE budget is split: ramp (quick inner runs of --first and 2 × --first steps, then "
                        "one long run: a finished image after 10 NFE, the final as good as vanilla), progressive (two "
                        "quick runs of --first steps, then one long run) or uniform "
                        f"({outer_flag} × {inner_flag}, the paper's split; implied by {outer_flag}/{inner_flag}). "
                        "Default: the model family's (bundled: ramp; pipelines: uniform)")
    g.add_argument("--nfe", type=positive_int("--nfe"), default=None,
                   help="inner steps in total of the schedule (default: the family's, 100 for the bundled model)")
    g.add_argument("--first", type=positive_int("--first"), default=None,
                   help="progressive: inner steps of each quick run (default: 20); ramp: of the first quick run, "
                        "the next doubles (default: 10)")
    g.add_argument(outer_flag, dest="outer", type=positive_int(outer_flag), default=None,
                   help="uniform: outer steps (default: the family's)")
    g.add_argument(inner_flag, dest="inner", type=positive_int(inner_flag), default=None,
                   help="uniform: inner steps per outer step (default: the family's)")


def add_solver_args(g, kind: str | None = None) -> None:
    """--solver (registered names of ``kind``; None: every kind), --inner-eta, --outer-eta, --grid, --guidance."""
    g.add_argument("--solver", choices=solver_choices(kind), default=None,
                   help="inner solver (default: the family's: ddpm for the bundled model and DiT, ddim (η 0.85) for "
                        "SD/SDXL, euler for SD3/FLUX)")
    g.add_argument("--inner-eta", type=nonneg_float("--inner-eta"), default=None,
                   help="η of a DDIM inner solver (default 0.85, the paper's SD setting)")
    g.add_argument("--outer-eta", type=nonneg_float("--outer-eta"), default=None,
                   help="η of the outer step (a number or sqrt_one_minus_alpha_bar; default: the family's)")
    g.add_argument("--grid", choices=("clean", "authors", "sigma_min"), default=None,
                   help="grid convention (README; sigma_min: flow models only; default: clean)")
    g.add_argument("--guidance", type=nonneg_float("--guidance"), default=None,
                   help="classifier-free guidance scale (default: the family's: 1.25 for the bundled model)")


def add_dtype_arg(g) -> None:
    """--dtype, the one definition every command shares (values: ``core.run.DTYPES``)."""
    from ..bundled import RUN_DEFAULTS
    from ..core.run import DTYPES
    g.add_argument("--dtype", choices=("auto",) + DTYPES, default="auto",
                   help=f"compute dtype (auto: the family's: {RUN_DEFAULTS.dtype} for the bundled model, which "
                        f"offers float32 and bfloat16; pipelines: float16 on cuda, else as saved/float32)")


def device_dtype(args):
    """(device, torch dtype) a pipeline is loaded with: --device (default cuda if available) and --dtype (auto:
    float16 on cuda, float32 elsewhere)."""
    import torch
    from .argtypes import check_device
    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = args.dtype if args.dtype not in (None, "auto") else ("float16" if device.startswith("cuda") else "float32")
    return device, getattr(torch, name)


def add_stop_args(g) -> None:
    g.add_argument("--budget", type=positive_int("--budget"), default=None, help="max NFE; best result within it")
    g.add_argument("--deadline", type=positive_float("--deadline"), default=None,
                   help="wall-clock seconds; best result before it")


def run_options(args) -> dict:
    """The run options an argparse namespace holds (canonical names; absent options are None)."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    return dict(schedule=get("schedule"), nfe=get("nfe"), first=get("first"), outer_steps=get("outer"),
                inner_steps=get("inner"), inner_solver=get("solver"), inner_eta=get("inner_eta"),
                outer_eta=get("outer_eta"), grid=get("grid"), guidance=get("guidance"), max_nfe=get("budget"),
                deadline=get("deadline"), dtype=get("dtype"))


SAMPLE_OPTION_NAMES = {**RUN_OPTION_NAMES, "outer_steps": "--outer-steps", "inner_steps": "--inner-steps"}


def run_from_args(args, defaults, num_train_timesteps: int = 1000, names: dict | None = None, **overrides: Any):
    """The ``RunConfig`` of a command line with the family's ``defaults``; ValueError naming the option."""
    from ..core.run import resolve_run
    return resolve_run(defaults=defaults, names=names or RUN_OPTION_NAMES, num_train_timesteps=num_train_timesteps,
                       **{**run_options(args), **overrides})


def build_checked(build, *args, names: dict | None = None, **kwargs):
    """``build(*args, **kwargs)`` (a sampler or job constructor); its model-dependent errors name the option."""
    from ..core.run import option_error
    try:
        return build(*args, **kwargs)
    except ValueError as e:
        raise option_error(e, names or RUN_OPTION_NAMES) from None
