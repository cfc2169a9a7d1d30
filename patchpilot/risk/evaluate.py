"""A split by time: train on advisories before a date (labels as known then), test on a later
range, and compare the model with the base rate and a fixed-points rule baseline."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from patchpilot.errors import BadInputError
from patchpilot.risk.dataset import TRAIN_FROM, advisory_events, advisory_items, training_rows
from patchpilot.risk.model import design_matrix, fit_model, make_history
from patchpilot.risk.train import choose_regularisation


@dataclass(frozen=True)
class MethodResult:
    method: str
    count: int
    positives: int
    roc_auc: float
    pr_auc: float
    brier: float
    top10: float  # share of regressions among the top-ranked 10%
    top20: float
    log_loss: float = float("nan")


def rule_points(cols: pd.DataFrame) -> np.ndarray:
    """What rule-based tools do: kernel +5, similar past failures over 5% +3, critical +2.
    'Similar past failures' is the package's observed regression rate before the item."""
    hist_n = cols["_history_n"].to_numpy()
    hist_k = cols["_history_k"].to_numpy()
    rate = np.divide(hist_k, hist_n, out=np.zeros_like(hist_k), where=hist_n > 0)
    return (
        5.0 * (cols["_category"] == "kernel").to_numpy()
        + 3.0 * (rate > 0.05)
        + 2.0 * cols["urgency_critical"].to_numpy()
    )


def recall_at(scores: np.ndarray, y: np.ndarray, share: float) -> float:
    """Share of positives in the top `share` of items by score. Ties at the cut are counted
    pro rata, so a constant score gets exactly `share`, never an arbitrary order's luck."""
    total = y.sum()
    if total == 0:
        return float("nan")
    k = share * len(scores)
    order = np.argsort(-scores, kind="stable")
    s, yy = scores[order], y[order]
    caught = 0.0
    taken = 0.0
    for value in np.unique(s)[::-1]:
        if taken >= k:
            break
        mask = s == value
        n_here = mask.sum()
        pos_here = yy[mask].sum()
        take = min(n_here, k - taken)
        caught += pos_here * take / n_here
        taken += take
    return float(caught / total)


def _calibrate_points(train_points: np.ndarray, y: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points to probabilities by each point total's training frequency (smoothed), so the
    rule baseline gets a fair Brier score."""
    base = y.mean()
    out = np.empty(len(points))
    for value in np.unique(points):
        m = train_points == value
        out[points == value] = (y[m].sum() + 2 * base) / (m.sum() + 2)
    return out


def _metrics(name: str, p: np.ndarray, y: np.ndarray) -> MethodResult:
    both = len(np.unique(y)) == 2
    return MethodResult(
        method=name,
        count=len(y),
        positives=int(y.sum()),
        roc_auc=float(roc_auc_score(y, p)) if both else float("nan"),
        pr_auc=float(average_precision_score(y, p)) if both else float("nan"),
        brier=float(brier_score_loss(y, np.clip(p, 0, 1))),
        top10=recall_at(p, y, 0.10),
        top20=recall_at(p, y, 0.20),
        log_loss=float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1])),
    )


def evaluate(
    table: pd.DataFrame,
    *,
    train_until: date,
    test_from: date,
    test_until: date,
    train_from: date = TRAIN_FROM,
) -> list[MethodResult]:
    y_test, scored = predictions(
        table,
        train_until=train_until,
        test_from=test_from,
        test_until=test_until,
        train_from=train_from,
    )
    return [_metrics(name, p, y_test) for name, p in scored.items()]


def predictions(
    table: pd.DataFrame,
    *,
    train_until: date,
    test_from: date,
    test_until: date,
    train_from: date = TRAIN_FROM,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Train on what was known before `train_until` and score the test range: its labels
    and each method's probabilities (the model, the base rate, the rule's points)."""
    if not train_until <= test_from <= test_until:
        raise BadInputError(
            f"bad ranges: train until {train_until}, test {test_from}..{test_until}",
            hint="training must end on or before the test range starts",
        )
    train = training_rows(table, since=train_from, until=train_until)
    test = table[(table["date"] >= test_from) & (table["date"] <= test_until)]
    if len(train) == 0 or len(test) == 0:
        raise BadInputError(
            f"no advisories in the {'training' if len(train) == 0 else 'test'} range",
            hint="check the dates against the data's range (`patchpilot risk models`)",
        )
    y_train = train["label"].to_numpy()
    base = float(y_train.mean())
    # History counts only events strictly before each item; the training side also never sees
    # a regression that became known after train_until.
    train_hist = make_history(advisory_events(table, until=train_until), base_rate=base)
    x_train, cols_train = design_matrix(advisory_items(train), train_hist)
    c = choose_regularisation(table, since=train_from, until=train_until)
    model = fit_model(x_train, y_train, c=c)
    test_hist = make_history(advisory_events(table), base_rate=base)
    x_test, cols_test = design_matrix(advisory_items(test), test_hist)
    y_test = test["regression"].to_numpy()
    p_model, _, _ = model.predict(x_test)
    return y_test, {
        "model": p_model,
        "base rate": np.full(len(y_test), base),
        "rule points": _calibrate_points(rule_points(cols_train), y_train, rule_points(cols_test)),
    }
