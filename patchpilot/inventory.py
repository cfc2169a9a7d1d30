"""Fact gathering: run playbooks/gather.yml, normalise what each host reports, and write it to
the store in one transaction per host, as each host finishes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Table, delete, insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from patchpilot.errors import BadInputError
from patchpilot.ops import executor
from patchpilot.patches import ROLLBACK_SOURCES, validate_package_name, validate_version
from patchpilot.store.db import session_scope
from patchpilot.store.models import GatherRun, Host, InstalledPackage, PendingUpdate, Service

log = logging.getLogger(__name__)

PENDING_ACTION = "patchpilot_pending"
FINAL_ACTION = PENDING_ACTION  # the last task of gather.yml: its result completes a host


@dataclass
class HostFacts:
    """One host's facts, normalised from the gather playbook's task results."""

    name: str
    address: str | None = None
    groups: list[str] = field(default_factory=list)
    os_family: str | None = None
    distribution: str | None = None
    distribution_version: str | None = None
    distribution_release: str | None = None
    kernel: str | None = None
    architecture: str | None = None
    package_manager: str | None = None
    boot_time: datetime | None = None
    boot_id: str | None = None
    uptime_seconds: int | None = None
    reboot_required: bool = False
    packages: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class GatherSummary:
    run_id: int
    total: int
    ok: list[str] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    forks: int | None = None  # what Ansible said it ran with


def normalize_host(
    name: str,
    results: dict[str, dict[str, Any]],
    *,
    address: str | None = None,
    groups: list[str] | tuple[str, ...] = (),
) -> HostFacts:
    """Turn the results of gather.yml's tasks (keyed by module name) into HostFacts."""
    facts: dict[str, Any] = {}
    for action in (
        "ansible.builtin.setup",
        "ansible.builtin.package_facts",
        "ansible.builtin.service_facts",
    ):
        facts.update(results.get(action, {}).get("ansible_facts", {}))
    pending = results.get(PENDING_ACTION, {})
    boot = pending.get("boot_time")
    hf = HostFacts(
        name=name,
        address=address,
        groups=list(groups),
        os_family=facts.get("ansible_os_family"),
        distribution=facts.get("ansible_distribution"),
        distribution_version=facts.get("ansible_distribution_version"),
        distribution_release=facts.get("ansible_distribution_release"),
        kernel=facts.get("ansible_kernel"),
        architecture=facts.get("ansible_architecture"),
        package_manager=pending.get("package_manager") or facts.get("ansible_pkg_mgr"),
        boot_time=datetime.fromtimestamp(boot, UTC) if isinstance(boot, int | float) else None,
        boot_id=pending.get("boot_id"),
        uptime_seconds=pending.get("uptime_seconds"),
        reboot_required=bool(pending.get("reboot_required")),
    )
    for pkg_name, versions in (facts.get("packages") or {}).items():
        for v in versions:
            hf.packages.append(
                {
                    "name": pkg_name,
                    "version": _full_version(v),
                    "arch": v.get("arch") or "",
                    "source": v.get("source"),
                }
            )
    for svc_name, svc in (facts.get("services") or {}).items():
        if svc.get("status") == "not-found":
            continue
        hf.services.append(
            {"name": svc_name, "state": svc.get("state") or "unknown", "enabled": svc.get("status")}
        )
    for u in pending.get("updates") or []:
        hf.updates.append(_normalize_update(name, u))
    return hf


def _full_version(v: dict[str, Any]) -> str:
    """apt reports the full Debian version; rpm splits epoch, version and release."""
    version = str(v.get("version") or "")
    if v.get("release"):
        version = f"{version}-{v['release']}"
    if v.get("epoch") not in (None, "", 0, "0"):
        version = f"{v['epoch']}:{version}"
    return version


def _normalize_update(host: str, u: dict[str, Any]) -> dict[str, Any]:
    # What a host reports is validated like any input before it can reach a command later.
    name = validate_package_name(str(u.get("package", "")), where=f"{host}: pending update")
    date = u.get("changelog_date")
    return {
        "package": name,
        "arch": u.get("arch") or "",
        "installed_version": validate_version(
            str(u.get("installed") or ""), where=f"{host}: {name}"
        ),
        "candidate_version": validate_version(
            str(u.get("candidate") or ""), where=f"{host}: {name}"
        ),
        "source": u.get("source"),
        "origin": u.get("origin"),
        "security": bool(u.get("security")),
        "held": bool(u.get("held")),
        "reboot_needed": bool(u.get("reboot_needed")),
        **_rollback_facts(u.get("rollback")),
        "cve_ids": list(u.get("cve_ids") or []),
        "urgency": u.get("urgency"),
        "changelog_entries": u.get("changelog_entries"),
        "upstream_changed": u.get("upstream_changed"),
        "changelog_date": datetime.fromisoformat(date) if isinstance(date, str) else None,
    }


def _rollback_facts(value: Any) -> dict[str, str | None]:
    """Where a pending update's rollback artifact will come from, as the host reported it:
    a known word or nothing, and a bounded one-line note (hosts are untrusted)."""
    if not isinstance(value, dict) or value.get("source") not in ROLLBACK_SOURCES:
        return {"rollback_source": None, "rollback_note": None}
    note = value.get("reason")
    text = "".join(ch for ch in str(note) if ch.isprintable())[:300] if note else None
    return {"rollback_source": str(value["source"]), "rollback_note": text}


def _table(model: type[SQLModel]) -> Table:
    return model.__table__  # type: ignore[attr-defined]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _host_row(session: Session, name: str) -> Host:
    host = session.exec(select(Host).where(Host.name == name)).first()
    return host if host is not None else Host(name=name)


def ingest_host(session: Session, facts: HostFacts, *, now: datetime | None = None) -> Host:
    """Replace a host's facts with these; pending updates keep the date they were first seen."""
    now = now or utcnow()
    host = _host_row(session, facts.name)
    for attr in (
        "address",
        "os_family",
        "distribution",
        "distribution_version",
        "distribution_release",
        "kernel",
        "architecture",
        "package_manager",
        "boot_time",
        "boot_id",
        "uptime_seconds",
        "reboot_required",
    ):
        setattr(host, attr, getattr(facts, attr))
    host.groups = list(facts.groups)
    host.reachable, host.last_seen, host.last_error, host.updated_at = True, now, None, now
    session.add(host)
    session.flush()
    host_id = host.id
    # Core statements on the session's connection: the ORM's bulk path costs several times more
    # and this runs once per host per gather (10,000 hosts: bench/ingest.py).
    conn = session.connection()
    pu, packages, services = _table(PendingUpdate), _table(InstalledPackage), _table(Service)
    first_seen = {
        (row.package, row.arch, row.candidate_version): row.first_seen
        for row in conn.execute(
            select(pu.c.package, pu.c.arch, pu.c.candidate_version, pu.c.first_seen).where(
                pu.c.host_id == host_id
            )
        )
    }
    for table in (packages, services, pu):
        conn.execute(delete(table).where(table.c.host_id == host_id))
    if facts.packages:
        conn.execute(insert(packages), [{"host_id": host_id, **p} for p in facts.packages])
    if facts.services:
        conn.execute(insert(services), [{"host_id": host_id, **s} for s in facts.services])
    if facts.updates:
        conn.execute(
            insert(pu),
            [
                {
                    "host_id": host_id,
                    **u,
                    "first_seen": first_seen.get(
                        (u["package"], u["arch"], u["candidate_version"]), now
                    ),
                }
                for u in facts.updates
            ],
        )
    return host


def record_failure(
    session: Session,
    name: str,
    message: str,
    *,
    unreachable: bool,
    address: str | None = None,
    groups: list[str] | tuple[str, ...] = (),
    now: datetime | None = None,
) -> Host:
    """Note the error; the host's earlier facts stay as they were."""
    host = _host_row(session, name)
    if host.id is None:
        host.address, host.groups = address, list(groups)
    host.reachable = not unreachable
    host.last_error = message
    host.updated_at = now or utcnow()
    session.add(host)
    return host


def gather(
    engine_factory: Callable[[], Engine],
    inventory: str | Path,
    *,
    limit: str | None = None,
    forks: int | None = None,
    refresh: bool = True,
    on_host_done: Callable[[str, str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> GatherSummary:
    """Gather facts from the inventory's hosts (or those `limit` selects) into the store.

    Everything the user gave is checked before the store is opened, so bad input writes
    nothing."""
    inv_hosts = {h.name: h for h in executor.list_inventory(inventory)}
    if not inv_hosts:
        raise BadInputError(
            f"the inventory {inventory} has no hosts",
            hint="check it with `ansible-inventory -i INVENTORY --list`",
        )
    names = sorted(inv_hosts)
    if limit:
        names = executor.match_hosts(inventory, "all", limit=limit)  # Ansible's --limit, @FILE too
        if not names:
            raise BadInputError(
                f"no host of {inventory} matches {limit!r}",
                hint=f"hosts there: {', '.join(sorted(inv_hosts)[:10])}",
            )
    if forks is not None and forks < 1:
        raise BadInputError("--forks must be at least 1")
    engine = engine_factory()
    with session_scope(engine) as s:
        run = GatherRun(inventory=str(inventory), limit=limit, hosts_total=len(names))
        s.add(run)
        s.flush()
        assert run.id is not None
        run_id = run.id
    summary = GatherSummary(run_id=run_id, total=len(names))
    if on_start:
        on_start(len(names))
    pending: dict[str, dict[str, dict[str, Any]]] = {}
    done: set[str] = set()

    def finish(host: str, status: str, message: str | None = None) -> None:
        inv = inv_hosts.get(host)
        addr, groups = (inv.address, inv.groups) if inv else (None, ())
        try:
            with session_scope(engine) as s:
                if status == "ok":
                    facts = normalize_host(host, pending.pop(host, {}), address=addr, groups=groups)
                    ingest_host(s, facts)
                else:
                    record_failure(
                        s,
                        host,
                        message or status,
                        unreachable=status == "unreachable",
                        address=addr,
                        groups=groups,
                    )
        except BadInputError as exc:  # the host reported something we refuse to store
            status, message = "failed", exc.message
            with session_scope(engine) as s:
                record_failure(s, host, message, unreachable=False, address=addr, groups=groups)
        done.add(host)
        if status == "ok":
            summary.ok.append(host)
        elif status == "unreachable":
            summary.unreachable[host] = message or ""
        else:
            summary.failed[host] = message or ""
        if on_host_done:
            on_host_done(host, status)

    def on_event(ev: executor.HostEvent) -> None:
        forks = executor.reported_forks(ev)
        if forks is not None:
            summary.forks = forks
            return
        if ev.host in done:
            return
        if ev.kind == "ok":
            pending.setdefault(ev.host, {})[ev.action] = ev.result
            if ev.action == FINAL_ACTION:
                finish(ev.host, "ok")
        elif ev.kind in ("failed", "unreachable"):
            pending.pop(ev.host, None)
            finish(ev.host, ev.kind, ev.message)

    status = "failed"
    try:
        executor.run_playbook(
            "gather.yml",
            inventory,
            hosts=names,
            forks=forks,
            extravars={"patchpilot_refresh_cache": refresh},
            on_event=on_event,
        )
        for host in names:
            if host not in done:
                finish(host, "failed", "the gather playbook returned no result for this host")
        status = "done"
    finally:
        with session_scope(engine) as s:
            record = s.get(GatherRun, run_id)
            if record is not None:
                record.finished_at = utcnow()
                record.hosts_ok = len(summary.ok)
                record.hosts_unreachable = len(summary.unreachable)
                record.hosts_failed = len(summary.failed)
                record.status = status
                s.add(record)
    return summary
