"""The Debian security tracker's advisory lists (data/DSA/list, data/DLA/list), parsed, and
labelled as the training data's README defines: an advisory's first revision caused a
regression when a later revision of the same number carries "regression" in its title."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from patchpilot.errors import BadInputError

_HEADER = re.compile(
    r"^\[(?P<date>\d{1,2} [A-Z][a-z]{2} \d{4})\]\s+"
    r"(?P<id>D[SL]A-\d+)(?:-(?P<rev>\d+))?\s+(?P<rest>.*)$"
)
_RELEASE_LINE = re.compile(r"^\s+\[(?P<release>[a-z-]+)\]\s+-\s+(?P<pkg>\S+)(?:\s+(?P<ver>\S+))?")
_CVES = re.compile(r"^\s+\{(?P<ids>[^}]*)\}")
_CVE_ID = re.compile(r"CVE-\d{4}-\d+")


@dataclass
class AdvisoryRevision:
    """One entry of a list: an advisory number's revision, as published."""

    series: str  # DSA or DLA
    number: str  # DSA-4539
    revision: int  # 1 for DSA-4539-1; 1 for old entries without a revision
    published: date
    package: str
    title: str
    cves: list[str] = field(default_factory=list)
    fixes: list[tuple[str, str, str | None]] = field(default_factory=list)  # release, pkg, ver

    @property
    def is_regression_fix(self) -> bool:
        return "regression" in self.title.lower()


@dataclass(frozen=True)
class Advisory:
    """An advisory's first revision with its label: what the risk model learns from."""

    advisory: str  # DSA-4539-1
    series: str
    published: date
    package: str
    cves: int
    releases: tuple[str, ...]
    versions: tuple[str, ...]  # fixed versions, one per release line of this package
    regression: bool
    regression_date: date | None  # when the regression became known (first fix revision)


def _parse_date(text: str, where: str) -> date:
    try:
        return datetime.strptime(text, "%d %b %Y").date()
    except ValueError as exc:
        raise BadInputError(
            f"{where}: unreadable date {text!r}",
            hint="entries start like '[17 Mar 2023] DSA-5356-2 sox - regression update'",
        ) from exc


def parse_advisory_list(lines: Iterable[str], *, source: str = "<list>") -> list[AdvisoryRevision]:
    """Every entry of a DSA or DLA list. Notices without a fixed package (end-of-life
    announcements, key changes) have no package lines and are dropped."""
    entries: list[AdvisoryRevision] = []
    current: AdvisoryRevision | None = None
    seen_header = False
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        m = _HEADER.match(line)
        if m:
            seen_header = True
            if current is not None and current.fixes:
                entries.append(current)
            rest = m.group("rest").strip()
            pkg, _, title = rest.partition(" ")
            title = title.strip().lstrip("-").strip()
            number = m.group("id")
            current = AdvisoryRevision(
                series=number[:3],
                number=number,
                revision=int(m.group("rev") or 1),
                published=_parse_date(m.group("date"), f"{source}:{lineno}"),
                package=pkg,
                title=title,
            )
            continue
        if line.startswith("["):
            raise BadInputError(
                f"{source}:{lineno}: not an advisory header: {line[:60]!r}",
                hint="is this the security tracker's data/DSA/list or data/DLA/list?",
            )
        if current is None:
            continue
        c = _CVES.match(line)
        if c:
            current.cves.extend(_CVE_ID.findall(c.group("ids")))
            continue
        r = _RELEASE_LINE.match(line)
        if r:
            current.fixes.append((r.group("release"), r.group("pkg"), r.group("ver")))
    if current is not None and current.fixes:
        entries.append(current)
    if not seen_header:
        raise BadInputError(
            f"{source}: no advisory entries found",
            hint="expected the security tracker's data/DSA/list or data/DLA/list format",
        )
    return entries


def read_advisory_list(path: Path) -> list[AdvisoryRevision]:
    """A list file, plain or gzip-compressed."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
                return parse_advisory_list(fh, source=str(path))
        with path.open(encoding="utf-8", errors="replace") as fh:
            return parse_advisory_list(fh, source=str(path))
    except OSError as exc:
        raise BadInputError(
            f"cannot read advisory list {path}: {exc.strerror or exc}",
            hint="download it from https://salsa.debian.org/security-tracker-team/"
            "security-tracker/-/raw/master/data/DSA/list (or .../DLA/list)",
        ) from exc


def label_advisories(revisions: Iterable[AdvisoryRevision]) -> Iterator[Advisory]:
    """First revisions with their labels, oldest first. A number without a first revision in
    the list (cut off at the start) is skipped."""
    by_number: dict[str, list[AdvisoryRevision]] = {}
    for rev in revisions:
        by_number.setdefault(rev.number, []).append(rev)
    out: list[Advisory] = []
    for number, revs in by_number.items():
        firsts = [r for r in revs if r.revision == 1]
        if not firsts:
            continue
        first = min(firsts, key=lambda r: r.published)
        fixes = [r for r in revs if r.revision > 1 and r.is_regression_fix]
        regression_date = min((r.published for r in fixes), default=None)
        own = [(rel, ver) for rel, pkg, ver in first.fixes if pkg == first.package]
        if not own:
            own = [(rel, ver) for rel, _pkg, ver in first.fixes]
        out.append(
            Advisory(
                advisory=f"{number}-{first.revision}",
                series=first.series,
                published=first.published,
                package=first.package,
                cves=len(set(first.cves)),
                releases=tuple(rel for rel, _ in own),
                versions=tuple(ver for _, ver in own if ver),
                regression=regression_date is not None,
                regression_date=regression_date,
            )
        )
    out.sort(key=lambda a: (a.published, a.series, int(a.advisory.split("-")[1])))
    return iter(out)
