"""The rolling-origin backtest: yearly origins to the data's end, each fold trained only on
what was known before its origin, pooled figures over all test items, and a reliability
table whose intervals are right."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from patchpilot.errors import BadInputError
from patchpilot.risk.backtest import backtest, origins, reliability, wilson
from patchpilot.risk.dataset import shipped_table


def test_origins_are_yearly_to_the_datas_end() -> None:
    table = pd.DataFrame({"date": [date(2015, 1, 1), date(2018, 3, 4)]})
    assert origins(table, 2016) == [
        (date(2016, 7, 1), date(2017, 6, 30)),
        (date(2017, 7, 1), date(2018, 3, 4)),
    ]
    assert origins(table, 2019) == []


def test_wilson_interval() -> None:
    low, high = wilson(3, 100)
    assert low == pytest.approx(0.0103, abs=1e-4) and high == pytest.approx(0.0845, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(0, 50)[0] == 0.0


def test_reliability_deciles_hold_every_item_once() -> None:
    rng = np.random.default_rng(7)
    p = rng.uniform(0, 0.2, 1000)
    y = (rng.uniform(0, 1, 1000) < p).astype(int)
    bins = reliability(p, y)
    assert len(bins) == 10 and sum(b.count for b in bins) == 1000
    assert [b.predicted for b in bins] == sorted(b.predicted for b in bins)
    assert sum(b.observed * b.count for b in bins) == pytest.approx(y.sum())
    # Predictions drawn from the truth sit inside their intervals (nearly) everywhere.
    assert sum(b.within for b in bins) >= 8


def test_a_backtest_on_the_shipped_data() -> None:
    table = shipped_table()
    folds, pooled = backtest(table, first_year=2016)
    assert [f.origin for f in folds] == [date(y, 7, 1) for y in (2016, 2017, 2018, 2019)]
    for f in folds:
        in_range = table[(table["date"] >= f.origin) & (table["date"] <= f.test_until)]
        assert {r.count for r in f.results} == {len(in_range)}
        assert {r.positives for r in f.results} == {int(in_range["regression"].sum())}
        assert sum(b.count for b in f.reliability) == len(in_range)
        base = next(r for r in f.results if r.method == "base rate")
        assert base.roc_auc == 0.5  # one constant score per fold
    assert {r.count for r in pooled.results} == {sum(f.results[0].count for f in folds)}
    assert {r.method for r in pooled.results} == {"model", "base rate", "rule points"}
    with pytest.raises(BadInputError, match="no origin from 2030"):
        backtest(table, first_year=2030)
