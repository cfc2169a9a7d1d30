"""A rolling-origin backtest: the model judged the way it is used, trained on the past and
scoring the future. For each yearly origin (1 July, from a first year to the data's end) it
trains on everything known before the origin and scores the following year; each fold and
all folds pooled get the usual figures for the model and its two baselines (the base rate
and the fixed-points rule), and the model a reliability table: its predictions in deciles,
the share that regressed in each, with that share's 95% Wilson interval.

Only the training range of a fold is seen by its choices (the regularisation is picked by
folds inside it, see risk.train.choose_regularisation); the test year is scored once."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from patchpilot.errors import BadInputError
from patchpilot.risk.evaluate import MethodResult, _metrics, predictions

ORIGIN_MONTH, ORIGIN_DAY = 7, 1
Z95 = 1.959964


@dataclass(frozen=True)
class Bin:
    """One decile of the model's predictions on a test range."""

    count: int
    predicted: float  # mean predicted probability
    observed: float  # share that regressed
    low: float  # 95% Wilson interval of `observed`
    high: float

    @property
    def within(self) -> bool:
        """The prediction lies inside the observed share's own interval."""
        return self.low <= self.predicted <= self.high


@dataclass(frozen=True)
class Fold:
    origin: date  # trained on what was known before it
    test_until: date  # tested from the origin to this day
    results: list[MethodResult]
    reliability: list[Bin]

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin.isoformat(),
            "test_until": self.test_until.isoformat(),
            "results": [asdict(r) for r in self.results],
            "reliability": [{**asdict(b), "within": b.within} for b in self.reliability],
        }


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[Bin]:
    """Predictions in `bins` groups of (about) equal size, lowest first."""
    order = np.argsort(p, kind="stable")
    out = []
    for part in np.array_split(order, bins):
        if len(part) == 0:
            continue
        k, n = int(y[part].sum()), len(part)
        low, high = wilson(k, n)
        out.append(Bin(n, float(p[part].mean()), k / n, low, high))
    return out


def origins(table: pd.DataFrame, first_year: int) -> list[tuple[date, date]]:
    """(origin, last test day) for each yearly origin with a whole or partial year after it."""
    end = table["date"].max()
    end = end.date() if hasattr(end, "date") else end
    out = []
    year = first_year
    while True:
        origin = date(year, ORIGIN_MONTH, ORIGIN_DAY)
        if origin > end:
            break
        until = min(date(year + 1, ORIGIN_MONTH, ORIGIN_DAY) - timedelta(days=1), end)
        out.append((origin, until))
        year += 1
    return out


def backtest(table: pd.DataFrame, *, first_year: int = 2016) -> tuple[list[Fold], Fold]:
    """Every fold from `first_year`'s origin, and all folds pooled (its origin the first
    fold's, its reliability over every test item)."""
    folds: list[Fold] = []
    pooled_y: list[np.ndarray] = []
    pooled_p: dict[str, list[np.ndarray]] = {}
    spans = origins(table, first_year)
    if not spans:
        raise BadInputError(
            f"no origin from {first_year} falls inside the data (it ends {table['date'].max()})",
            hint="choose an earlier --from year",
        )
    for origin, until in spans:
        y, scored = predictions(
            table,
            train_until=origin - timedelta(days=1),
            test_from=origin,
            test_until=until,
        )
        folds.append(
            Fold(
                origin,
                until,
                [_metrics(name, p, y) for name, p in scored.items()],
                reliability(scored["model"], y),
            )
        )
        pooled_y.append(y)
        for name, p in scored.items():
            pooled_p.setdefault(name, []).append(p)
    y_all = np.concatenate(pooled_y)
    p_all = {name: np.concatenate(ps) for name, ps in pooled_p.items()}
    pooled = Fold(
        spans[0][0],
        spans[-1][1],
        [_metrics(name, p, y_all) for name, p in p_all.items()],
        reliability(p_all["model"], y_all),
    )
    return folds, pooled
