"""Maintenance windows, across both clock changes of Europe/Berlin in 2026 (29 March: 02:00
jumps to 03:00; 25 October: 03:00 falls back to 02:00)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from patchpilot.plan import Window, in_window, next_window

BERLIN = ZoneInfo("Europe/Berlin")


def berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[misc]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


SATURDAY_NIGHT = Window(cron="0 2 * * 6", duration="4h", timezone="Europe/Berlin")
NIGHTLY_0230 = Window(cron="30 2 * * *", duration="1h", timezone="Europe/Berlin")
NIGHTLY_0100 = Window(cron="0 1 * * *", duration="4h", timezone="Europe/Berlin")


@pytest.mark.parametrize(
    ("window", "now", "start", "end", "inside"),
    [
        # Wednesday -> the next Saturday, 02:00-06:00.
        (
            SATURDAY_NIGHT,
            berlin(2026, 6, 3, 12),
            berlin(2026, 6, 6, 2),
            berlin(2026, 6, 6, 6),
            False,
        ),
        # Inside a window: that window, not the next one.
        (SATURDAY_NIGHT, berlin(2026, 6, 6, 3), berlin(2026, 6, 6, 2), berlin(2026, 6, 6, 6), True),
        # The start is inside, the end is not.
        (SATURDAY_NIGHT, berlin(2026, 6, 6, 2), berlin(2026, 6, 6, 2), berlin(2026, 6, 6, 6), True),
        (
            SATURDAY_NIGHT,
            berlin(2026, 6, 6, 6),
            berlin(2026, 6, 13, 2),
            berlin(2026, 6, 13, 6),
            False,
        ),
        # `now` in another zone means the same instant.
        (SATURDAY_NIGHT, utc(2026, 6, 6, 1), berlin(2026, 6, 6, 2), berlin(2026, 6, 6, 6), True),
        # Spring: 02:30 does not exist on 29 March; cron runs it right after the jump, at
        # 03:00 CEST, and the hour-long window lasts one elapsed hour.
        (
            NIGHTLY_0230,
            berlin(2026, 3, 28, 12),
            berlin(2026, 3, 29, 3),
            berlin(2026, 3, 29, 4),
            False,
        ),
        (
            NIGHTLY_0230,
            berlin(2026, 3, 29, 3, 30),
            berlin(2026, 3, 29, 3),
            berlin(2026, 3, 29, 4),
            True,
        ),
        # The day after, 02:30 CEST again.
        (
            NIGHTLY_0230,
            berlin(2026, 3, 29, 12),
            berlin(2026, 3, 30, 2, 30),
            berlin(2026, 3, 30, 3, 30),
            False,
        ),
        # Autumn: 02:30 happens twice on 25 October; cron runs it once, at the first (CEST)
        # one. One elapsed hour later it is 02:30 again, on standard time (CET).
        (
            NIGHTLY_0230,
            berlin(2026, 10, 24, 12),
            berlin(2026, 10, 25, 2, 30),
            berlin(2026, 10, 25, 2, 30, fold=1),
            False,
        ),
        # 02:10 CET (the second 02:10) is 01:10 UTC: inside the window 00:30-01:30 UTC.
        (
            NIGHTLY_0230,
            berlin(2026, 10, 25, 2, 10, fold=1),
            berlin(2026, 10, 25, 2, 30),
            berlin(2026, 10, 25, 2, 30, fold=1),
            True,
        ),
        # 02:45 CET is after the window: no second run that night.
        (
            NIGHTLY_0230,
            berlin(2026, 10, 25, 2, 45, fold=1),
            berlin(2026, 10, 26, 2, 30),
            berlin(2026, 10, 26, 3, 30),
            False,
        ),
        # A window spanning the jump: 01:00 CET + 4 elapsed hours = 06:00 CEST.
        (
            NIGHTLY_0100,
            berlin(2026, 3, 28, 23),
            berlin(2026, 3, 29, 1),
            berlin(2026, 3, 29, 6),
            False,
        ),
        # A window spanning the fall back: 01:00 CEST + 4 elapsed hours = 04:00 CET.
        (
            NIGHTLY_0100,
            berlin(2026, 10, 25, 3, 30),
            berlin(2026, 10, 25, 1),
            berlin(2026, 10, 25, 4),
            True,
        ),
    ],
)
def test_windows(
    window: Window, now: datetime, start: datetime, end: datetime, inside: bool
) -> None:
    got_start, got_end = next_window(window, now)
    # Compared in UTC: within one zone Python compares wall clocks and ignores fold.
    assert got_start.astimezone(UTC) == start.astimezone(UTC)
    assert got_end.astimezone(UTC) == end.astimezone(UTC)
    assert got_start.utcoffset() == start.utcoffset() and got_end.utcoffset() == end.utcoffset()
    assert got_start.tzinfo == BERLIN
    assert in_window(window, now) is inside
    elapsed = got_end.astimezone(UTC) - got_start.astimezone(UTC)
    assert elapsed == timedelta(seconds=window.duration)


def test_window_elapsed_duration_across_changes() -> None:
    for day in (berlin(2026, 3, 28, 12), berlin(2026, 10, 24, 12)):
        start, end = next_window(NIGHTLY_0100, day)
        assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=4)


def test_windows_every_hour_across_fall_back() -> None:
    hourly = Window(cron="0 * * * *", duration="10m", timezone="Europe/Berlin")
    now = berlin(2026, 10, 25, 0, 30)
    starts = []
    for _ in range(5):
        start, _end = next_window(hourly, now)
        starts.append(start.astimezone(UTC))
        now = start.astimezone(UTC) + timedelta(minutes=15)  # elapsed, not wall clock
    # An hourly job runs every elapsed hour, the repeated 02:00 hour included.
    assert starts == [utc(2026, 10, 24, 23) + timedelta(hours=i) for i in range(5)]


def test_naive_now_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_window(SATURDAY_NIGHT, datetime(2026, 6, 1))


@pytest.mark.parametrize(
    ("cron", "start"),
    [
        ("0 0 29 2 *", utc(2028, 2, 29)),  # the next leap day
        ("0 0 * 2 MON#5", utc(2044, 2, 29)),  # the next February with five Mondays
        # Both day fields restricted: cron takes either (the 29th, or any Monday).
        ("0 0 29 2 1", utc(2026, 2, 2)),
    ],
)
def test_rare_windows(cron: str, start: datetime) -> None:
    window = Window(cron=cron, duration="1h", timezone="UTC")
    assert next_window(window, utc(2026, 1, 1)) == (start, start + timedelta(hours=1))
