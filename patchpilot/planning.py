"""From a plan file, an inventory and the store to an expanded, frozen plan: the one place
where plan expansion meets the fleet's facts and risk scores."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from patchpilot.errors import BadInputError
from patchpilot.ops import executor
from patchpilot.plan.expand import ExpandedPlan, PlanHost, PlanUpdate, expand_plan
from patchpilot.plan.frozen import freeze, inventory_snapshot
from patchpilot.plan.load import load_plan
from patchpilot.plan.spec import PlanSpec
from patchpilot.planfile import is_frozen
from patchpilot.risk.types import RiskScore
from patchpilot.store.db import session_scope
from patchpilot.store.models import Host, PendingUpdate

if TYPE_CHECKING:  # the risk model (pandas, scikit-learn) loads only when a plan is scored
    from patchpilot.risk.score import Thresholds


@dataclass
class BuiltPlan:
    spec: PlanSpec
    expanded: ExpandedPlan
    frozen: dict[str, Any]
    not_gathered: list[str]  # inventory hosts the store knows nothing about
    model: str  # risk model version that scored the updates


def _aware(d: datetime) -> datetime:
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def os_release(h: Host) -> str:
    parts = [
        (h.distribution or "unknown").lower(),
        h.distribution_version or "",
        h.distribution_release or "",
    ]
    return " ".join(p for p in parts if p)


def build_plan(
    engine: Engine,
    plan_path: str | Path,
    inventory: str | Path,
    *,
    thresholds: Thresholds,
    now: datetime | None = None,
    raw: bytes | None = None,
    limit: str | None = None,
) -> BuiltPlan:
    """The plan for the hosts its targets.pattern selects (narrowed by `limit`, an Ansible
    host pattern as for --limit), expanded and frozen."""
    spec = load_plan(plan_path, raw=raw)
    now = now or datetime.now(UTC)
    names = executor.match_hosts(inventory, spec.targets.pattern, limit=limit)
    if not names:
        if limit is not None:
            raise BadInputError(
                f"no host of {inventory} is both in the plan's targets "
                f"{spec.targets.pattern!r} and in --limit {limit!r}",
                hint="check both patterns against `ansible-inventory -i INVENTORY --graph`",
            )
        raise BadInputError(
            f"pattern {spec.targets.pattern!r} of plan {spec.name!r} matches no host in "
            f"{inventory}",
            hint="check targets.pattern against `ansible-inventory -i INVENTORY --graph`",
        )
    groups = {h.name: h.groups for h in executor.list_inventory(inventory)}
    with session_scope(engine) as s:
        rows = s.exec(select(Host).where(col(Host.name).in_(names))).all()
        by_name = {h.name: h for h in rows}
        hosts: list[PlanHost] = []
        updates: dict[str, list[PlanUpdate]] = {}
        for name in names:
            h = by_name.get(name)
            if h is None:
                continue
            hosts.append(
                PlanHost(
                    name=name,
                    groups=tuple(groups.get(name) or h.groups),
                    os_release=os_release(h),
                    facts={
                        k: str(v)
                        for k, v in {
                            "os_family": h.os_family,
                            "distribution": h.distribution,
                            "distribution_version": h.distribution_version,
                            "distribution_release": h.distribution_release,
                            "architecture": h.architecture,
                            "kernel": h.kernel,
                        }.items()
                        if v is not None
                    },
                    reachable=h.reachable,
                )
            )
            pending = s.exec(
                select(PendingUpdate)
                .where(PendingUpdate.host_id == h.id)
                .order_by(col(PendingUpdate.package))
            ).all()
            updates[name] = [
                PlanUpdate(
                    package=u.package,
                    arch=u.arch,
                    installed_version=u.installed_version,
                    candidate_version=u.candidate_version,
                    source=u.source,
                    security=u.security,
                    held=u.held,
                    reboot_needed=u.reboot_needed,
                    first_seen=_aware(u.first_seen),
                    rollback_source=u.rollback_source,
                    rollback_note=u.rollback_note,
                )
                for u in pending
            ]
        from patchpilot.risk.score import score_pending

        scored, model = score_pending(s, thresholds=thresholds, now=now)
    not_gathered = sorted(set(names) - set(by_name))
    if not hosts:
        raise BadInputError(
            f"none of the {len(names)} targeted hosts is in the store",
            hint=f"run `patchpilot inventory gather -i {inventory}` first",
        )
    scores: dict[str, dict[str, RiskScore]] = {}
    for u in scored:
        scores.setdefault(u.host, {})[u.package] = u.score
    expanded = expand_plan(spec, hosts, updates, scores, now=now)
    frozen = freeze(
        expanded,
        spec,
        inventory_snapshot=inventory_snapshot(hosts, expanded),
        created_at=now,
        limit=limit,
    )
    return BuiltPlan(spec, expanded, frozen, not_gathered, model)


def is_frozen_file(path: str | Path) -> bool:
    """A frozen plan is a JSON object; a plan file is YAML (which never starts with '{' in
    practice, and load_frozen's errors are the clearer ones for a JSON file)."""
    try:
        with Path(path).open("rb") as fh:
            return is_frozen(fh.read(256))
    except OSError:
        return False


def moved_since_planned(engine: Engine, plan: ExpandedPlan) -> list[str]:
    """Planned hosts whose installed versions (as last gathered) are no longer the ones the
    plan was made from, each in words; empty when the fleet is as planned."""
    from patchpilot.store.models import InstalledPackage

    names = list(plan.hosts)
    with session_scope(engine) as s:
        ids = {h.name: h.id for h in s.exec(select(Host).where(col(Host.name).in_(names)))}
        installed: dict[tuple[int, str, str], str] = {}
        if ids:
            wanted = {u.package for h in plan.hosts.values() for u in h.updates}
            for p in s.exec(
                select(InstalledPackage).where(
                    col(InstalledPackage.host_id).in_(list(ids.values())),
                    col(InstalledPackage.name).in_(sorted(wanted)),
                )
            ):
                installed[(p.host_id, p.name, p.arch)] = p.version
    moved = []
    for name, h in plan.hosts.items():
        host_id = ids.get(name)
        if host_id is None:
            moved.append(f"{name} is not in this store")
            continue
        for u in h.updates:
            now = installed.get((host_id, u.package, u.arch))
            if now != u.installed_version:
                moved.append(
                    f"{name}: {u.package} is {now or 'not installed'} now, the plan was made "
                    f"for {u.installed_version}"
                )
    return moved
