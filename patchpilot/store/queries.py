"""Read queries over the store. Keyword-only, each takes a session, returns plain rows."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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


@dataclass
class ComplianceRow:
    host: str
    reachable: bool
    last_seen: datetime | None
    missing_security: int
    oldest_days: int | None  # age of the oldest missing security update
    compliant: bool


def compliance(
    *, session: Session, now: datetime | None = None
) -> tuple[list[ComplianceRow], float]:
    """Per host: missing security updates and the age of the oldest (from its changelog date,
    else from when patchpilot first saw it); and the fleet's share of compliant hosts."""
    now = now or datetime.now(UTC)
    security: dict[int, list[PendingUpdate]] = {}
    for u in session.exec(select(PendingUpdate).where(col(PendingUpdate.security).is_(True))):
        security.setdefault(u.host_id, []).append(u)
    rows = []
    for host in session.exec(select(Host).order_by(col(Host.name))):
        sec = security.get(host.id or 0, [])
        ages = [(now - _aware(u.changelog_date or u.first_seen)).days for u in sec]
        rows.append(
            ComplianceRow(
                host.name,
                host.reachable,
                host.last_seen,
                len(sec),
                max(ages) if ages else None,
                not sec,
            )
        )
    pct = 100.0 * sum(r.compliant for r in rows) / len(rows) if rows else 100.0
    return rows, pct


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def update_age_days(update: PendingUpdate, now: datetime) -> int:
    """Days since the update came out (its changelog date), else since patchpilot first saw
    it: the age compliance counts."""
    return (now - _aware(update.changelog_date or update.first_seen)).days


def compliance_export(*, session: Session, now: datetime | None = None) -> list[dict[str, Any]]:
    """`compliance --csv`: one row per host and missing security update (one row with empty
    update columns for a compliant host), with the host's groups, OS, last boot and
    reachability, and the update's CVE ids, urgency, origin and age."""
    now = now or datetime.now(UTC)
    security: dict[int, list[PendingUpdate]] = {}
    stmt = select(PendingUpdate).where(col(PendingUpdate.security).is_(True))
    for u in session.exec(stmt.order_by(col(PendingUpdate.package))):
        security.setdefault(u.host_id, []).append(u)
    rows: list[dict[str, Any]] = []
    for host in session.exec(select(Host).order_by(col(Host.name))):
        base = {
            "host": host.name,
            "groups": " ".join(host.groups),
            "os": os_label(host),
            "reachable": host.reachable,
            "last_seen": host.last_seen,
            "last_boot": host.boot_time,
            "reboot_required": host.reboot_required,
        }
        updates = security.get(host.id or 0, [])
        if not updates:
            rows.append({**base, "compliant": True})
        for u in updates:
            rows.append(
                {
                    **base,
                    "compliant": False,
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
