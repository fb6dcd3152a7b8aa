"""The one registry of inner solvers, read by the core, the CLIs, the pipelines and the docs.

Adding a solver = its ``Solver`` class and one ``register_solver(SolverSpec(...))`` call; it is then a valid
``inner_solver=`` name for ``NestedSampler``, ``nested-diffusion generate --solver``, the ``eval`` runners and the
diffusers pipelines.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .eta import SQRT_ONE_MINUS_ALPHA_BAR, EtaSpec, validate_eta
from .solvers import DDIMSolver, DDPMLearnedSolver, DPMSolverPP2M, DPMSolverPP2S, Solver


@dataclass(frozen=True)
class SolverSpec:
    """``factory(eta)`` when ``takes_eta`` else ``factory()`` builds a fresh solver.

    ``inner_eta_default``: the η an *inner* run of this solver uses when the caller gives none (the paper's SD
    setting, 0.85, for DDIM); a bare ``get_solver`` call uses the class default instead (η = 0 for DDIM).
    ``outer_eta_default``: the outer η this inner solver implies (√(1−ᾱ_t) for DPM-Solver++, supplementary §C.2).
    """

    name: str
    factory: Callable[..., Solver]
    aliases: tuple[str, ...] = ()
    takes_eta: bool = False
    inner_eta_default: float | None = None
    outer_eta_default: EtaSpec = 0.0
    description: str = ""

    def build(self, eta: EtaSpec | None = None, *, inner: bool = False, eta_name: str = "eta") -> Solver:
        """A fresh solver; ``inner=True`` applies ``inner_eta_default`` when ``eta`` is None."""
        if not self.takes_eta:
            if eta not in (None, 0, 0.0):
                raise ValueError(f"{eta_name}: only the {'/'.join(n.upper() for n in eta_solvers())} solver takes η, "
                                 f"got {eta_name}={eta} for solver {self.name!r}")
            return self.factory()
        if eta is None and inner:
            eta = self.inner_eta_default
        return self.factory() if eta is None else self.factory(validate_eta(eta, eta_name))


_REGISTRY: dict[str, SolverSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_solver(spec: SolverSpec, replace: bool = False) -> SolverSpec:
    """Add ``spec`` under its name and aliases (case- and dash/underscore-insensitive)."""
    keys = [_key(spec.name)] + [_key(a) for a in spec.aliases]
    taken = [k for k in keys if k in _REGISTRY or k in _ALIASES]
    if taken and not replace:
        raise ValueError(f"solver: {taken} already name a registered solver; pass replace=True to override")
    if replace:
        for k in taken:
            unregister_solver(k)
    _REGISTRY[keys[0]] = spec
    for k in keys[1:]:
        _ALIASES[k] = keys[0]
    return spec


def unregister_solver(name: str) -> None:
    key = _ALIASES.get(_key(name), _key(name))
    _REGISTRY.pop(key, None)
    for alias in [a for a, k in _ALIASES.items() if k == key]:
        del _ALIASES[alias]


def solver_names() -> tuple[str, ...]:
    """Registered solver names, in registration order (CLI choices)."""
    return tuple(s.name for s in _REGISTRY.values())


def eta_solvers() -> tuple[str, ...]:
    return tuple(s.name for s in _REGISTRY.values() if s.takes_eta)


def solver_spec(name: str, arg: str = "solver") -> SolverSpec:
    """The spec of a registered name or alias; a clear error naming ``arg`` otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"{arg}: expected a Solver or a name, got {type(name).__name__}")
    key = _ALIASES.get(_key(name), _key(name))
    if key not in _REGISTRY:
        raise ValueError(f"{arg}: unknown solver {name!r}; valid: {', '.join(solver_names())}")
    return _REGISTRY[key]


def spec_of(solver: Solver) -> SolverSpec | None:
    """The registry entry whose factory built ``solver`` (by class), if any."""
    return next((s for s in _REGISTRY.values() if isinstance(s.factory, type) and type(solver) is s.factory), None)


def is_solver(obj: Any) -> bool:
    return isinstance(obj, Solver) or (hasattr(obj, "run") and hasattr(obj, "nfe") and not isinstance(obj, str))


def get_solver(solver: "Solver | str", eta: EtaSpec | None = None, *, inner: bool = False,
               arg: str = "solver", eta_name: str = "eta") -> Solver:
    """A Solver instance from an instance or a registered name; ``eta`` applies to solvers that take η."""
    if is_solver(solver):
        return solver
    return solver_spec(solver, arg).build(eta, inner=inner, eta_name=eta_name)


def solver_help() -> str:
    """One line per registered solver, for --help texts and docs."""
    return "; ".join(f"{s.name}: {s.description}" for s in _REGISTRY.values())


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
