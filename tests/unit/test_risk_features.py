"""Features: categories, versions, and the proof that no feature of an item uses data dated on
or after the item."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from patchpilot.risk.advisories import AdvisoryRevision
from patchpilot.risk.dataset import advisory_events, advisory_items, build_table, shipped_table
from patchpilot.risk.features import (
    FEATURES,
    History,
    HistoryEvent,
    design_columns,
    package_category,
    package_family,
    release_update_number,
)


@pytest.mark.parametrize(
    ("package", "category"),
    [
        ("linux", "kernel"),
        ("linux-4.19", "kernel"),
        ("linux-signed-amd64", "kernel"),
        ("glibc", "libc"),
        ("openssl", "tls-crypto"),
        ("gnutls28", "tls-crypto"),
        ("openssh", "ssh"),
        ("systemd", "init-systemd"),
        ("python3.11", "language-runtime"),
        ("openjdk-17", "language-runtime"),
        ("apache2", "web-server"),
        ("nginx", "web-server"),
        ("postgresql-15", "database"),
        ("mariadb-10.11", "database"),
        ("firefox-esr", "browser"),
        ("chromium", "browser"),
        ("tzdata", "data-only"),
        ("ca-certificates", "data-only"),
        ("imagemagick", "other"),
        ("demoweb", "other"),
    ],
)
def test_package_categories(package: str, category: str) -> None:
    assert package_category(package) == category


@pytest.mark.parametrize(
    ("package", "family"),
    [
        ("linux-4.19", "linux"),
        ("php7.3", "php"),
        ("openssl1.0", "openssl"),
        ("postgresql-11", "postgresql"),
        ("python3.11", "python"),
        ("imagemagick", "imagemagick"),
    ],
)
def test_versioned_names_share_a_history(package: str, family: str) -> None:
    assert package_family(package) == family


@pytest.mark.parametrize(
    ("version", "n"),
    [
        ("2.3.4-5+deb9u1", 1),
        ("1.1.0l-1~deb9u11", 11),
        ("3.0.22-1~deb12u2", 2),
        ("1:2.1.18-2+deb8u3", 3),
        ("1.2.3-1", 0),
        ("7.26.0-1+wheezy25", 25),
        ("", 0),
    ],
)
def test_release_update_number(version: str, n: int) -> None:
    assert release_update_number(version) == n


def _history(table: pd.DataFrame, base: float = 0.035) -> History:
    return History(advisory_events(table), base_rate=base, strength=20)


def test_history_counts_only_what_came_strictly_before() -> None:
    d = date(2020, 1, 10)
    events = [
        HistoryEvent("foo", date(2020, 1, 1), True, date(2020, 1, 5)),  # known before: counts
        HistoryEvent("foo", date(2020, 1, 2), True, date(2020, 1, 10)),  # known that day: not
        HistoryEvent("foo", date(2020, 1, 10), True, date(2020, 1, 9)),  # same day: not at all
        HistoryEvent("foo", date(2020, 2, 1), False, None),  # later: not
        HistoryEvent("bar", date(2019, 1, 1), True, date(2019, 1, 2)),  # other package: not
    ]
    h = History(events, base_rate=0.05, strength=20)
    f = h.features(["foo"], np.array([float(d.toordinal())]))
    assert f["history_n"][0] == 2 and f["history_k"][0] == 1
    assert f["days_prev"][0] == 8
    assert f["prior_rate"][0] == pytest.approx((1 + 20 * 0.05) / (2 + 20))


def test_fleet_outcomes_count_from_their_time_of_day() -> None:
    morning = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    events = [HistoryEvent("demoweb", morning, True, morning, weight=10.0, advisory=False)]
    h = History(events, base_rate=0.03, strength=20)
    from patchpilot.risk.features import _day

    before = h.features(["demoweb"], np.array([_day(morning.replace(hour=7))]))
    after = h.features(["demoweb"], np.array([_day(morning.replace(hour=9))]))
    assert before["fleet_n"][0] == 0 and after["fleet_n"][0] == 1 and after["fleet_k"][0] == 1
    assert after["prior_rate"][0] > 0.3 > before["prior_rate"][0]


def _truncated(table: pd.DataFrame, item_date: date) -> pd.DataFrame:
    """The table as it stood the day an item was published: earlier advisories only, and only
    the regressions already known."""
    past = table[table["date"] < item_date].copy()
    past["regression"] = [
        int(r == 1 and rd is not None and rd < item_date)
        for r, rd in zip(past["regression"], past["regression_date"], strict=True)
    ]
    past["regression_date"] = [
        rd if (rd is not None and rd < item_date) else None for rd in past["regression_date"]
    ]
    return past


def test_no_feature_of_an_item_uses_data_dated_on_or_after_it() -> None:
    """Every feature of an advisory, computed from the whole table, equals the same feature
    computed from only what was published before it."""
    table = shipped_table()
    rng = np.random.default_rng(7)
    picks = list(rng.choice(len(table), size=120, replace=False))
    # Items with a lot of history around them, where leakage would show first.
    for pkg in ("linux", "openssl", "ghostscript", "php5"):
        rows = np.flatnonzero(table["package"].to_numpy() == pkg)
        picks.extend(rows[len(rows) // 2 : len(rows) // 2 + 3])
    full = design_columns(advisory_items(table.iloc[picks]), _history(table))
    for pos, idx in enumerate(picks):
        item = table.iloc[[idx]]
        d = item["date"].iat[0]
        past_only = design_columns(advisory_items(item), _history(_truncated(table, d)))
        np.testing.assert_allclose(
            full[list(FEATURES)].iloc[pos].to_numpy(dtype=float),
            past_only[list(FEATURES)].iloc[0].to_numpy(dtype=float),
            err_msg=f"{item['advisory'].iat[0]} ({d}) uses later data",
        )


def test_upstream_change_of_an_advisory_looks_only_at_earlier_ones() -> None:
    def rev(num: int, day: int, version: str, title: str = "security update") -> AdvisoryRevision:
        return AdvisoryRevision(
            series="DSA",
            number=f"DSA-{num}",
            revision=1,
            published=date(2019, 1, day),
            package="foo",
            title=title,
            fixes=[("buster", "foo", version)],
        )

    early = [rev(1, 1, "1.0-1+deb10u1"), rev(2, 10, "1.0-1+deb10u2")]
    later = [rev(3, 20, "2.0-0+deb10u1")]
    only_early = build_table(early)
    with_later = build_table(early + later)
    assert list(only_early["upstream_changed"]) == list(with_later["upstream_changed"][:2])
    # The first has no earlier version: its revision (-1+deb10u1) says a new upstream release.
    assert with_later["upstream_changed"].tolist() == [True, False, True]


def test_a_future_regression_does_not_move_an_earlier_item() -> None:
    table = shipped_table()
    item = table[table["package"] == "openssl"].iloc[[5]]
    d = item["date"].iat[0]
    future = pd.DataFrame(
        {
            "advisory": ["DSA-99999-1"],
            "list": ["DSA"],
            "date": [date(d.year + 1, 1, 1)],
            "package": ["openssl"],
            "cves": [1],
            "releases": ["buster"],
            "version": ["9.9-1"],
            "upstream_changed": [None],
            "regression": [1],
            "regression_date": [date(d.year + 1, 1, 2)],
        }
    )
    poisoned = pd.concat([table, future], ignore_index=True)
    a = design_columns(advisory_items(item), _history(table))[list(FEATURES)]
    b = design_columns(advisory_items(item), _history(poisoned))[list(FEATURES)]
    pd.testing.assert_frame_equal(a, b)
