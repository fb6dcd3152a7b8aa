"""Fitting the expected-change predictor (``core.expected_change``) on a calibration set.

Per shown update (one NFE of the configuration), for each distance D:
    log(D + eps) = b + X·w + r          (ridge least squares on standardized log-signals X)
The point prediction is the conditional mean, exp(b + X·w)·E[exp r] − eps (Duan's smearing factor, from the
in-sample residuals); the 80% interval uses the 10% and 90% quantiles of r, taken from K-fold *cross-fitted*
residuals so that they reflect out-of-sample error (split-conformal style). The flip probability is an
L2-regularized logistic regression on the same X (Newton's method). Regularization strengths are chosen by
5-fold cross-validation, and a model whose signals do not beat the intercept alone there falls back to the
population curve. Without a flip target (no classifier for the configuration) the flip models are
``{"absent": True}`` and predict NaN. With no signals (``features=()``) each model
reduces exactly to the population curve: the mean D of the calibration set at that NFE (and its empirical
10–90% range), and the (Laplace-smoothed) flip rate.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .expected_change import LOG_SIGNALS, SIGNALS, TARGETS, Calibration

EPS = {"rmse": 1e-4, "semantic": 1e-5}
SIGNAL_EPS = 1e-4
LOW, HIGH = 0.1, 0.9
LAMS = (1e-3, 1e-2, 1e-1, 1.0)  # ridge strengths tried by cross-validation (per sample, on standardized signals)


def usable_features(S: torch.Tensor, features: Sequence[str]) -> list[str]:
    """The requested signals that are finite for (almost) every sample and not constant."""
    keep = []
    for name in features:
        v = S[:, SIGNALS.index(name)]
        ok = torch.isfinite(v)
        if ok.double().mean() >= 0.99 and v[ok].double().std() > 1e-8:
            keep.append(name)
    return keep


def standardize(S: torch.Tensor, features: Sequence[str]) -> tuple[torch.Tensor, dict]:
    model = {"features": list(features), "mu": [], "sd": [], "signal_eps": SIGNAL_EPS}
    cols = []
    for name in features:
        v = S[:, SIGNALS.index(name)].double()
        v = torch.log(v.clamp_min(0) + SIGNAL_EPS) if name in LOG_SIGNALS else v
        mu, sd = float(torch.nanmean(v)), float(v[torch.isfinite(v)].std()) or 1.0
        model["mu"].append(mu)
        model["sd"].append(sd)
        cols.append(torch.nan_to_num((v - mu) / sd, nan=0.0))
    X = torch.stack(cols, 1) if cols else torch.zeros(S.shape[0], 0, dtype=torch.float64)
    return X, model


def ridge(X: torch.Tensor, z: torch.Tensor, lam: float) -> tuple[float, torch.Tensor]:
    """Intercept and weights of min |z − b − Xw|² + lam·n·|w|² (X standardized)."""
    n, p = X.shape
    b0 = z.mean()
    if p == 0:
        return float(b0), torch.zeros(0, dtype=torch.float64)
    Xc = X - X.mean(0)
    w = torch.linalg.solve(Xc.T @ Xc + lam * n * torch.eye(p, dtype=torch.float64), Xc.T @ (z - b0))
    return float(b0 - X.mean(0) @ w), w


def fold_ids(n: int, folds: int) -> torch.Tensor:
    """A fixed random fold per sample (not index modulo folds: calibration sets cycle through the classes)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0)) % folds


def cross_residuals(X: torch.Tensor, z: torch.Tensor, lam: float, folds: int) -> torch.Tensor:
    """Out-of-fold residuals of the ridge fit (each sample predicted by the fit on the other folds)."""
    ids, cross = fold_ids(len(z), folds), torch.empty_like(z)
    for f in range(folds):
        tr = ids != f
        bf, wf = ridge(X[tr], z[tr], lam)
        cross[~tr] = z[~tr] - bf - X[~tr] @ wf
    return cross


def fit_log_linear(y: torch.Tensor, S: torch.Tensor, features: Sequence[str], eps: float,
                   lams: Sequence[float] = LAMS, folds: int = 5) -> dict:
    """A log-linear model of D (see the module docstring) as a JSON-able dict. The ridge strength is the one of
    ``lams`` with the smallest cross-fitted squared error; when no signals beat the intercept alone there,
    the model drops them (it is then the population curve)."""
    y = y.double()
    if bool((y == 0).all()):
        return {"zero": True}
    X, model = standardize(S, features)
    z = torch.log(y + eps)
    cross, lam = z - z.mean(), None
    if X.shape[1]:
        best = min(((float(cross_residuals(X, z, lm, folds).pow(2).mean()), lm) for lm in lams))
        null = float(cross_residuals(X[:, :0], z, 0.0, folds).pow(2).mean())
        if best[0] < null:
            lam = best[1]
            cross = cross_residuals(X, z, lam, folds)
        else:
            X, model = standardize(S, [])
    b, w = ridge(X, z, lam or 0.0)
    resid = z - b - X @ w
    q = torch.quantile(cross, torch.tensor([LOW, 0.5, HIGH], dtype=torch.float64))
    model.update(intercept=b, coef=w.tolist(), eps=eps, smear=float(torch.exp(resid).mean()), ridge=lam,
                 q_low=float(q[0]), q_mid=float(q[1]), q_high=float(q[2]), resid_sd=float(cross.std()))
    return model


def newton_logistic(X: torch.Tensor, y: torch.Tensor, lam: float, b0: float, iters: int = 30):
    """Intercept and weights of the L2-regularized (not the intercept) logistic regression, by Newton's method."""
    n = len(y)
    A = torch.cat([torch.ones(n, 1, dtype=torch.float64), X], 1)
    theta = torch.zeros(A.shape[1], dtype=torch.float64)
    theta[0] = b0
    reg = torch.full((A.shape[1],), lam * n, dtype=torch.float64)
    reg[0] = 0
    for _ in range(iters):
        p = torch.sigmoid(A @ theta)
        H = (A * (p * (1 - p))[:, None]).T @ A + torch.diag(reg) + 1e-9 * torch.eye(A.shape[1], dtype=torch.float64)
        step = torch.linalg.solve(H, A.T @ (p - y) + reg * theta)
        theta = theta - step
        if float(step.abs().max()) < 1e-10:
            break
    return float(theta[0]), theta[1:]


def logistic_cv_loss(X: torch.Tensor, y: torch.Tensor, lam: float, b0: float, folds: int) -> float:
    ids, loss = fold_ids(len(y), folds), 0.0
    for f in range(folds):
        tr = ids != f
        b, w = newton_logistic(X[tr], y[tr], lam, b0)
        p = torch.sigmoid(b + X[~tr] @ w).clamp(1e-6, 1 - 1e-6)
        loss -= float((y[~tr] * p.log() + (1 - y[~tr]) * (1 - p).log()).sum())
    return loss / len(y)


def fit_logistic(flip: torch.Tensor, S: torch.Tensor, features: Sequence[str], lams: Sequence[float] = LAMS,
                 folds: int = 5) -> dict:
    """L2-regularized logistic regression of the flip event (as a JSON-able dict), strength chosen by
    cross-validated log-loss; constant outcomes, no features, or no gain over the rate in that cross-validation
    give the Laplace-smoothed rate."""
    yf = flip.double()
    n, k = len(yf), float(yf.sum())
    rate = (k + 0.5) / (n + 1)
    b0 = float(torch.logit(torch.tensor(rate, dtype=torch.float64)))
    X, model = standardize(S, [] if k in (0.0, float(n)) or k < folds else features)
    b, w, lam = b0, torch.zeros(X.shape[1], dtype=torch.float64), None
    if X.shape[1]:
        best = min((logistic_cv_loss(X, yf, lm, b0, folds), lm) for lm in lams)
        if best[0] < logistic_cv_loss(X[:, :0], yf, 0.0, b0, folds):
            lam = best[1]
            b, w = newton_logistic(X, yf, lam, b0)
        else:
            X, model = standardize(S, [])
            w = torch.zeros(0, dtype=torch.float64)
    model.update(intercept=b, coef=w.tolist(), rate=rate, ridge=lam)
    return model


def fit_update(targets: dict[str, torch.Tensor], S: torch.Tensor, features: Sequence[str] | None) -> dict:
    """The fitted entry of one update: per-sample models and the population curve (no flip target: absent)."""
    feats = usable_features(S, SIGNALS if features is None else features)
    entry = {"samples": int(S.shape[0]), "population": {}}
    for t in TARGETS:
        entry[t] = fit_log_linear(targets[t], S, feats, EPS[t])
        entry["population"][t] = fit_log_linear(targets[t], S, [], EPS[t])
        entry["population"][t]["mean"] = float(targets[t].double().mean())
    if targets.get("flip") is None:
        entry["flip"] = entry["population"]["flip"] = {"absent": True}
        return entry
    entry["flip"] = fit_logistic(targets["flip"], S, feats)
    entry["population"]["flip"] = fit_logistic(targets["flip"], S, [])
    if bool((targets["rmse"] == 0).all()):
        entry["flip"] = entry["population"]["flip"] = {"zero": True}
    return entry


def fit_calibration(signals: torch.Tensor, targets: dict[str, torch.Tensor], nfe: Sequence[int], config: dict,
                    meta: dict | None = None, features: Sequence[str] | None = None) -> Calibration:
    """Fit a Calibration. ``signals``: (N, U, len(SIGNALS)); ``targets``: "rmse", "semantic" (N, U) distances
    to the final and "flip" (N, U) bools (missing or None: no flip target, the flip prediction is absent);
    ``nfe``: the U updates' NFEs; ``features``: the signals to use (default all; ``()`` gives the population
    curve)."""
    N, U = signals.shape[:2]
    for k in ("rmse", "semantic", "flip"):
        if k == "flip" and targets.get(k) is None:
            continue
        if k not in targets:
            raise ValueError(f"targets: missing {k!r} (expected 'rmse', 'semantic' and optionally 'flip')")
        if tuple(targets[k].shape) != (N, U):
            raise ValueError(f"targets[{k!r}]: expected shape {(N, U)}, got {tuple(targets[k].shape)}")
    if len(nfe) != U:
        raise ValueError(f"nfe: expected {U} entries (one per update), got {len(nfe)}")
    flip = targets.get("flip")
    updates = {str(int(n)): fit_update({"rmse": targets["rmse"][:, j], "semantic": targets["semantic"][:, j],
                                        "flip": None if flip is None else flip[:, j]}, signals[:, j], features)
               for j, n in enumerate(nfe)}
    return Calibration(config=config, updates=updates, meta=dict(meta or {}, samples=N))
