"""The one registry of inner solvers, read by the core, the CLIs, the pipelines and the docs.

Every entry has a ``kind``: "vp" (variance-preserving models: DDIM, DDPM, DPM-Solver++) or "flow" (rectified
flow: Euler / flow DDIM(η), Heun). Names are looked up within a kind, so "ddim" is DDIM for a VP model and the
flow DDIM (Euler) step for a flow model. Adding a solver = its ``Solver`` class and one
``register_solver(SolverSpec(...))`` call; it is then a valid ``inner_solver=`` name for the samplers, every CLI
command's ``--solver``, the eval runners, the web page and the diffusers pipelines of its kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .eta import SQRT_ONE_MINUS_ALPHA_BAR, EtaSpec, validate_eta
from .flow_solvers import FlowEulerSolver, FlowHeunSolver
from .flow_steps import FRESH_NOISE
from .solvers import DDIMSolver, DDPMLearnedSolver, DPMSolverPP2M, DPMSolverPP2S, Solver

VP, FLOW = "vp", "flow"
KINDS = (VP, FLOW)


@dataclass(frozen=True)
class SolverSpec:
    """``factory(eta)`` when ``takes_eta`` else ``factory()`` builds a fresh solver.

    ``inner_eta_default``: the η an *inner* run of this solver uses when the caller gives none (the paper's SD
    setting, 0.85, for DDIM); a bare ``get_solver`` call uses the class default instead (η = 0 for DDIM).
    ``outer_eta_default``: the outer η this inner solver implies (√(1−ᾱ_t) for DPM-Solver++, supplementary §C.2).
    ``kind``: "vp" or "flow" (which models it runs on).
    """

    name: str
    factory: Callable[..., Solver]
    aliases: tuple[str, ...] = ()
    takes_eta: bool = False
    inner_eta_default: float | None = None
    outer_eta_default: EtaSpec = 0.0
    description: str = ""
    kind: str = VP

    def build(self, eta: EtaSpec | None = None, *, inner: bool = False, eta_name: str = "eta") -> Solver:
        """A fresh solver; ``inner=True`` applies ``inner_eta_default`` when ``eta`` is None."""
        if not self.takes_eta:
            if eta not in (None, 0, 0.0):
                raise ValueError(f"{eta_name}: only the {'/'.join(n.upper() for n in eta_solvers(self.kind))} solver takes η, "
                                 f"got {eta_name}={eta} for solver {self.name!r}")
            return self.factory()
        eta = self.eta_for(eta, inner=inner, eta_name=eta_name)
        return self.factory() if eta is None else self.factory(eta)

    def eta_for(self, eta: EtaSpec | None, *, inner: bool = True, eta_name: str = "inner_eta") -> EtaSpec | None:
        """The η this solver runs with: ``eta`` checked, else (``inner``) the registry's inner default; None for
        solvers without η (giving one is an error naming ``eta_name``)."""
        if not self.takes_eta:
            if eta not in (None, 0, 0.0):
                raise ValueError(f"{eta_name}: only the {'/'.join(n.upper() for n in eta_solvers(self.kind))} solver takes η, "
                                 f"got {eta_name}={eta} for solver {self.name!r}")
            return None
        if eta is None:
            return self.inner_eta_default if inner else None
        return check_eta(eta, eta_name, self.kind)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not a model kind; use one of {KINDS}")
    return kind


def check_eta(eta: EtaSpec, name: str, kind: str = VP) -> EtaSpec:
    """An η spec checked up front; flow steps also take "fresh" (all noise redrawn)."""
    if kind == FLOW and isinstance(eta, str) and eta == FRESH_NOISE:
        return eta
    return validate_eta(tuple(eta) if isinstance(eta, list) else eta, name)


_REGISTRY: dict[tuple[str, str], SolverSpec] = {}   # (kind, key) → spec
_ALIASES: dict[tuple[str, str], str] = {}           # (kind, alias key) → key


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_solver(spec: SolverSpec, replace: bool = False) -> SolverSpec:
    """Add ``spec`` under its name and aliases (case- and dash/underscore-insensitive) within its kind."""
    kind = check_kind(spec.kind)
    keys = [_key(spec.name)] + [_key(a) for a in spec.aliases]
    taken = [k for k in keys if (kind, k) in _REGISTRY or (kind, k) in _ALIASES]
    if taken and not replace:
        raise ValueError(f"solver: {taken} already name a registered solver (kind {kind!r}); pass replace=True "
                         f"to override")
    if replace:
        for k in taken:
            unregister_solver(k, kind)
    _REGISTRY[(kind, keys[0])] = spec
    for k in keys[1:]:
        _ALIASES[(kind, k)] = keys[0]
    return spec


def unregister_solver(name: str, kind: str = VP) -> None:
    key = _ALIASES.get((kind, _key(name)), _key(name))
    _REGISTRY.pop((kind, key), None)
    for alias in [a for a, k in _ALIASES.items() if a[0] == kind and k == key]:
        del _ALIASES[alias]


def _specs(kind: str | None) -> list[SolverSpec]:
    return [s for (k, _), s in _REGISTRY.items() if kind is None or k == kind]


def solver_names(kind: str | None = VP) -> tuple[str, ...]:
    """Registered solver names of ``kind`` (None: every kind, without repeats), in registration order."""
    return tuple(dict.fromkeys(s.name for s in _specs(kind)))


def eta_solvers(kind: str | None = VP) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.name for s in _specs(kind) if s.takes_eta))


def solver_spec(name: str, arg: str = "solver", kind: str = VP) -> SolverSpec:
    """The spec of a registered name or alias of ``kind``; a clear error naming ``arg`` otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"{arg}: expected a Solver or a name ({', '.join(solver_names(kind))}), got "
                        f"{type(name).__name__}")
    key = _ALIASES.get((kind, _key(name)), _key(name))
    if (kind, key) not in _REGISTRY:
        raise ValueError(f"{arg}: unknown {'flow ' if kind == FLOW else ''}solver {name!r}; valid: "
                         f"{', '.join(solver_names(kind))}")
    return _REGISTRY[(kind, key)]


def spec_of(solver: Solver) -> SolverSpec | None:
    """The registry entry whose factory built ``solver`` (by class), if any."""
    return next((s for s in _REGISTRY.values() if isinstance(s.factory, type) and type(solver) is s.factory), None)


def is_solver(obj: Any) -> bool:
    return isinstance(obj, Solver) or (hasattr(obj, "run") and hasattr(obj, "nfe") and not isinstance(obj, str))


def get_solver(solver: "Solver | str", eta: EtaSpec | None = None, *, inner: bool = False,
               arg: str = "solver", eta_name: str = "eta", kind: str = VP) -> Solver:
    """A Solver instance from an instance or a registered name of ``kind``; ``eta`` applies to solvers that take
    η (an instance carries its own: giving ``eta`` with one is an error)."""
    if is_solver(solver):
        if eta is not None:
            raise ValueError(f"{eta_name}: pass η to the solver instance itself, not as {eta_name}")
        return solver
    return solver_spec(solver, arg, kind).build(eta, inner=inner, eta_name=eta_name)


def solver_help(kind: str | None = VP) -> str:
    """One line per registered solver, for --help texts and docs."""
    return "; ".join(f"{s.name}: {s.description}" for s in _specs(kind))


register_solver(SolverSpec("ddim", DDIMSolver, takes_eta=True, inner_eta_default=0.85,
                           description="DDIM(η); inner default η = 0.85 (the paper's SD setting)"))
register_solver(SolverSpec("ddpm", DDPMLearnedSolver, aliases=("ddpm_learned",),
                           description="ancestral DDPM with the model's learned variance (the paper's DiT setting)"))
register_solver(SolverSpec("dpmpp_2m", DPMSolverPP2M, aliases=("dpm++2m",), outer_eta_default=SQRT_ONE_MINUS_ALPHA_BAR,
                           description="multistep DPM-Solver++(2M); outer η √(1−ᾱ_t) in the pipelines"))
register_solver(SolverSpec("dpmpp_2s", DPMSolverPP2S, aliases=("dpmsolver", "dpm-solver++", "dpmpp", "dpm++2s"),
                           outer_eta_default=SQRT_ONE_MINUS_ALPHA_BAR,
                           description="singlestep DPM-Solver++(2S), the authors' 'DPMSolver'; outer η √(1−ᾱ_t) "
                                       "in the pipelines"))
register_solver(SolverSpec("euler", FlowEulerSolver, aliases=("flow_euler", "ddim", "flow_ddim"), takes_eta=True,
                           kind=FLOW, description="Euler on the flow ODE; with η the flow DDIM(η) step ('fresh': all "
                                                  "noise redrawn)"))
register_solver(SolverSpec("heun", FlowHeunSolver, aliases=("flow_heun",), kind=FLOW,
                           description="Heun (2nd order), last step Euler; 2n − 1 NFE for n steps"))
