"""What samplers report, in one vocabulary.

* ``SolverEvent``: one per denoiser call of a solver run (the unit a ``NestedSolver`` composes).
* ``AnytimeInfo``: where an anytime result comes from (NFE spent, outer/inner position, source, time);
  ``AnytimeUpdate`` adds the image. Pipeline outputs and run records take their fields from ``AnytimeInfo``.

Sources: ``X0_PREVIEW`` — a raw x̂0 prediction of a run still in progress; ``INNER_RESULT`` — the output of a
finished (inner) run. A vanilla run's last event is an ``INNER_RESULT`` too (vanilla = one outer step).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .expected_change import ExpectedChange

X0_PREVIEW = "x0_preview"
INNER_RESULT = "inner_result"
SOURCES = (X0_PREVIEW, INNER_RESULT)
_OLD_KIND = {X0_PREVIEW: "preview", INNER_RESULT: "result"}


def in_strip(source: str, inner_step: int) -> bool:
    """Whether a progression strip / GIF keeps an update: every finished inner run, and an x̂0 preview at calls
    1, 2, 4, 8, … of its inner run (so a strip stays a few columns wide whatever the preview mode)."""
    return source == INNER_RESULT or (inner_step & (inner_step - 1)) == 0


@dataclass
class SolverEvent:
    nfe: int                 # denoiser calls spent in this run so far
    x0: torch.Tensor         # this run's current anytime estimate of the clean sample
    source: str              # X0_PREVIEW or INNER_RESULT
    final: bool = False      # the run is over; x0 is its output
    changed: bool = True     # whether x0 differs from the previous event's estimate
    step: int = 0            # index of the grid step this event belongs to
    t: int = 0               # time of the state the denoiser was called at
    sub: "SolverEvent | None" = None  # the inner solver's event (nested solvers only)

    @property
    def kind(self) -> str:
        """Deprecated alias of ``source`` in the old words ("preview" / "result")."""
        return _OLD_KIND[self.source]


def step_event(i: int, n: int, state: torch.Tensor, x0_pred: torch.Tensor, t: int) -> SolverEvent:
    """The event after grid step i of an n-step run: the x̂0 prediction while the run goes on, the new state (the
    run's output) after its last step."""
    final = i == n - 1
    return SolverEvent(nfe=i + 1, x0=state if final else x0_pred, source=INNER_RESULT if final else X0_PREVIEW,
                       final=final, step=i, t=t)


@dataclass
class AnytimeInfo:
    """Where an anytime result comes from."""

    nfe: int              # NFEs spent when it was produced
    outer_step: int       # 1-based index of the outer step that produced it
    outer_steps: int
    inner_step: int       # 1-based position inside that outer step's inner run
    inner_steps: int
    final: bool           # the last result of the whole run
    source: str           # X0_PREVIEW or INNER_RESULT
    t: int                # outer time the inner run started from
    elapsed: float        # seconds since sampling started
    expected_change: "ExpectedChange | None" = None  # per-sample predicted remaining change (with a calibration)

    def info(self) -> dict[str, Any]:
        """The AnytimeInfo fields as a dict (JSON-able: ``expected_change`` as one dict per sample, or None)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(AnytimeInfo)}
        if d["expected_change"] is not None:
            d["expected_change"] = d["expected_change"].to_list()
        return d


@dataclass
class AnytimeUpdate(AnytimeInfo):
    """One anytime result: the info fields plus ``x0``, the current result (model space, e.g. [−1, 1] pixels)."""

    x0: torch.Tensor = dataclasses.field(kw_only=True)

    @classmethod
    def of(cls, x0: torch.Tensor, info: Any) -> "AnytimeUpdate":
        """An update holding ``x0`` with the AnytimeInfo fields read off ``info`` (any object that has them)."""
        return cls(x0=x0, **{f.name: getattr(info, f.name) for f in dataclasses.fields(AnytimeInfo)})
