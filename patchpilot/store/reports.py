"""The queries the reports and the metrics need: column rows, not ORM objects, so a fleet
report over thousands of runs stays fast (bench/report.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, func
from sqlalchemy import select as columns
from sqlmodel import Session, col, select

from patchpilot.run.states import HostState, Outcome
from patchpilot.store.models import (
    Host,
    PatchOutcome,
    PendingUpdate,
    Run,
    RunHost,
    RunStep,
    RunUpdate,
    RunVerdict,
)

# The journal steps the fleet figures are made of.
TIMED_STEPS = ("patch", "rollback", "verify", "pause", "approve")


def aware(d: datetime | None) -> datetime | None:
    """SQLite gives datetimes back without their zone; the store writes UTC."""
    if d is None:
        return None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


@dataclass
class RunRow:
    id: str
    plan: str
    status: str
    check_mode: bool
    shadow: bool
    emergency: bool
    started_at: datetime
    finished_at: datetime | None


@dataclass
class StepRow:
    run_id: str
    stage: int | None
    batch: int | None
    kind: str
    state: str
    started_at: datetime
    finished_at: datetime | None


@dataclass
class VerdictRow:
    run_id: str
    stage: int
    batch: int
    verdict: str
    action: str
    shadow: bool
    created_at: datetime


def runs_since(session: Session, since: datetime | None) -> list[RunRow]:
    """Runs started at or after `since` (all when None), oldest first."""
    stmt = columns(
        col(Run.id),
        col(Run.plan_name),
        col(Run.status),
        col(Run.check_mode),
        col(Run.shadow),
        col(Run.emergency),
        col(Run.started_at),
        col(Run.finished_at),
    ).order_by(col(Run.started_at))
    if since is not None:
        stmt = stmt.where(col(Run.started_at) >= since.astimezone(UTC))
    return [
        RunRow(r[0], r[1], r[2], r[3], r[4], r[5], aware(r[6]) or r[6], aware(r[7]))
        for r in session.execute(stmt)
    ]


def host_state_counts(session: Session, run_ids: set[str]) -> dict[str, dict[str, int]]:
    """Per run: how many of its hosts are in each state."""
    stmt = select(RunHost.run_id, RunHost.status, func.count()).group_by(
        col(RunHost.run_id), col(RunHost.status)
    )
    out: dict[str, dict[str, int]] = {}
    for run_id, status, n in session.exec(stmt):
        if run_id in run_ids:
            out.setdefault(run_id, {})[status] = int(n)
    return out


def timed_steps(session: Session, run_ids: set[str]) -> list[StepRow]:
    stmt = (
        columns(
            col(RunStep.run_id),
            col(RunStep.stage),
            col(RunStep.batch),
            col(RunStep.kind),
            col(RunStep.state),
            col(RunStep.started_at),
            col(RunStep.finished_at),
        )
        .where(col(RunStep.kind).in_(TIMED_STEPS))
        .order_by(col(RunStep.id))
    )
    return [
        StepRow(r[0], r[1], r[2], r[3], r[4], aware(r[5]) or r[5], aware(r[6]))
        for r in session.execute(stmt)
        if r[0] in run_ids
    ]


def verdict_rows(session: Session, run_ids: set[str]) -> list[VerdictRow]:
    stmt = columns(
        col(RunVerdict.run_id),
        col(RunVerdict.stage),
        col(RunVerdict.batch),
        col(RunVerdict.verdict),
        col(RunVerdict.action),
        col(RunVerdict.shadow),
        col(RunVerdict.created_at),
    ).order_by(col(RunVerdict.id))
    return [
        VerdictRow(r[0], r[1], r[2], r[3], r[4], r[5], aware(r[6]) or r[6])
        for r in session.execute(stmt)
        if r[0] in run_ids
    ]


def security_patched(session: Session, run_ids: set[str]) -> list[tuple[str, str, datetime, int]]:
    """(run id, host, patched at, n): each host a run left healthy, with the number of
    security updates its plan gave it (none: not listed)."""
    stmt = (
        columns(col(RunHost.run_id), col(RunHost.host), col(RunHost.patched_at), func.count())
        .join(
            RunUpdate,
            (col(RunUpdate.run_id) == col(RunHost.run_id)) & (col(RunUpdate.host) == RunHost.host),
        )
        .where(
            col(RunHost.status) == HostState.HEALTHY,
            col(RunHost.patched_at).is_not(None),
            col(RunUpdate.security).is_(True),
        )
        .group_by(col(RunHost.run_id), col(RunHost.host), col(RunHost.patched_at))
    )
    # Core rows, not ORM ones: a long history has hundreds of thousands of them.
    out = []
    for run_id, host, at, n in session.connection().execute(stmt):
        if run_id in run_ids and at is not None:  # never None: the query asks for it
            out.append((run_id, host, at if at.tzinfo else at.replace(tzinfo=UTC), int(n)))
    return out


@dataclass
class CalibrationCell:
    """The patches of one probability bin (None: unscored) that went wrong, or not."""

    bin: int | None
    went_wrong: bool
    n: int = 0
    sum_p: float = 0.0  # of the predicted probabilities
    sum_sq: float = 0.0  # of (probability - went wrong)^2, for the Brier score


def calibration_cells(
    session: Session, run_ids: set[str], edges: Sequence[float]
) -> list[CalibrationCell]:
    """Each patch a run recorded for the risk model, with the probability its plan gave that
    update on that host, counted in the database per bin (`edges[i] <= p < edges[i+1]`, the
    last bin closed) and outcome: a long history never leaves it row by row."""
    planned = (
        columns(
            col(RunUpdate.run_id),
            col(RunUpdate.host),
            col(RunUpdate.package),
            func.max(col(RunUpdate.probability)).label("p"),
        )
        .group_by(col(RunUpdate.run_id), col(RunUpdate.host), col(RunUpdate.package))
        .subquery()
    )
    p = planned.c.p
    bin_ = case(
        (p.is_(None), -1),
        *((p < hi, i) for i, hi in enumerate(edges[1:-1])),
        else_=len(edges) - 2,
    )
    bad = case((col(PatchOutcome.outcome) == Outcome.HEALTHY, 0), else_=1)
    stmt = (
        columns(
            col(PatchOutcome.run_id),
            bin_,
            bad,
            func.count(),
            func.sum(p),
            func.sum((p - bad) * (p - bad)),
        )
        .select_from(PatchOutcome)
        .outerjoin(
            planned,
            (planned.c.run_id == col(PatchOutcome.run_id))
            & (planned.c.host == col(PatchOutcome.host))
            & (planned.c.package == col(PatchOutcome.package)),
        )
        .group_by(col(PatchOutcome.run_id), bin_, bad)
    )
    cells: dict[tuple[int | None, bool], CalibrationCell] = {}
    for run_id, b, wrong, n, sum_p, sum_sq in session.connection().execute(stmt):
        if run_id not in run_ids:
            continue
        key = (None if b < 0 else int(b), bool(wrong))
        cell = cells.setdefault(key, CalibrationCell(*key))
        cell.n += int(n)
        cell.sum_p += float(sum_p or 0.0)
        cell.sum_sq += float(sum_sq or 0.0)
    return list(cells.values())


@dataclass
class SecurityUpdateRow:
    host: str
    groups: list[str]
    os: str
    package: str
    candidate_version: str
    first_seen: datetime
    since: datetime  # the changelog date when known, else first_seen


def pending_security(session: Session) -> list[SecurityUpdateRow]:
    from patchpilot.store.queries import os_label

    stmt = (
        select(PendingUpdate, Host)
        .join(Host, col(Host.id) == PendingUpdate.host_id)
        .where(col(PendingUpdate.security).is_(True))
    )
    rows = []
    for u, h in session.exec(stmt):
        first = aware(u.first_seen) or u.first_seen
        rows.append(
            SecurityUpdateRow(
                h.name,
                list(h.groups),
                os_label(h),
                u.package,
                u.candidate_version,
                first,
                aware(u.changelog_date) or first,
            )
        )
    return rows


def host_labels(session: Session) -> dict[str, tuple[list[str], str]]:
    """Every known host's groups and OS release label."""
    from patchpilot.store.queries import os_label

    return {h.name: (list(h.groups), os_label(h)) for h in session.exec(select(Host))}
