"""The registry of flow-matching inner solvers (the flow counterpart of ``registry``; same ``SolverSpec``).

Names: "euler" (Euler / flow DDIM(η); aliases "flow_euler", "ddim", "flow_ddim"), "heun" (2nd order, 2n − 1 NFE).
"""
from __future__ import annotations

from typing import Any

from .eta import EtaSpec, validate_eta
from .flow_solvers import FlowEulerSolver, FlowHeunSolver, FlowSolver
from .flow_steps import FRESH_NOISE
from .registry import SolverSpec

_FLOW: dict[str, SolverSpec] = {}
_FLOW_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_flow_solver(spec: SolverSpec, replace: bool = False) -> SolverSpec:
    keys = [_key(spec.name)] + [_key(a) for a in spec.aliases]
    taken = [k for k in keys if (k in _FLOW or k in _FLOW_ALIASES) and _FLOW_ALIASES.get(k, k) != keys[0]]
    if taken and not replace:
        raise ValueError(f"solver: {taken} already name a registered flow solver; pass replace=True to override")
    _FLOW[keys[0]] = spec
    for k in keys[1:]:
        _FLOW_ALIASES[k] = keys[0]
    return spec


def flow_solver_names() -> tuple[str, ...]:
    return tuple(s.name for s in _FLOW.values())


def flow_solver_spec(name: Any, arg: str = "inner_solver") -> SolverSpec:
    if not isinstance(name, str):
        raise TypeError(f"{arg}: expected a flow solver or a name ({', '.join(flow_solver_names())}), "
                        f"got {type(name).__name__}")
    key = _FLOW_ALIASES.get(_key(name), _key(name))
    if key not in _FLOW:
        raise ValueError(f"{arg}: unknown flow solver {name!r}; valid: {', '.join(flow_solver_names())}")
    return _FLOW[key]


def get_flow_solver(solver: "FlowSolver | str", eta: EtaSpec | None = None, *, arg: str = "inner_solver",
                    eta_name: str = "inner_eta") -> FlowSolver:
    """A FlowSolver from an instance or a registered name; ``eta`` only for solvers that take η."""
    if isinstance(solver, FlowSolver):
        if eta is not None:
            raise ValueError(f"{eta_name}: pass η to the solver instance itself, not as {eta_name}")
        return solver
    spec = flow_solver_spec(solver, arg)
    if eta is None:
        return spec.factory()
    if not spec.takes_eta:
        takes = "/".join(s.name for s in _FLOW.values() if s.takes_eta)
        raise ValueError(f"{eta_name}: only the {takes} flow solver takes η, got {eta_name}={eta} for {spec.name!r}")
    return spec.factory(eta if eta == FRESH_NOISE else validate_eta(eta, eta_name))


def flow_solver_help() -> str:
    return "; ".join(f"{s.name}: {s.description}" for s in _FLOW.values())


register_flow_solver(SolverSpec("euler", FlowEulerSolver, aliases=("flow_euler", "ddim", "flow_ddim"), takes_eta=True,
                                description="Euler on the flow ODE; with η the flow DDIM(η) step ('fresh': all "
                                            "noise redrawn)"))
register_flow_solver(SolverSpec("heun", FlowHeunSolver, aliases=("flow_heun",),
                                description="Heun (2nd order), last step Euler; 2n − 1 NFE for n steps"))
