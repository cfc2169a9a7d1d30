"""The training table: one row per advisory (its first revision) with the facts the features
need and its label. Built reproducibly from the tracker's lists (`patchpilot risk build-prior`)
and shipped inside the package as patchpilot/risk/data/advisories.csv.gz."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from debian.debian_support import Version

from patchpilot.errors import BadInputError
from patchpilot.patches import upstream_version
from patchpilot.risk.advisories import Advisory, AdvisoryRevision, label_advisories
from patchpilot.risk.features import HistoryEvent, package_family, reboot_implied

TABLE_COLUMNS = (
    "advisory",
    "list",
    "date",
    "package",
    "cves",
    "releases",
    "version",
    "upstream_changed",
    "regression",
    "regression_date",
)
# Titles follow the "regression update" convention from 2014 on; earlier ones are free text.
TRAIN_FROM = date(2014, 1, 1)
_NEW_UPSTREAM_REVISION = re.compile(r"^[01](?:[~+].*)?$")


def _upstream(version: str) -> str | None:
    try:
        return upstream_version(version)
    except ValueError:
        return None


def _revision_says_new_upstream(version: str) -> bool | None:
    """'1.1.1d-0+deb10u3' / '4.19.98-1' packaged a new upstream release; '2.4.10-10+deb8u11'
    is a backported fix. Native versions (no revision) say nothing."""
    try:
        rev = Version(version).debian_revision
    except ValueError:
        return None
    if not rev:
        return None
    return bool(_NEW_UPSTREAM_REVISION.match(str(rev)))


def build_table(revisions: Iterable[AdvisoryRevision]) -> pd.DataFrame:
    """Advisories oldest first. `upstream_changed` compares the fixed version with the
    previous advisory's version of the same package and release (an earlier item, so no
    leakage); with no earlier one it falls back to what the Debian revision says."""
    last_version: dict[tuple[str, str], str] = {}
    rows = []
    advisories: list[Advisory] = list(label_advisories(revisions))
    for adv in advisories:
        changed: bool | None = None
        for release, version in zip(adv.releases, adv.versions, strict=False):
            prev = last_version.get((adv.package, release))
            if prev is not None:
                a, b = _upstream(prev), _upstream(version)
                if a is not None and b is not None:
                    changed = bool(changed) or a != b
        if changed is None and adv.versions:
            changed = _revision_says_new_upstream(adv.versions[0])
        for release, version in zip(adv.releases, adv.versions, strict=False):
            last_version[(adv.package, release)] = version
        rows.append(
            {
                "advisory": adv.advisory,
                "list": adv.series,
                "date": adv.published.isoformat(),
                "package": adv.package,
                "cves": adv.cves,
                "releases": " ".join(adv.releases),
                "version": adv.versions[0] if adv.versions else "",
                "upstream_changed": "" if changed is None else int(changed),
                "regression": int(adv.regression),
                "regression_date": adv.regression_date.isoformat() if adv.regression_date else "",
            }
        )
    return _typed(pd.DataFrame(rows, columns=list(TABLE_COLUMNS)))


def build_table_from_lists(lists: Iterable[list[AdvisoryRevision]]) -> pd.DataFrame:
    revisions: list[AdvisoryRevision] = []
    for entries in lists:
        revisions.extend(entries)
    return build_table(revisions)


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["date"] = pd.to_datetime(df["date"]).dt.date
    rd = df["regression_date"].replace("", None)
    df["regression_date"] = [
        None if v is None or pd.isna(v) else pd.Timestamp(v).date() for v in rd
    ]
    up = df["upstream_changed"].replace("", None)
    df["upstream_changed"] = [None if v is None or pd.isna(v) else bool(int(v)) for v in up]
    df["cves"] = df["cves"].astype(int)
    df["regression"] = df["regression"].astype(int)
    df["version"] = df["version"].fillna("").astype(str)
    df["releases"] = df["releases"].fillna("").astype(str)
    return df.sort_values(["date", "list", "advisory"], kind="stable").reset_index(drop=True)


def write_table(df: pd.DataFrame, path: Path) -> None:
    out = df.copy()
    out["date"] = [d.isoformat() for d in out["date"]]
    out["regression_date"] = [d.isoformat() if d else "" for d in out["regression_date"]]
    out["upstream_changed"] = ["" if v is None else int(v) for v in out["upstream_changed"]]
    out.to_csv(path, index=False, compression={"method": "gzip", "mtime": 0})


def read_table(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise BadInputError(
            f"cannot read advisory table {path}: {exc}",
            hint="rebuild it with `patchpilot risk build-prior`",
        ) from exc
    missing = set(TABLE_COLUMNS) - set(df.columns)
    if missing:
        raise BadInputError(
            f"{path}: not an advisory table (missing {', '.join(sorted(missing))})",
            hint="rebuild it with `patchpilot risk build-prior`",
        )
    return _typed(df)


def shipped_table() -> pd.DataFrame:
    ref = resources.files("patchpilot.risk") / "data" / "advisories.csv.gz"
    with resources.as_file(ref) as path:
        return read_table(path)


def training_rows(df: pd.DataFrame, *, until: date, since: date = TRAIN_FROM) -> pd.DataFrame:
    """Advisories dated in [since, until), labelled as known on `until` (a regression fixed
    only later is not yet a regression then)."""
    mask = (df["date"] >= since) & (df["date"] < until)
    rows = df[mask].copy()
    known = np.array([rd is not None and rd < until for rd in rows["regression_date"]])
    rows["label"] = (rows["regression"].to_numpy() == 1) & known
    rows["label"] = rows["label"].astype(int)
    return rows


def advisory_items(df: pd.DataFrame) -> pd.DataFrame:
    """Advisory rows as model items (the raw columns `design_columns` reads)."""
    return pd.DataFrame(
        {
            "package": df["package"].to_numpy(),
            "date": df["date"].to_numpy(),
            "version": df["version"].to_numpy(),
            "cves": df["cves"].to_numpy(),
            "upstream_changed": df["upstream_changed"].to_numpy(),
            "urgency": [None] * len(df),
            "entries": [np.nan] * len(df),
            "reboot": [reboot_implied(p) for p in df["package"]],
        },
        index=df.index,
    )


def advisory_events(df: pd.DataFrame, *, until: date | None = None) -> list[HistoryEvent]:
    """History events from advisories dated before `until` (all when None)."""
    events = []
    for pkg, d, reg, rd in zip(
        df["package"], df["date"], df["regression"], df["regression_date"], strict=True
    ):
        if until is not None and d >= until:
            continue
        known = rd if reg and rd is not None and (until is None or rd < until) else None
        events.append(HistoryEvent(package_family(pkg), d, known is not None, known))
    return events
