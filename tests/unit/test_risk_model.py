"""The model: its measured quality on the published split, the shipped files, the model file
format and the evaluation arithmetic."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from patchpilot.errors import BadInputError
from patchpilot.risk.advisories import read_advisory_list
from patchpilot.risk.dataset import build_table_from_lists, read_table, shipped_table, write_table
from patchpilot.risk.evaluate import evaluate, recall_at
from patchpilot.risk.model import RiskModel, fit_model, shipped_model
from patchpilot.risk.score import Thresholds
from patchpilot.risk.types import RiskLevel

FIXTURES = Path(__file__).parents[1] / "fixtures" / "debian-security"


@pytest.fixture(scope="module")
def split_results() -> dict[str, object]:
    results = evaluate(
        shipped_table(),
        train_until=date(2018, 7, 1),
        test_from=date(2018, 7, 1),
        test_until=date(2020, 4, 30),
    )
    return {r.method: r for r in results}


def test_model_beats_both_baselines_on_the_published_split(split_results) -> None:  # type: ignore[no-untyped-def]
    model, base, rule = (split_results[m] for m in ("model", "base rate", "rule points"))
    assert model.count == base.count == rule.count > 1000
    assert model.positives == 49
    assert model.roc_auc > rule.roc_auc and model.roc_auc > base.roc_auc
    assert model.pr_auc > rule.pr_auc and model.pr_auc > base.pr_auc
    assert base.roc_auc == pytest.approx(0.5)


def test_shipped_table_is_rebuilt_exactly_from_the_tracker_lists(tmp_path: Path) -> None:
    built = build_table_from_lists(
        [
            read_advisory_list(FIXTURES / "DSA-list.txt.gz"),
            read_advisory_list(FIXTURES / "DLA-list.txt.gz"),
        ]
    )
    pd.testing.assert_frame_equal(built, shipped_table())
    path = tmp_path / "t.csv.gz"
    write_table(built, path)
    pd.testing.assert_frame_equal(read_table(path), built)


def test_shipped_prior_carries_its_data_range_metrics_and_library_versions() -> None:
    md = shipped_model().metadata
    assert md["kind"] == "prior"
    assert md["data_from"] == "2014-01-01" and md["data_until"] == "2020-05-01"
    assert md["positives"] > 100 and md["rows"] > 3000
    assert {"scikit-learn", "numpy", "pandas", "python"} <= set(md["libraries"])
    methods = {r["method"] for r in md["metrics"]["results"]}
    assert methods == {"model", "base rate", "rule points"}


def test_model_file_round_trips_as_plain_json() -> None:
    model = shipped_model()
    again = RiskModel.from_json(json.loads(json.dumps(model.to_json())))
    x = np.random.default_rng(0).normal(size=(5, len(model.features)))
    x[:, model.features.index("prior_rate")] = 0.04
    for a, b in zip(model.predict(x), again.predict(x), strict=True):
        np.testing.assert_allclose(a, b)


def test_a_model_for_other_features_is_refused() -> None:
    data = shipped_model().to_json()
    data["features"] = data["features"][:-1]
    with pytest.raises(BadInputError, match="other features"):
        RiskModel.from_json(data)
    with pytest.raises(BadInputError, match="not a patchpilot risk model"):
        RiskModel.from_json({"format": "x"})


def test_interval_brackets_the_probability() -> None:
    model = shipped_model()
    table = shipped_table().iloc[:200]
    from patchpilot.risk.dataset import advisory_events, advisory_items
    from patchpilot.risk.model import design_matrix, make_history

    x, _ = design_matrix(
        advisory_items(table), make_history(advisory_events(table), base_rate=model.base_rate)
    )
    p, lo, hi = model.predict(x)
    assert np.all(lo <= p) and np.all(p <= hi) and np.all((p > 0) & (p < 1))
    assert np.any(hi - lo > 0.001)


def test_training_data_without_regressions_is_refused() -> None:
    from patchpilot.risk.features import FEATURES

    with pytest.raises(BadInputError, match="no regressions"):
        fit_model(np.full((10, len(FEATURES)), 0.03), np.zeros(10, dtype=int))


@pytest.mark.parametrize(
    ("scores", "labels", "share", "expected"),
    [
        (
            [0.9, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
            [1, 0, 1, 0, 0, 0, 0, 0, 0, 0],
            0.1,
            0.5,
        ),
        (
            [0.9, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
            [1, 0, 1, 0, 0, 0, 0, 0, 0, 0],
            0.2,
            0.5,
        ),
        # A constant score catches exactly its share, whatever the order.
        ([0.5] * 10, [1, 1, 0, 0, 0, 0, 0, 0, 0, 0], 0.2, 0.2),
        ([0.1, 0.9, 0.5, 0.2], [0, 1, 1, 0], 0.5, 1.0),
    ],
)
def test_recall_at_top_share(
    scores: list[float], labels: list[int], share: float, expected: float
) -> None:
    assert recall_at(np.array(scores), np.array(labels), share) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("p", "level"),
    [(0.0, RiskLevel.LOW), (0.049, RiskLevel.LOW), (0.05, RiskLevel.MEDIUM), (0.1, RiskLevel.HIGH)],
)
def test_levels_and_their_strategies(p: float, level: RiskLevel) -> None:
    assert Thresholds(medium=0.05, high=0.10).level(p) == level


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(BadInputError, match="medium < high"):
        Thresholds(medium=0.2, high=0.1)


def test_evaluate_refuses_overlapping_ranges() -> None:
    with pytest.raises(BadInputError, match="bad ranges"):
        evaluate(
            shipped_table(),
            train_until=date(2019, 1, 1),
            test_from=date(2018, 1, 1),
            test_until=date(2018, 6, 1),
        )
