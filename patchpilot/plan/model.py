"""The typed plan: what a plan expansion is made of (hosts, updates, stages, batches, the
rollback sequence) and its JSON form. `ExpandedPlan.to_dict` is what a review shows and a
frozen plan keeps; `ExpandedPlan.from_dict` restores the typed plan from it, checking every
value that later reaches a host (names, versions, architectures) and that the rollback
sequence is the one the hosts imply, so a run executes exactly what was reviewed."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from functools import cached_property
from typing import Any, NamedTuple

from patchpilot.errors import BadInputError
from patchpilot.patches import ROLLBACK_SOURCES, validate_package_name, validate_version
from patchpilot.plan.spec import FailureBudget, Stage
from patchpilot.risk.types import RiskLevel, RiskScore

_new = tuple.__new__
ARCH_RE = re.compile(r"[A-Za-z0-9_]{1,32}")
# An inventory host name, never a pattern: no ',', ':', '!', '&', '*', '[', '~', spaces.
HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,252}")
RESERVED_HOSTS = frozenset({"all", "ungrouped"})

# --- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanHost:
    """A host as the plan sees it, from the last gather."""

    name: str
    groups: tuple[str, ...]
    os_release: str  # e.g. "debian 12 bookworm"
    facts: Mapping[str, str] = field(default_factory=dict)
    reachable: bool = True


@dataclass(frozen=True, slots=True)
class PlanUpdate:
    """One pending update on one host, from the last gather."""

    package: str
    arch: str
    installed_version: str
    candidate_version: str
    source: str | None
    security: bool
    held: bool
    reboot_needed: bool
    first_seen: datetime  # aware
    # Where the rollback artifact will come from (cache, repository, rebuild, none; None:
    # the host did not say) and, for none, why: what `plan` shows before the window.
    rollback_source: str | None = None
    rollback_note: str | None = None


# --- outputs ---------------------------------------------------------------------------------


class SkippedHost(NamedTuple):
    host: str
    reason: str


class ExcludedUpdate(NamedTuple):
    host: str
    update: PlanUpdate
    reason: str


class HostPlan(NamedTuple):
    """What one host gets: the updates in install order, with their risk scores (None where
    the update was not scored), its stage and batch, and why it is where it is."""

    name: str
    os_release: str
    groups: tuple[str, ...]
    stage: str
    batch: int  # index within the stage, from 0
    reason: str
    reboot: bool
    updates: tuple[PlanUpdate, ...]
    risks: tuple[RiskScore | None, ...]


@dataclass(frozen=True)
class StagePlan:
    name: str
    settings: Stage
    batches: tuple[tuple[str, ...], ...]  # never an empty batch
    reasons: Mapping[str, str]  # host -> why it is in this stage
    note: str = ""  # why the stage is empty, or how it was sized

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(h for batch in self.batches for h in batch)


class RollbackStep(NamedTuple):
    """Undo one host: `packages` in reverse install order, each back to its
    installed_version."""

    host: str
    stage: str
    batch: int
    packages: tuple[PlanUpdate, ...]


@dataclass(frozen=True)
class ExpandedPlan:
    plan: str
    emergency: bool
    reboot: str
    evaluated_at: datetime
    stages: tuple[StagePlan, ...]
    hosts: Mapping[str, HostPlan]  # in deploy order
    skipped: tuple[SkippedHost, ...]  # sorted by host
    excluded: tuple[ExcludedUpdate, ...]  # by host, then in the host's update order
    failure_budget: int  # failures allowed before the run halts
    budget: FailureBudget
    warnings: tuple[str, ...]

    @cached_property
    def rollback(self) -> tuple[RollbackStep, ...]:
        """The undo order: the reverse of deploy order (last batch first, and within a
        batch the last host first), each host's packages in reverse install order."""
        return tuple(
            _new(RollbackStep, (name, h.stage, h.batch, h.updates[::-1]))
            for name, h in list(self.hosts.items())[::-1]
        )

    @property
    def total_hosts(self) -> int:
        return len(self.hosts)

    @cached_property
    def positions(self) -> dict[str, tuple[int, int]]:
        """Each planned host's (stage index, batch index): deploy order sorts by it."""
        return {
            host: (si, bi)
            for si, stage in enumerate(self.stages)
            for bi, batch in enumerate(stage.batches)
            for host in batch
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "plan") -> ExpandedPlan:
        """The typed plan from its JSON form (`to_dict`), as a frozen plan or a run keeps
        it. Every value that reaches a host is checked again (the file may come from
        anywhere), every batch must name planned hosts of its own stage, and the rollback
        sequence must be the one the hosts imply: what a user reviewed is what runs."""
        try:
            return _from_dict(data, where)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            if isinstance(exc, BadInputError):
                raise
            raise BadInputError(
                f"{where}: expansion is incomplete or malformed ({type(exc).__name__}: {exc})",
                hint="freeze the plan again from its plan file",
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, with a stable order: what a review shows and a frozen plan keeps."""
        return {
            "plan": self.plan,
            "emergency": self.emergency,
            "reboot": self.reboot,
            "evaluated_at": self.evaluated_at.isoformat(),
            "total_hosts": self.total_hosts,
            "failure_budget": {
                "allowed": self.failure_budget,
                **self.budget.model_dump(mode="json", exclude_none=True),
            },
            "stages": [
                {
                    "name": s.name,
                    "settings": s.settings.model_dump(mode="json"),
                    "batches": [list(b) for b in s.batches],
                    "note": s.note,
                }
                for s in self.stages
            ],
            "hosts": [_host_dict(h) for h in self.hosts.values()],
            "skipped": [{"host": s.host, "reason": s.reason} for s in self.skipped],
            "excluded": [
                {
                    "host": e.host,
                    "package": e.update.package,
                    "arch": e.update.arch,
                    "version": e.update.candidate_version,
                    "reason": e.reason,
                }
                for e in self.excluded
            ],
            "rollback": [
                {
                    "host": r.host,
                    "stage": r.stage,
                    "batch": r.batch,
                    "packages": [
                        {"package": u.package, "arch": u.arch, "to_version": u.installed_version}
                        for u in r.packages
                    ],
                }
                for r in self.rollback
            ],
            "warnings": list(self.warnings),
        }


def _host_dict(h: HostPlan) -> dict[str, Any]:
    return {
        "name": h.name,
        "os_release": h.os_release,
        "groups": list(h.groups),
        "stage": h.stage,
        "batch": h.batch,
        "reason": h.reason,
        "reboot": h.reboot,
        "updates": [
            {
                "package": u.package,
                "arch": u.arch,
                "from": u.installed_version,
                "to": u.candidate_version,
                "source": u.source,
                "security": u.security,
                "reboot_needed": u.reboot_needed,
                "rollback_source": u.rollback_source,
                "rollback_note": u.rollback_note,
                "risk": s.level.value if s else None,
                "probability": s.probability if s else None,
            }
            for u, s in zip(h.updates, h.risks, strict=True)
        ],
    }


# --- failure budget --------------------------------------------------------------------------


def budget_allowed(total_hosts: int, budget: FailureBudget) -> int:
    """Failures a run may have and go on: `hosts`, or floor(percent/100 x total_hosts)."""
    if budget.percent is not None:
        return math.floor(Fraction(str(budget.percent)) * total_hosts / 100)
    return budget.hosts or 0


def budget_exceeded(
    failures: int, unreachable: int, total_hosts: int, budget: FailureBudget
) -> bool:
    """True when the run must halt: counted failures are above what the budget allows
    (equal to the allowance still goes on)."""
    counted = failures + (unreachable if budget.unreachable_counts else 0)
    return counted > budget_allowed(total_hosts, budget)


def _dt(text: Any) -> datetime:
    when = datetime.fromisoformat(str(text))
    if when.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone")
    return when


def _host_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not HOST_RE.fullmatch(name) or name in RESERVED_HOSTS:
        raise BadInputError(
            f"{where}: {name!r} is not an inventory host name",
            hint="a plan names single hosts, never a group or an Ansible pattern",
        )
    return name


def _update(u: Mapping[str, Any], evaluated_at: datetime, where: str) -> PlanUpdate:
    validate_package_name(u["package"], where=where)
    validate_version(u["from"], where=where)
    validate_version(u["to"], where=where)
    arch = u["arch"]
    if not isinstance(arch, str) or not ARCH_RE.fullmatch(arch):
        raise BadInputError(f"{where}: invalid architecture {arch!r}", hint="e.g. amd64, all")
    source = u.get("source")
    if source is not None:
        validate_package_name(source, where=f"{where} source")
    return PlanUpdate(
        package=u["package"],
        arch=arch,
        installed_version=u["from"],
        candidate_version=u["to"],
        source=source,
        security=bool(u["security"]),
        held=False,  # expansion leaves held updates out
        reboot_needed=bool(u["reboot_needed"]),
        # Not kept in the JSON form (selection is over once a plan is expanded).
        first_seen=evaluated_at,
        rollback_source=_rollback_source(u.get("rollback_source"), where),
        rollback_note=_rollback_note(u.get("rollback_note")),
    )


def _rollback_source(value: Any, where: str) -> str | None:
    if value is not None and value not in ROLLBACK_SOURCES:
        raise BadInputError(f"{where}: unknown rollback source {str(value)[:40]!r}")
    return value


def _rollback_note(value: Any) -> str | None:
    return None if value is None else str(value)[:300]


def _risk(u: Mapping[str, Any]) -> RiskScore | None:
    if not u.get("risk"):
        return None
    # The JSON form keeps the level and probability; the interval and the reasons are in
    # the store's scores and the review, not in the plan a run executes.
    p = float(u["probability"])
    return RiskScore(probability=p, low=p, high=p, level=RiskLevel(u["risk"]))


def _from_dict(data: Mapping[str, Any], where: str) -> ExpandedPlan:
    evaluated_at = _dt(data["evaluated_at"])
    stages: list[StagePlan] = []
    hosts: dict[str, HostPlan] = {}
    for i, h in enumerate(data["hosts"]):
        w = f"{where} hosts[{i}]"
        name = _host_name(h["name"], w)
        if name in hosts:
            raise BadInputError(f"{w}: host {name} is planned twice", hint="freeze it again")
        updates = tuple(
            _update(u, evaluated_at, f"{w}.updates[{j}]") for j, u in enumerate(h["updates"])
        )
        if not updates:
            raise BadInputError(f"{w}: host {name} has nothing to patch", hint="freeze it again")
        hosts[name] = HostPlan(
            name=name,
            os_release=str(h["os_release"]),
            groups=tuple(str(g) for g in h["groups"]),
            stage=str(h["stage"]),
            batch=int(h["batch"]),
            reason=str(h["reason"]),
            reboot=bool(h["reboot"]),
            updates=updates,
            risks=tuple(_risk(u) for u in h["updates"]),
        )
    placed: dict[str, tuple[str, int]] = {}
    for i, st in enumerate(data["stages"]):
        settings = Stage.model_validate(st["settings"])
        if settings.name != st["name"]:
            raise ValueError(f"stage {st['name']!r} has the settings of {settings.name!r}")
        batches = tuple(tuple(str(n) for n in b) for b in st["batches"])
        for bi, batch in enumerate(batches):
            if not batch:
                raise ValueError(f"stage {st['name']!r} has an empty batch")
            for n in batch:
                if n in placed or hosts.get(n) is None:
                    raise BadInputError(
                        f"{where} stages[{i}].batches[{bi}]: {n!r} is not a planned host, or "
                        "is in two batches",
                        hint="freeze the plan again from its plan file",
                    )
                placed[n] = (st["name"], bi)
        stages.append(
            StagePlan(
                name=str(st["name"]),
                settings=settings,
                batches=batches,
                reasons={n: hosts[n].reason for b in batches for n in b},
                note=str(st.get("note") or ""),
            )
        )
    for name, h in hosts.items():
        if placed.get(name) != (h.stage, h.batch):
            raise BadInputError(
                f"{where}: host {name} is not in batch {h.batch + 1} of stage {h.stage}",
                hint="freeze the plan again from its plan file",
            )
    budget = FailureBudget.model_validate(
        {k: v for k, v in data["failure_budget"].items() if k != "allowed"}
    )
    plan = ExpandedPlan(
        plan=str(data["plan"]),
        emergency=bool(data["emergency"]),
        reboot=str(data.get("reboot", "if_needed")),
        evaluated_at=evaluated_at,
        stages=tuple(stages),
        hosts=hosts,
        skipped=tuple(SkippedHost(str(s["host"]), str(s["reason"])) for s in data["skipped"]),
        excluded=(),  # not needed to run; the review showed them
        failure_budget=budget_allowed(len(hosts), budget),
        budget=budget,
        warnings=tuple(str(w) for w in data.get("warnings", ())),
    )
    if plan.reboot not in ("never", "if_needed", "always"):
        raise ValueError(f"unknown reboot policy {plan.reboot!r}")
    if int(data["failure_budget"]["allowed"]) != plan.failure_budget:
        raise BadInputError(
            f"{where}: failure_budget.allowed is {data['failure_budget']['allowed']}, "
            f"the budget gives {plan.failure_budget}",
            hint="freeze the plan again from its plan file",
        )
    reviewed = [
        (
            r["host"],
            r["stage"],
            r["batch"],
            [(p["package"], p["arch"], p["to_version"]) for p in r["packages"]],
        )
        for r in data["rollback"]
    ]
    derived = [
        (r.host, r.stage, r.batch, [(u.package, u.arch, u.installed_version) for u in r.packages])
        for r in plan.rollback
    ]
    if reviewed != derived:
        raise BadInputError(
            f"{where}: the rollback sequence is not the reverse of the deploy order",
            hint="freeze the plan again from its plan file",
        )
    return plan
