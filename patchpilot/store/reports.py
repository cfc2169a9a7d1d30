"""The queries the reports and the metrics need: column rows, not ORM objects, so a fleet
report over thousands of runs stays fast (bench/report.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as columns
from sqlmodel import Session, col, select

from patchpilot.store.models import (
    Host,
    PatchOutcome,
    PendingUpdate,
    Run,
    RunHost,
    RunStep,
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


def patched_hosts(
    session: Session, run_ids: set[str]
) -> list[tuple[str, str, str, datetime | None]]:
    """(run id, host, state, patched at) of every host a run got to."""
    stmt = select(RunHost.run_id, RunHost.host, RunHost.status, RunHost.patched_at).where(
        col(RunHost.patched_at).is_not(None)
    )
    # Core rows, not ORM ones: a long history has hundreds of thousands of them.
    rows = session.connection().execute(stmt)
    return [(r[0], r[1], r[2], aware(r[3])) for r in rows if r[0] in run_ids]


def outcomes_by_run(session: Session, run_ids: set[str]) -> dict[str, list[tuple[str, str, str]]]:
    """Per run: (host, package, outcome) of each patch it recorded for the risk model."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    stmt = select(
        PatchOutcome.run_id, PatchOutcome.host, PatchOutcome.package, PatchOutcome.outcome
    )
    for run_id, host, package, outcome in session.connection().execute(stmt):
        if run_id in run_ids:
            out.setdefault(run_id, []).append((host, package, outcome))
    return out


def planned_updates(session: Session, run_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Per run: its frozen plan's hosts, each with its updates (security flag, risk score)."""
    out: dict[str, list[dict[str, Any]]] = {}
    # Only the plan's hosts leave the database: the rest of a frozen plan (its spec and
    # inventory snapshot) is most of its size.
    hosts = col(Run.plan)["expansion"]["hosts"]
    for run_id, planned in session.connection().execute(columns(col(Run.id), hosts)):
        if run_id in run_ids:
            out[run_id] = list(planned or [])
    return out


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
