"""Expected change: how much an anytime result will still change if sampling continues to the end.

For an update at NFE n of a run whose final result is x_N, the *remaining change* is D(n) = d(x̂(n), x_N), for
two distances: pixel RMSE on [0, 1] (what a person sees) and a semantic distance, 1 − cosine of a feature
network's features (the bundled classifier's penultimate layer for the bundled model). The *flip* is the event
that the feature network's predicted class of x̂(n) differs from that of x_N.

A ``Calibration`` (fitted on a calibration set for one sampler configuration, see ``core.change_fit``) predicts,
per sample, D's expected value and an 80% interval, and the flip probability, from signals the run already has —
no extra NFE:

* the update's position (its NFE; one fitted predictor per update of the configuration);
* ``step_change``: pixel RMSE between this update and the previous shown one;
* ``inner_change``: pixel RMSE between the last two finished inner results;
* ``run_change``: pixel RMSE between this result and the first x̂0 prediction of its inner run (the
  posterior-mean estimate at that outer time);
* ``first_gray`` / ``gray``: mean of 1 − x² (x in [−1, 1]) of that first prediction / of this result — a
  posterior mean is grey where the outcome is still undecided;
* ``var_first`` / ``var_last``: mean learned-variance value (IDDPM interpolation v) of the run's first call / the
  latest call, where the model predicts one (NaN otherwise);
* optional *feature signals*, when the calibration carries a feature function (``Calibration.features``: image
  batch → (features, logits or None); for the bundled model the classifier, ~12% of one NFE per shown update):
  ``sem_step`` / ``sem_inner`` / ``sem_run``, 1 − cosine between the features of this and the previous shown
  result / of the last two inner results / of this result and its inner run's first x̂0 prediction, and the
  ``entropy`` and ``margin`` (top-1 minus top-2 logit) of the predicted class distribution of this result.

Wording (``ExpectedChange.wording``), thresholds on the predicted values (documented in README): "may still
change a lot" when the content may still change — flip probability above ``LARGE_FLIP``, expected semantic
distance above ``LARGE_SEMANTIC`` or expected pixel RMSE above ``LARGE_RMSE``; else "settled" when even the upper
end of the 80% interval of the pixel RMSE is below ``SETTLED_RMSE`` (≈ 5/255 per pixel, hard to see) and the flip
probability below ``SETTLED_FLIP``; else "details may still change" (texture and fine detail). For the bundled
model's demo configuration the population curve gives: previews 1–3 mostly "a lot" (17–8% still flip, mean
semantic distance 0.08–0.055), the finished inner results "details may still change" (pixel RMSE 0.17–0.065 from
texture), the final "settled".
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .denoisers import DenoiserOutput

FORMAT_VERSION = 1
SIGNALS = ("step_change", "inner_change", "run_change", "first_gray", "gray", "var_first", "var_last",
           "sem_step", "sem_inner", "sem_run", "entropy", "margin")
FEATURE_SIGNALS = frozenset({"sem_step", "sem_inner", "sem_run", "entropy", "margin"})
LOG_SIGNALS = frozenset({"step_change", "inner_change", "run_change", "first_gray", "gray"}) | FEATURE_SIGNALS
TARGETS = ("rmse", "semantic")

SETTLED_RMSE = 0.02    # upper end of the 80% interval of the remaining pixel RMSE on [0, 1] (≈ 5/255)
SETTLED_FLIP = 0.05
LARGE_FLIP = 0.25      # probability that the predicted class still changes
LARGE_SEMANTIC = 0.05  # expected remaining 1 − cos of the feature network's features
LARGE_RMSE = 0.2       # expected remaining pixel RMSE on [0, 1] (≈ 50/255 on every pixel: a blurry blob)
WORDS = ("settled", "details may still change", "may still change a lot")


def pixel_rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample RMSE on [0, 1] of two model-space ([−1, 1]) image batches: (B,) float32."""
    d = (a.detach().float() - b.detach().float()) / 2
    return d.flatten(1).pow(2).mean(1).sqrt()


def grayness(x: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of 1 − x² (x clamped to [−1, 1]): 0 for a black-and-white image, 1 for flat grey."""
    return (1 - x.detach().float().clamp(-1, 1).pow(2)).flatten(1).mean(1)


@dataclass
class ExpectedChange:
    """Per-sample predictions for one update, each a (B,) float tensor. For the remaining pixel RMSE on [0, 1]
    (``rmse*``) and the remaining semantic distance, 1 − cosine of feature-network features (``semantic*``):
    the expected (mean) value, the median ("typical") value and the 80% interval (10% and 90% quantiles); and
    ``flip``, the probability that the feature network's predicted class still changes — NaN where the
    calibration has no class flip (no classifier for the configuration, e.g. Stable Diffusion calibrated with
    an image-feature network only); the wording then rests on the two distances."""

    rmse: torch.Tensor
    rmse_median: torch.Tensor
    rmse_low: torch.Tensor
    rmse_high: torch.Tensor
    semantic: torch.Tensor
    semantic_median: torch.Tensor
    semantic_low: torch.Tensor
    semantic_high: torch.Tensor
    flip: torch.Tensor
    calibration: str = ""  # the calibration's configuration hash

    def __len__(self) -> int:
        return int(self.rmse.shape[0])

    def wording(self, i: int) -> str:
        """A short human wording for sample i (thresholds in the module docstring)."""
        flip = float(self.flip[i])  # NaN: no flip prediction, which neither raises nor blocks a wording
        if flip > LARGE_FLIP or float(self.semantic[i]) > LARGE_SEMANTIC or float(self.rmse[i]) > LARGE_RMSE:
            return WORDS[2]
        if float(self.rmse_high[i]) < SETTLED_RMSE and not flip >= SETTLED_FLIP:
            return WORDS[0]
        return WORDS[1]

    @property
    def has_flip(self) -> bool:
        """Whether the flip probability is predicted (False: the calibration has no classifier)."""
        return not bool(torch.isnan(self.flip).all())

    def sample(self, i: int) -> dict[str, Any]:
        """Sample i as a JSON-able dict (rounded to 5 decimals; ``flip`` None without a flip prediction)."""
        r = lambda v: round(float(v[i]), 5)  # noqa: E731
        return {"rmse": r(self.rmse), "rmse_median": r(self.rmse_median),
                "rmse_80": [r(self.rmse_low), r(self.rmse_high)], "semantic": r(self.semantic),
                "semantic_median": r(self.semantic_median), "semantic_80": [r(self.semantic_low),
                                                                            r(self.semantic_high)],
                "flip": r(self.flip) if math.isfinite(float(self.flip[i])) else None, "wording": self.wording(i)}

    def to_list(self) -> list[dict[str, Any]]:
        return [self.sample(i) for i in range(len(self))]

    def summary(self) -> str:
        """One line for a terminal: the batch's median of the expected RMSE / semantic distance, the mean flip
        probability and how many samples each wording applies to."""
        words = [self.wording(i) for i in range(len(self))]
        counts = ", ".join(f"{words.count(w)} {w}" for w in WORDS if words.count(w))
        flip = f"flip {float(self.flip.mean()):.2f}" if self.has_flip else "no flip prediction"
        return (f"expected change: rmse {float(self.rmse.median()):.3f}, semantic "
                f"{float(self.semantic.median()):.4f}, {flip} ({counts})")


class VarianceObserver:
    """Passes every call through to ``denoiser`` and keeps the latest output's learned variance (no extra NFE)."""

    def __init__(self, denoiser):
        self.inner, self.schedule, self.last_var = denoiser, denoiser.schedule, None

    def __call__(self, x: torch.Tensor, t: int, cond: Any = None) -> DenoiserOutput:
        out = self.inner(x, t, cond)
        self.last_var = out.var_values
        return out


def mean_var(v: torch.Tensor | None, batch: int) -> torch.Tensor:
    return torch.full((batch,), math.nan) if v is None else v.detach().float().flatten(1).mean(1).cpu()


class SignalTracker:
    """Keeps the few tensors per sample the signals need (the previous shown result, the last two inner results,
    the current inner run's first x̂0 prediction) and turns them into a (B, len(SIGNALS)) float tensor.

    Feed it in run order: ``call(var_mean)`` after every denoiser call (``mean_var`` of its variance output), ``run_started(x0)`` with the first x̂0
    prediction of each inner run, ``run_finished(x0)`` with each inner result, and ``update(x0)`` for every shown
    result (returns its signals). ``NestedSampler.stream`` and the calibration replay do exactly this."""

    def __init__(self, features: "Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]] | None" = None):
        self.prev_shown = self.first = self.prev_feat = None
        self.results: list[torch.Tensor] = []
        self.result_feats: list[torch.Tensor] = []
        self.var_last = self.var_first = None
        self.features, self.result_pending, self.first_feat, self.first_out = features, False, None, None

    def call(self, var_mean: torch.Tensor) -> None:
        self.var_last = var_mean

    def run_started(self, x0_first: torch.Tensor) -> None:
        self.first, self.var_first = x0_first, self.var_last
        if self.features is not None:
            with torch.no_grad():
                self.first_out = self.features(x0_first)
            self.first_feat = self.first_out[0].detach().float().cpu()

    def run_finished(self, x0: torch.Tensor) -> None:
        self.results = (self.results + [x0])[-2:]
        self.result_pending = True  # the next shown update is this result

    def feature_signals(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        nan = torch.full((x0.shape[0],), math.nan)
        if self.features is None:
            return {name: nan for name in FEATURE_SIGNALS}
        if x0 is self.first and self.first_out is not None:  # the run's first prediction is shown: reuse
            f, logits = self.first_out
        else:
            with torch.no_grad():
                f, logits = self.features(x0)
        f = f.detach().float().cpu()
        if self.result_pending:
            self.result_feats = (self.result_feats + [f])[-2:]
        cos = lambda a, b: 1 - torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).float()  # noqa
        out = {"sem_step": nan if self.prev_feat is None else cos(f, self.prev_feat),
               "sem_inner": cos(*self.result_feats) if len(self.result_feats) == 2 else nan,
               "sem_run": cos(f, self.first_feat),
               "entropy": nan if logits is None else entropy(logits.detach().float().cpu()),
               "margin": nan if logits is None else margin(logits.detach().float().cpu())}
        self.prev_feat = f
        return out

    def update(self, x0: torch.Tensor) -> torch.Tensor:
        B = x0.shape[0]
        nan = torch.full((B,), math.nan)
        cols = {
            "step_change": nan if self.prev_shown is None else pixel_rmse(x0, self.prev_shown).cpu(),
            "inner_change": pixel_rmse(*self.results).cpu() if len(self.results) == 2 else nan,
            "run_change": pixel_rmse(x0, self.first).cpu(),
            "first_gray": grayness(self.first).cpu(),
            "gray": grayness(x0).cpu(),
            "var_first": nan if self.var_first is None else self.var_first,
            "var_last": nan if self.var_last is None else self.var_last,
            **self.feature_signals(x0),
        }
        self.prev_shown, self.result_pending = x0, False
        return torch.stack([cols[s] for s in SIGNALS], 1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) per row."""
    logp = torch.log_softmax(logits.double(), -1)
    return (-(logp.exp() * logp).sum(-1)).clamp_min(0).float()


def margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 logit per row (0 when there is a single class)."""
    if logits.shape[-1] < 2:
        return torch.zeros(logits.shape[0])
    top = logits.topk(2, -1).values
    return (top[:, 0] - top[:, 1]).float()


def canonical(v: Any) -> Any:
    """A JSON-stable form of a setting (whole numbers as ints so 2 == 2.0, tuples as lists, callables by name)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)) or hasattr(v, "__float__") and not isinstance(v, torch.Tensor):
        f = float(v)
        return int(f) if f.is_integer() else f
    if isinstance(v, (list, tuple)):
        return [canonical(x) for x in v]
    if isinstance(v, dict):
        return {str(k): canonical(x) for k, x in sorted(v.items())}
    if callable(v):
        return f"callable:{getattr(v, '__qualname__', type(v).__name__)}"
    return repr(v)


def config_hash(config: dict) -> str:
    """12 hex digits of SHA-256 over the canonical JSON of a configuration."""
    return hashlib.sha256(json.dumps(canonical(config), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Calibration:
    """A fitted expected-change predictor for one configuration.

    ``config``: {"sampler": the sampler settings (``NestedSampler.calibration_settings``), "model": what
    identifies the denoiser (e.g. weights fingerprint, guidance)} and optionally "calibration_set" (what the
    calibration set was drawn from, e.g. a prompt file's hash): every part is in the hash, but a run is checked
    against "sampler" and "model" only (a run may use any prompt or label); ``updates``: one fitted entry per
    shown update, keyed by its NFE (see ``core.change_fit``); ``meta``: sample count, seeds, distances, feature
    network. A calibration fitted without a flip target (``has_flip`` False) predicts a NaN flip probability."""

    config: dict
    updates: dict[str, dict]
    meta: dict = field(default_factory=dict)
    version: int = FORMAT_VERSION
    features: "Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]] | None" = field(
        default=None, repr=False, compare=False)  # the feature function of the feature signals (not stored)

    def uses_feature_signals(self) -> bool:
        return any(name in FEATURE_SIGNALS for e in self.updates.values() for m in model_parts(e)
                   for name in m.get("features", []))

    def tracker(self) -> SignalTracker:
        """A fresh SignalTracker for one run; ValueError if the fitted models need a feature function that is
        not attached."""
        if self.uses_feature_signals() and self.features is None:
            raise ValueError(f"calibration {self.hash}: its predictor uses feature signals "
                             f"({self.meta.get('feature_network', 'a feature network')}); attach the feature "
                             f"function (Calibration.features, e.g. load_calibration(path, features=...))")
        return SignalTracker(self.features if self.uses_feature_signals() else None)

    @property
    def hash(self) -> str:
        return config_hash(self.config)

    @property
    def has_flip(self) -> bool:
        return not any(e.get("flip", {}).get("absent") for e in self.updates.values())

    def check(self, sampler_settings: dict, model: dict | None = None) -> None:
        """ValueError naming both configurations (and the settings that differ) unless they match."""
        theirs = canonical({"sampler": sampler_settings, "model": model if model is not None
                            else self.config.get("model", {})})
        key = json.dumps(theirs, sort_keys=True)
        if key in self.__dict__.setdefault("_matched", set()):
            return  # already checked for this configuration (the resolver, then the sampler it is attached to)
        mine = canonical({part: self.config.get(part, {}) for part in ("sampler", "model")})
        if mine == theirs:
            self._matched.add(key)
            return
        diff = [f"{part}.{k}: calibration {mine[part].get(k)!r}, here {theirs[part].get(k)!r}"
                for part in ("sampler", "model") for k in sorted(set(mine[part]) | set(theirs[part]))
                if mine[part].get(k) != theirs[part].get(k)]
        raise ValueError(f"calibration: made for configuration {self.hash}, but this run is configuration "
                         f"{config_hash(theirs)}; differing settings: {'; '.join(diff)}. Calibrate this "
                         f"configuration with `nested-diffusion calibrate` or run without a calibration")

    def entry(self, nfe: int) -> dict:
        e = self.updates.get(str(int(nfe)))
        if e is None:
            raise ValueError(f"calibration {self.hash}: no fitted predictor for an update at NFE {nfe} "
                             f"(calibrated updates: {', '.join(sorted(self.updates, key=int))})")
        return e

    def predict(self, nfe: int, signals: torch.Tensor, use_signals: bool = True) -> ExpectedChange:
        """Predictions for the update at ``nfe`` from its (B, len(SIGNALS)) signals; ``use_signals=False`` gives
        the population curve (the calibration set's mean D, its median and 10–90% range at that NFE)."""
        e = self.entry(nfe)
        B = signals.shape[0]
        out = {}
        for target in TARGETS:
            m = e[target] if use_signals else e["population"][target]
            out[target] = predict_log_linear(m, signals)
        flip = predict_logistic(e["flip"] if use_signals else e["population"]["flip"], signals)
        return ExpectedChange(*out["rmse"], *out["semantic"], flip=flip.reshape(B), calibration=self.hash)

    def to_dict(self) -> dict:
        return {"format": "nested-diffusion expected-change calibration", "version": self.version,
                "config_hash": self.hash, "config": self.config, "meta": self.meta, "signals": list(SIGNALS),
                "updates": self.updates}

    @classmethod
    def from_dict(cls, doc: dict) -> "Calibration":
        if doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"calibration: format version {doc.get('version')!r} is not supported "
                             f"(this library reads version {FORMAT_VERSION})")
        if list(doc.get("signals", [])) != list(SIGNALS):
            raise ValueError(f"calibration: signals {doc.get('signals')} differ from this library's {SIGNALS}")
        cal = cls(config=doc["config"], updates=doc["updates"], meta=doc.get("meta", {}))
        if doc.get("config_hash") != cal.hash:
            raise ValueError(f"calibration: stored hash {doc.get('config_hash')} does not match its configuration "
                             f"({cal.hash}); the file was edited or is corrupt")
        return cal


def model_parts(entry: dict) -> list[dict]:
    return [entry[k] for k in (*TARGETS, "flip") if k in entry]


def load_calibration(path, features: Callable | None = None, option: str = "calibration") -> Calibration:
    """Read a calibration JSON file (written by ``nested-diffusion calibrate``); ``features``: the feature function
    its feature signals need (if it uses any). Errors (ValueError) name ``option`` and the file."""
    try:
        with open(path, encoding="utf-8") as f:
            cal = Calibration.from_dict(json.load(f))
    except FileNotFoundError:
        raise ValueError(f"{option}: {str(path)!r} does not exist; give a calibration file made by "
                         f"`nested-diffusion calibrate`") from None
    except IsADirectoryError:
        raise ValueError(f"{option}: {str(path)!r} is a folder; give a calibration file (.json) made by "
                         f"`nested-diffusion calibrate`") from None
    except OSError as e:
        raise ValueError(f"{option}: {str(path)!r} cannot be read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{option}: {str(path)!r} is not a readable calibration file ({type(e).__name__}: "
                         f"{e}); rewrite it with `nested-diffusion calibrate`") from None
    cal.features = features
    return cal


def design(model: dict, signals: torch.Tensor) -> torch.Tensor:
    """The standardized (log-)signal matrix a fitted model uses; a missing (NaN) signal counts as average."""
    cols = []
    for name, mu, sd in zip(model["features"], model["mu"], model["sd"]):
        v = signals[:, SIGNALS.index(name)].double()
        v = torch.log(v.clamp_min(0) + model["signal_eps"]) if name in LOG_SIGNALS else v
        cols.append(torch.nan_to_num((v - mu) / sd, nan=0.0))
    return torch.stack(cols, 1) if cols else torch.zeros(signals.shape[0], 0, dtype=torch.float64)


def predict_log_linear(model: dict, signals: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(mean, median, low, high) of D from log(D + eps) = b + X·w + r, r from the calibration residuals: the
    mean uses the residuals' smearing factor E[exp r], the median and interval their 50%, 10% and 90% quantiles."""
    if model.get("zero"):
        z = torch.zeros(signals.shape[0])
        return z, z, z, z
    X = design(model, signals)
    lin = model["intercept"] + X @ torch.tensor(model["coef"], dtype=torch.float64)
    eps = model["eps"]
    f = lambda r: (torch.exp(lin + r) - eps).clamp_min(0).float()  # noqa: E731
    mean = (torch.exp(lin) * model["smear"] - eps).clamp_min(0).float()
    return mean, f(model["q_mid"]), f(model["q_low"]), f(model["q_high"])


def predict_logistic(model: dict, signals: torch.Tensor) -> torch.Tensor:
    if model.get("absent"):  # fitted without a flip target: no prediction
        return torch.full((signals.shape[0],), math.nan)
    if model.get("zero"):
        return torch.zeros(signals.shape[0])
    X = design(model, signals)
    return torch.sigmoid(model["intercept"] + X @ torch.tensor(model["coef"], dtype=torch.float64)).float()


CALIBRATION_CHOICES = ("auto", "feature", "none")


def resolve_calibration(choice: Any, sampler_settings: dict, model: Callable[[], dict],
                        shipped: Callable[[dict, dict, str], Any] | None = None,
                        option: str = "calibration") -> "Calibration | None":
    """The one resolver of a run's calibration, for every model family: ``choice`` is None or "none" (no
    expected change), "auto" / "feature" (the calibration that ships for this configuration, with pixel or
    feature signals: ``shipped(settings, model, "pixel"|"feature")`` finds its path or None; families that ship
    none get None), a calibration file, or a ``Calibration``. It is checked against ``sampler_settings``
    (``core.nested.calibration_settings``) and ``model()`` (the model's identity, computed only when needed) —
    once, before any model call; ValueError naming ``option`` otherwise."""
    if choice is None or (isinstance(choice, str) and choice == "none"):
        return None
    if isinstance(choice, str) and choice in ("auto", "feature"):
        if shipped is None:
            return None
        path = shipped(sampler_settings, model(), "pixel" if choice == "auto" else "feature")
        if path is None:
            return None
        choice = path
    if isinstance(choice, (str, os.PathLike)):
        path = Path(choice)
        if not path.is_file():
            raise ValueError(f"{option}: no such file {str(path)!r}; give a file written by `nested-diffusion "
                             f"calibrate`, one of {CALIBRATION_CHOICES}, or a Calibration")
        choice = load_calibration(path)
    if not isinstance(choice, Calibration):
        raise TypeError(f"{option}: expected None, {', '.join(CALIBRATION_CHOICES)}, a file or a Calibration, got "
                        f"{type(choice).__name__}")
    choice.check(sampler_settings, model())
    return choice
