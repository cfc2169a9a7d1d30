"""Durations as plans write them ('90s', '10m', '1h30m', '2d'), with the standard library
only: the warm start reads them from a frozen plan before the rest of patchpilot loads."""

from __future__ import annotations

import re

MAX_DURATION_SECONDS = 366 * 86400
_DURATION_RE = re.compile(r"(?:(\d{1,6})d)?(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,8})s)?")
_DURATION_UNITS = (86400, 3600, 60, 1)


def parse_duration(value: object) -> int:
    """Seconds from '90s', '10m', '1h30m', '2d' (units in that order), or an int of seconds.

    Integers are accepted so a plan written back out (frozen plans) reads in again."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif (
        isinstance(value, str) and (m := _DURATION_RE.fullmatch(value.strip())) and any(m.groups())
    ):
        seconds = sum(
            int(g) * unit for g, unit in zip(m.groups(), _DURATION_UNITS, strict=True) if g
        )
    else:
        raise ValueError(
            f"invalid duration {value!r}: use a number with units d, h, m, s in that order,"
            " e.g. 90s, 10m, 1h30m, 2d"
        )
    if seconds < 0 or seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {value!r} is out of range (0s to 366d)")
    return seconds


def format_duration(seconds: int) -> str:
    """The canonical spelling, so a dumped plan reads like the one written by hand."""
    if seconds == 0:
        return "0s"
    parts = []
    for unit, suffix in zip(_DURATION_UNITS, "dhms", strict=True):
        n, seconds = divmod(seconds, unit)
        if n:
            parts.append(f"{n}{suffix}")
    return "".join(parts)
