"""Maintenance windows: a cron start time, a duration, a time zone.

Start times follow cron as Debian's cron daemon runs it (the cronsim library): a start that
falls in the hour skipped when clocks go forward runs right after the jump, and a start in
the hour repeated when clocks go back runs once, at its first occurrence. A window's
duration is elapsed time, so a 4h window that spans a clock change still lasts 4 hours.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cronsim import CronSim

from patchpilot.errors import BadInputError
from patchpilot.plan.spec import Window

# Starts inspected before giving up; only reached by windows that overlap thousands of times.
_MAX_STARTS = 10_000


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    return now


def next_window(window: Window, now: datetime) -> tuple[datetime, datetime]:
    """The window that is open at `now`, or else the next one to open, as (start, end) in
    the window's time zone; end is exclusive. Where windows overlap, the one that opened
    first is returned."""
    zone = window.zone
    span = timedelta(seconds=window.duration)
    now_utc = _aware(now).astimezone(UTC)
    # Any window that is still open started after now - duration.
    starts = CronSim(window.cron, (now_utc - span).astimezone(zone))
    for _ in range(_MAX_STARTS):
        try:
            start = next(starts)
        except StopIteration:
            break
        start_utc = start.astimezone(UTC)
        end_utc = start_utc + span
        if end_utc > now_utc:
            return start_utc.astimezone(zone), end_utc.astimezone(zone)
    raise BadInputError(
        f"window cron {window.cron!r} has no start time after {now.isoformat()}",
        hint="check the day-of-month and month fields",
    )


def in_window(window: Window, now: datetime) -> bool:
    start, _end = next_window(window, now)
    # In UTC: two times in one zone compare by wall clock, blind to the repeated hour.
    return start.astimezone(UTC) <= now.astimezone(UTC)
