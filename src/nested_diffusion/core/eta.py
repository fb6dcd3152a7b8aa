"""η specifications of DDIM-type steps: a number, a per-step list, a callable (i, t, ᾱ_t) → η, or the rule
"sqrt_one_minus_alpha_bar" (the seed's η_t = √(1 − ᾱ_t))."""
from __future__ import annotations

import math
from typing import Callable, Sequence, Union

EtaSpec = Union[float, Sequence[float], str, Callable[[int, int, float], float]]
SQRT_ONE_MINUS_ALPHA_BAR = "sqrt_one_minus_alpha_bar"


def resolve_eta(spec: EtaSpec, i: int, t: int, a: float, n: int, name: str = "eta") -> float:
    """The η of step i (of n) at time t with ᾱ_t = a."""
    if isinstance(spec, str):
        if spec != SQRT_ONE_MINUS_ALPHA_BAR:
            raise ValueError(f"{name}: unknown rule {spec!r}; use a number ≥ 0, a list, a callable or "
                             f"{SQRT_ONE_MINUS_ALPHA_BAR!r}")
        return math.sqrt(1.0 - a)
    if callable(spec):
        eta = float(spec(i, t, a))
    elif isinstance(spec, (int, float)):
        eta = float(spec)
    else:
        if len(spec) != n:
            raise ValueError(f"{name}: a per-step list needs {n} values, got {len(spec)}")
        eta = float(spec[i])
    if not eta >= 0 or not math.isfinite(eta):
        raise ValueError(f"{name}: must be a finite number ≥ 0, got {eta}")
    return eta


def validate_eta(spec: EtaSpec, name: str = "eta") -> EtaSpec:
    """Check a spec up front (callables are checked when called)."""
    if isinstance(spec, (str, int, float)):
        resolve_eta(spec, 0, 0, 0.5, 1, name)
    elif not callable(spec):
        for v in spec:
            resolve_eta(float(v), 0, 0, 0.5, 1, name)
    return spec
