"""Read queries over the store. Keyword-only, each takes a session, returns plain rows."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from sqlalchemy import case, func
from sqlmodel import Session, col, select

from patchpilot.store.models import Host, InstalledPackage, PendingUpdate, Service


@dataclass
class HostRow:
    name: str
    address: str | None
    groups: list[str]
    os: str
    kernel: str | None
    reachable: bool
    last_seen: datetime | None
    last_error: str | None
    pending: int
    security: int


def list_hosts(*, session: Session) -> list[HostRow]:
    counts = (
        select(
            PendingUpdate.host_id,
            func.count().label("pending"),
            func.sum(case((col(PendingUpdate.security), 1), else_=0)).label("security"),
        )
        .group_by(col(PendingUpdate.host_id))
        .subquery()
    )
    stmt = (
        select(Host, counts.c.pending, counts.c.security)
        .outerjoin(counts, counts.c.host_id == Host.id)
        .order_by(col(Host.name))
    )
    return [
        HostRow(
            h.name,
            h.address,
            list(h.groups),
            os_label(h),
            h.kernel,
            h.reachable,
            h.last_seen,
            h.last_error,
            int(p or 0),
            int(sec or 0),
        )
        for h, p, sec in session.exec(stmt)
    ]


def os_label(host: Host) -> str:
    parts = [host.distribution, host.distribution_version]
    label = " ".join(p for p in parts if p)
    if host.distribution_release:
        label += f" ({host.distribution_release})"
    return label or "unknown"


def get_host(*, session: Session, name: str) -> Host | None:
    return session.exec(select(Host).where(Host.name == name)).first()


def host_detail(*, session: Session, name: str) -> dict[str, Any] | None:
    host = get_host(session=session, name=name)
    if host is None:
        return None
    packages = session.exec(
        select(func.count())
        .select_from(InstalledPackage)
        .where(InstalledPackage.host_id == host.id)
    ).one()
    services = session.exec(
        select(Service).where(Service.host_id == host.id).order_by(col(Service.name))
    ).all()
    return {
        "host": host.model_dump(exclude={"id"}),
        "os": os_label(host),
        "installed_packages": packages,
        "services": [s.model_dump(exclude={"id", "host_id"}) for s in services],
        "pending_updates": update_rows(pending_updates(session=session, host=name)),
    }


def pending_updates(
    *,
    session: Session,
    host: str | None = None,
    security: bool | None = None,
    package: str | None = None,
) -> list[PendingUpdate]:
    stmt = select(PendingUpdate, Host.name).join(Host, col(Host.id) == PendingUpdate.host_id)
    if host is not None:
        stmt = stmt.where(Host.name == host)
    if security is not None:
        stmt = stmt.where(PendingUpdate.security == security)
    stmt = stmt.order_by(col(Host.name), col(PendingUpdate.package))
    rows = []
    for update, host_name in session.exec(stmt):
        if package and not fnmatch.fnmatchcase(update.package, package):
            continue
        update.__dict__["host_name"] = host_name  # for rendering; not a column
        rows.append(update)
    return rows


def update_rows(updates: list[PendingUpdate]) -> list[dict[str, Any]]:
    """Plain dicts of rows from pending_updates(), each with its host's name."""
    return [
        {**u.model_dump(exclude={"id", "host_id"}), "host": u.__dict__.get("host_name")}
        for u in updates
    ]


class ComplianceStatus(StrEnum):
    COMPLIANT = "compliant"  # gathered, reachable, no missing security update
    NON_COMPLIANT = "non-compliant"  # gathered, reachable, at least one missing
    UNKNOWN = "unknown"  # the store cannot tell: see UnknownReason


class UnknownReason(StrEnum):
    """Why a host's compliance is unknown."""

    NEVER_GATHERED = "never_gathered"  # no gather ever succeeded: there are no facts
    UNREACHABLE = "unreachable"  # unreachable at its last gather: its facts are older
    GATHER_FAILED = "gather_failed"  # its last gather failed: its facts are older

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


@dataclass
class ComplianceRow:
    """One host. For an unknown host, missing_security and oldest_days are what its last
    successful gather found (0 and None when it was never gathered); they do not judge it."""

    host: str
    reachable: bool
    last_seen: datetime | None  # the last successful gather
    missing_security: int
    oldest_days: int | None  # age of the oldest missing security update
    compliant: bool | None  # None: unknown
    status: ComplianceStatus
    unknown: UnknownReason | None = None
    reason: str | None = None  # why unknown, in words, with how old its data is


class FleetCompliance(NamedTuple):
    """Every host's row, and the share of compliant hosts among those that could be judged
    (None when none could: never 100% for hosts nobody looked at)."""

    rows: list[ComplianceRow]
    percent: float | None

    @property
    def judged(self) -> int:
        return sum(r.status != ComplianceStatus.UNKNOWN for r in self.rows)

    @property
    def unknown(self) -> int:
        return len(self.rows) - self.judged

    def unknown_by_reason(self) -> dict[UnknownReason, int]:
        """How many hosts are unknown for each reason (every reason, 0 included)."""
        counts = dict.fromkeys(UnknownReason, 0)
        for r in self.rows:
            if r.unknown is not None:
                counts[r.unknown] += 1
        return counts


def _stamp(d: datetime) -> str:
    return _aware(d).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def judge_host(host: Host) -> tuple[UnknownReason | None, str | None]:
    """Whether the store can judge the host's compliance: (None, None) when it can, else why
    not. It can when the host's last gather succeeded: it was reachable then and its pending
    updates are what that gather found."""
    if host.last_seen is None:
        if not host.reachable:
            return UnknownReason.NEVER_GATHERED, "never gathered: unreachable"
        if host.last_error:
            return UnknownReason.NEVER_GATHERED, "never gathered: the gather failed"
        return UnknownReason.NEVER_GATHERED, "never gathered"
    since = f"data from {_stamp(host.last_seen)}"
    if not host.reachable:
        return UnknownReason.UNREACHABLE, f"unreachable; {since}"
    if host.last_error:
        return UnknownReason.GATHER_FAILED, f"last gather failed; {since}"
    return None, None


def _status(
    host: Host, *, missing: bool
) -> tuple[ComplianceStatus, bool | None, UnknownReason | None, str | None]:
    """The host's status, compliant flag (None: unknown), and why unknown."""
    unknown, reason = judge_host(host)
    if unknown is not None:
        return ComplianceStatus.UNKNOWN, None, unknown, reason
    if missing:
        return ComplianceStatus.NON_COMPLIANT, False, None, None
    return ComplianceStatus.COMPLIANT, True, None, None


def _security_by_host(session: Session) -> dict[int, list[PendingUpdate]]:
    security: dict[int, list[PendingUpdate]] = {}
    stmt = select(PendingUpdate).where(col(PendingUpdate.security).is_(True))
    for u in session.exec(stmt.order_by(col(PendingUpdate.package))):
        security.setdefault(u.host_id, []).append(u)
    return security


def compliance(*, session: Session, now: datetime | None = None) -> FleetCompliance:
    """Per host: missing security updates and the age of the oldest (from its changelog date,
    else from when patchpilot first saw it), and whether it is compliant, non-compliant or
    unknown (see judge_host); and the fleet's share of compliant hosts among the judged."""
    now = now or datetime.now(UTC)
    security = _security_by_host(session)
    rows = []
    for host in session.exec(select(Host).order_by(col(Host.name))):
        sec = security.get(host.id or 0, [])
        ages = [update_age_days(u, now) for u in sec]
        status, compliant, unknown, reason = _status(host, missing=bool(sec))
        rows.append(
            ComplianceRow(
                host.name,
                host.reachable,
                host.last_seen,
                len(sec),
                max(ages) if ages else None,
                compliant,
                status,
                unknown,
                reason,
            )
        )
    judged = [r for r in rows if r.compliant is not None]
    pct = 100.0 * sum(bool(r.compliant) for r in judged) / len(judged) if judged else None
    return FleetCompliance(rows, pct)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def update_age_days(update: PendingUpdate, now: datetime) -> int:
    """Days since the update came out (its changelog date), else since patchpilot first saw
    it: the age compliance counts."""
    return (now - _aware(update.changelog_date or update.first_seen)).days


def compliance_export(*, session: Session, now: datetime | None = None) -> list[dict[str, Any]]:
    """`compliance --csv`: every host of the store, with its groups, OS, last boot,
    reachability, last seen, `status` (compliant, non-compliant, unknown), `reason` (why
    unknown, with how old its data is) and `compliant` (yes, no, or empty when unknown).

    One row per host and missing security update, with the update's CVE ids, urgency, origin
    and age. A compliant host has one row with the update columns empty. An unknown host is
    never left out nor counted compliant: it has one row per security update its last
    successful gather found, each marked unknown (what was missing then, not a judgement
    now), or one row with the update columns empty when that found none or it was never
    gathered."""
    now = now or datetime.now(UTC)
    security = _security_by_host(session)
    rows: list[dict[str, Any]] = []
    for host in session.exec(select(Host).order_by(col(Host.name))):
        updates = security.get(host.id or 0, [])
        status, compliant, _, reason = _status(host, missing=bool(updates))
        base = {
            "host": host.name,
            "groups": " ".join(host.groups),
            "os": os_label(host),
            "reachable": host.reachable,
            "last_seen": host.last_seen,
            "last_boot": host.boot_time,
            "reboot_required": host.reboot_required,
            "compliant": compliant,
            "status": status.value,
            "reason": reason,
        }
        if not updates:
            rows.append(base)
        for u in updates:
            rows.append(
                {
                    **base,
                    "package": u.package,
                    "source": u.source,
                    "installed_version": u.installed_version,
                    "candidate_version": u.candidate_version,
                    "origin": u.origin,
                    "urgency": u.urgency,
                    "cve_ids": list(u.cve_ids),
                    "age_days": update_age_days(u, now),
                    "first_seen": u.first_seen,
                    "changelog_date": u.changelog_date,
                }
            )
    return rows
