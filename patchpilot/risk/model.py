"""The risk model: logistic regression with the package's own smoothed earlier regression
rate as an offset, L2-regularised weights on the other standardised features, and a bootstrap
ensemble for the uncertainty interval:

    logit(p) = logit(package rate) + intercept + w . standardised(features)

The offset is an empirical-Bayes estimate (earlier regressions plus HISTORY_STRENGTH
pseudo-advisories at the base rate), so a package with no history starts at the base rate and
each known regression moves it, whatever the training window happened to show. Stored as plain
JSON (weights, scaler, metadata), never as a pickle, so a model file is data.

Why this shape: about 3% of advisories are followed by a regression, some 90 positives in a
four-year training window; a linear model on a few meaningful features is what such data
supports, it is calibrated by construction, and each reason is one weight times one value.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from scipy.optimize import minimize

from patchpilot.errors import BadInputError
from patchpilot.risk.features import FEATURES, History, HistoryEvent, design_columns

MODEL_FORMAT = "patchpilot-risk-model/1"
N_BOOTSTRAP = 40
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
C_DEFAULT = 0.01
HISTORY_STRENGTH = 20.0  # pseudo-observations at the base rate behind every package's rate
FLEET_WEIGHT = 10.0  # one fleet outcome counts as this many advisories for its package
INTERVAL = (5.0, 95.0)
OFFSET = "prior_rate"
LEARNED = tuple(f for f in FEATURES if f != OFFSET)
_EPS = 1e-6


def offset_logit(x: np.ndarray) -> np.ndarray:
    """The offset column (the package's smoothed rate) on the logit scale."""
    rate = np.clip(x[:, FEATURES.index(OFFSET)], _EPS, 1 - _EPS)
    return np.asarray(np.log(rate / (1 - rate)))


def learned_columns(x: np.ndarray) -> np.ndarray:
    return x[:, [FEATURES.index(f) for f in LEARNED]]


@dataclass
class RiskModel:
    features: list[str]  # all of FEATURES: the offset's, then the learned ones in order
    mean: np.ndarray  # of the learned features
    scale: np.ndarray
    coef: np.ndarray  # (1 + bootstraps, learned features): row 0 is the fit on all data
    intercept: np.ndarray  # (1 + bootstraps,)
    base_rate: float
    metadata: dict[str, Any] = field(default_factory=dict)

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """Full design rows (FEATURES) to standardised learned columns."""
        return np.asarray((learned_columns(x) - self.mean) / self.scale)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probability from the full fit and the bootstrap interval, per row."""
        z = self.standardise(x)
        logits = z @ self.coef.T + self.intercept + offset_logit(x)[:, None]
        probs = 1.0 / (1.0 + np.exp(-logits))
        p = probs[:, 0]
        if probs.shape[1] > 2:
            lo, hi = np.percentile(probs[:, 1:], INTERVAL, axis=1)
        else:
            lo, hi = p, p
        return p, np.minimum(lo, p), np.maximum(hi, p)

    def contributions(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Each feature's push on the logit, relative to an average item (and, for the
        package's own rate, relative to the base rate)."""
        z = self.standardise(x) * self.coef[0]
        out = {f: z[:, i] for i, f in enumerate(LEARNED)}
        base = min(max(self.base_rate, _EPS), 1 - _EPS)
        out[OFFSET] = offset_logit(x) - float(np.log(base / (1 - base)))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "features": self.features,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
            "base_rate": self.base_rate,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str = "<model>") -> RiskModel:
        if data.get("format") != MODEL_FORMAT:
            raise BadInputError(
                f"{source}: not a patchpilot risk model (format {data.get('format')!r})",
                hint="train one with `patchpilot risk train`",
            )
        if list(data["features"]) != list(FEATURES):
            raise BadInputError(
                f"{source}: model was trained on other features than this version uses",
                hint="retrain with `patchpilot risk train`",
            )
        return cls(
            features=list(data["features"]),
            mean=np.asarray(data["mean"], dtype=float),
            scale=np.asarray(data["scale"], dtype=float),
            coef=np.asarray(data["coef"], dtype=float),
            intercept=np.asarray(data["intercept"], dtype=float),
            base_rate=float(data["base_rate"]),
            metadata=dict(data.get("metadata", {})),
        )


def _fit_one(
    z: np.ndarray, y: np.ndarray, w: np.ndarray, off: np.ndarray, c: float
) -> tuple[np.ndarray, float]:
    """Weighted, L2-penalised (not the intercept) logistic regression with an offset."""

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        logits = z @ theta[1:] + theta[0] + off
        # log(1 + e^t) computed stably
        ll = np.logaddexp(0.0, logits) - y * logits
        p = 1.0 / (1.0 + np.exp(-logits))
        g = w * (p - y)
        value = float(np.dot(w, ll) + np.dot(theta[1:], theta[1:]) / (2 * c))
        grad = np.concatenate([[g.sum()], z.T @ g + theta[1:] / c])
        return value, grad

    res = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B")
    return np.asarray(res.x[1:]), float(res.x[0])


def fit_model(
    x: np.ndarray,
    y: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    bootstraps: int = N_BOOTSTRAP,
    c: float = C_DEFAULT,
    seed: int = 0,
) -> RiskModel:
    if len(np.unique(y)) < 2:
        raise BadInputError(
            "cannot train: the training data has no regressions (or only regressions)",
            hint="widen the training range",
        )
    w = np.ones(len(y)) if weights is None else weights
    learned = learned_columns(x)
    off = offset_logit(x)
    mean = np.average(learned, axis=0, weights=w)
    scale = np.sqrt(np.average((learned - mean) ** 2, axis=0, weights=w))
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = (learned - mean) / scale
    yf = y.astype(float)
    rng = np.random.default_rng(seed)
    coefs, intercepts = [], []
    for b in range(bootstraps + 1):
        idx = np.arange(len(y)) if b == 0 else rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < 2:
            continue
        coef, intercept = _fit_one(z[idx], yf[idx], w[idx], off[idx], c)
        coefs.append(coef)
        intercepts.append(intercept)
    base_rate = float(np.average(y, weights=w))
    return RiskModel(
        features=list(FEATURES),
        mean=mean,
        scale=scale,
        coef=np.vstack(coefs),
        intercept=np.asarray(intercepts),
        base_rate=base_rate,
    )


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }


def make_history(
    events: list[HistoryEvent], *, base_rate: float, strength: float = HISTORY_STRENGTH
) -> History:
    return History(events, base_rate=base_rate, strength=strength)


def design_matrix(items: pd.DataFrame, history: History) -> tuple[np.ndarray, pd.DataFrame]:
    cols = design_columns(items, history)
    return cols[list(FEATURES)].to_numpy(dtype=float), cols


def model_metadata(
    *,
    kind: str,
    data_from: date,
    data_until: date,
    rows: int,
    positives: int,
    fleet_rows: int = 0,
    c: float = C_DEFAULT,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_from": data_from.isoformat(),
        "data_until": data_until.isoformat(),
        "rows": rows,
        "positives": positives,
        "fleet_rows": fleet_rows,
        "metrics": metrics or {},
        "libraries": library_versions(),
        "method": f"logistic regression with the package rate as offset, L2 (C={c}), "
        f"{N_BOOTSTRAP} bootstraps",
        "c": c,
    }


def shipped_model() -> RiskModel:
    ref = resources.files("patchpilot.risk") / "data" / "prior-model.json"
    return RiskModel.from_json(json.loads(ref.read_text()), source="shipped prior model")


def read_model(path: Path) -> RiskModel:
    try:
        return RiskModel.from_json(json.loads(path.read_text()), source=str(path))
    except (OSError, ValueError) as exc:
        raise BadInputError(
            f"cannot read model {path}: {exc}", hint="train one with `patchpilot risk train`"
        ) from exc
