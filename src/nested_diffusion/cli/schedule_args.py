"""The options that choose a nested schedule (``--schedule``, ``--nfe``, ``--first``, ``--outer``, ``--inner``),
shared by ``generate`` and ``calibrate``, and their resolution into NestedSampler arguments.

``--schedule progressive`` (the default unless ``--outer``/``--inner`` is given): two quick inner runs of
``--first`` steps, then one long run with the rest of ``--nfe`` (core.schedules). ``--schedule uniform``: the
paper's ``--outer`` × ``--inner`` split (defaults 5 × 20; ``--nfe`` with ``--outer`` sets the inner count).
"""
from __future__ import annotations

from .argtypes import positive_int

DEFAULT_NFE = 100
DEFAULT_OUTER, DEFAULT_INNER = 5, 20


def add_schedule_args(g) -> None:
    from ..core.schedules import schedule_names
    g.add_argument("--schedule", choices=schedule_names(), default=None,
                   help="how the NFE budget is split: progressive (two quick inner runs of --first steps, then one "
                        "long run: the first image as early as uniform, the final as good as vanilla; the default) "
                        "or uniform (--outer × --inner, the paper's split; implied by --outer/--inner)")
    g.add_argument("--nfe", type=positive_int("--nfe"), default=None,
                   help=f"inner steps in total of the schedule (default: {DEFAULT_NFE})")
    g.add_argument("--first", type=positive_int("--first"), default=None,
                   help="progressive: inner steps of each quick run (default: 20)")
    g.add_argument("--outer", type=positive_int("--outer"), default=None,
                   help=f"uniform: outer steps (default: {DEFAULT_OUTER})")
    g.add_argument("--inner", type=positive_int("--inner"), default=None,
                   help=f"uniform: inner steps per outer step (default: {DEFAULT_INNER})")


def resolve_schedule(args, t_start: int):
    """The ``core.schedules.Schedule`` the options choose; ValueError naming the option on a bad combination."""
    from ..core.schedules import Schedule, make_schedule
    uniform_given = args.outer is not None or args.inner is not None
    name = args.schedule or ("uniform" if uniform_given else "progressive")
    if name == "uniform":
        if args.first is not None:
            raise ValueError(f"--first: {args.first} is for --schedule progressive, not uniform")
        outer = DEFAULT_OUTER if args.outer is None else args.outer
        if args.nfe is not None:
            if args.inner is not None and args.inner * outer != args.nfe:
                raise ValueError(f"--nfe: {args.nfe} is not --outer {outer} × --inner {args.inner}; give two of them")
            return make_schedule("uniform", args.nfe, t_start, outer=outer)
        return Schedule("uniform", (DEFAULT_INNER if args.inner is None else args.inner,) * outer)
    if uniform_given:
        given = "--outer" if args.outer is not None else "--inner"
        raise ValueError(f"{given}: {getattr(args, given[2:])} sets a uniform split; --schedule {name} takes "
                         f"--nfe (and --first) instead, or use --schedule uniform")
    options = {} if args.first is None else {"first": args.first}
    return make_schedule(name, DEFAULT_NFE if args.nfe is None else args.nfe, t_start, **options)


def describe(inner_steps, outer_times=None) -> str:
    """'5 outer × 20 inner' or '3 outer (20+20+60 inner from t=999, 899, 799)' for a sampler's inner step list and
    explicit outer times (None: the evenly spaced grid)."""
    steps = list(inner_steps)
    if outer_times is None and len(set(steps)) == 1:
        return f"{len(steps)} outer × {steps[0]} inner"
    where = "" if outer_times is None else " from t=" + ", ".join(str(t) for t in outer_times)
    return f"{len(steps)} outer ({'+'.join(str(s) for s in steps)} inner{where})"
