"""Tables of the store. Every change to them ships with an Alembic migration
(patchpilot/store/migrations/versions); `open_store` upgrades a database before use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from patchpilot.run.states import HostState, RunState, StepState


def utcnow() -> datetime:
    return datetime.now(UTC)


class Host(SQLModel, table=True):
    """A managed host as last gathered. Facts survive an unreachable gather: only the
    reachability fields change then."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    address: str | None = None
    groups: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    os_family: str | None = None
    distribution: str | None = None
    distribution_version: str | None = None
    distribution_release: str | None = None
    kernel: str | None = None
    architecture: str | None = None
    boot_time: datetime | None = None
    boot_id: str | None = None
    uptime_seconds: int | None = None
    reboot_required: bool = False
    package_manager: str | None = None
    reachable: bool = True
    last_seen: datetime | None = None
    last_error: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class InstalledPackage(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("host_id", "name", "arch"),)

    id: int | None = Field(default=None, primary_key=True)
    host_id: int = Field(foreign_key="host.id", ondelete="CASCADE")
    # No index on name alone: it would put ~150 random page writes in every host's commit
    # (bench/ingest.py); lookups by package name scan, which takes well under a second.
    name: str
    version: str
    arch: str = ""
    source: str | None = None


class Service(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("host_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    host_id: int = Field(foreign_key="host.id", ondelete="CASCADE")
    name: str
    state: str
    enabled: str | None = None  # enabled, disabled, static, masked ...


class PendingUpdate(SQLModel, table=True):
    """A package with a newer version available to a host, plus what its changelog says about
    the versions between the installed and the candidate one."""

    __table_args__ = (UniqueConstraint("host_id", "package", "arch"),)

    id: int | None = Field(default=None, primary_key=True)
    host_id: int = Field(foreign_key="host.id", ondelete="CASCADE")
    package: str  # not indexed, for the same reason as InstalledPackage.name
    arch: str = ""
    installed_version: str
    candidate_version: str
    source: str | None = None  # the source package (e.g. openssl for libssl3)
    origin: str | None = None
    security: bool = False
    held: bool = False
    reboot_needed: bool = False
    # Where the rollback artifact of the installed version will come from (cache,
    # repository, rebuild, none; None: not reported) and, for none, why.
    rollback_source: str | None = None
    rollback_note: str | None = None
    first_seen: datetime = Field(default_factory=utcnow)
    # Changelog facts (None where no changelog could be read).
    cve_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    urgency: str | None = None
    changelog_entries: int | None = None
    upstream_changed: bool | None = None
    changelog_date: datetime | None = None


class GatherRun(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    inventory: str
    limit: str | None = None
    hosts_total: int = 0
    hosts_ok: int = 0
    hosts_unreachable: int = 0
    hosts_failed: int = 0
    status: str = "running"  # running, done, failed


class PatchOutcome(SQLModel, table=True):
    """What one patch did on one host: the fleet's own evidence for the risk model. The
    changelog facts are copied in, so retraining does not depend on today's pending list.
    One row per run, host and package: a resumed run never counts an outcome twice."""

    __table_args__ = (
        Index("uq_patchoutcome_run_host_package", "run_id", "host", "package", "arch", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str | None = Field(default=None, index=True)
    host: str
    package: str
    source: str | None = None
    arch: str = ""
    from_version: str
    to_version: str
    outcome: str  # healthy, health_failed, install_failed, rolled_back
    recorded_at: datetime = Field(default_factory=utcnow)
    cves: int = 0
    urgency: str | None = None
    changelog_entries: int | None = None
    upstream_changed: bool | None = None
    reboot_needed: bool = False


class RiskModelRecord(SQLModel, table=True):
    """A trained risk model, kept with its metadata; the newest one scores."""

    __tablename__ = "riskmodel"

    id: int | None = Field(default=None, primary_key=True)  # the model's version
    created_at: datetime = Field(default_factory=utcnow)
    kind: str  # prior or fleet
    data_until: str
    rows: int
    fleet_rows: int = 0
    model: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Run(SQLModel, table=True):
    """One `patchpilot apply`: the frozen plan it executes and where it stands. Everything
    needed to resume is here and in its steps and host states."""

    id: str = Field(primary_key=True)  # r-YYYYMMDD-HHMMSS-xxxx
    plan_name: str
    plan_sha256: str
    plan: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    inventory: str
    status: str = RunState.RUNNING  # see run.states
    check_mode: bool = False
    emergency: bool = False
    shadow: bool = False
    stage_index: int = 0  # the stage being worked on (or next)
    batch_index: int = 0
    pause_reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    controller: str | None = None
    user: str | None = None
    started_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class RunStep(SQLModel, table=True):
    """The run's journal: each step is written when it starts and again when it ends."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True, ondelete="CASCADE")
    stage: int | None = None
    batch: int | None = None
    kind: str  # preflight, baseline, patch, soak, health, verdict, rollback, verify, pause ...
    state: str = StepState.STARTED  # see run.states
    hosts: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class RunHost(SQLModel, table=True):
    """One host in one run: its place in the plan, what it had before, where it stands."""

    __table_args__ = (UniqueConstraint("run_id", "host"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True, ondelete="CASCADE")
    host: str
    stage: int
    batch: int
    order: int  # deploy order across the whole run
    status: str = HostState.PENDING  # see run.states
    failure: str | None = None  # run.states.Failure
    updates: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    snapshot: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    message: str | None = None
    patched_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class RunUpdate(SQLModel, table=True):
    """One update a run's frozen plan gives one host, as a narrow row: what the fleet report
    joins with outcomes and host states, so it need not decode every frozen plan. The plan
    itself (`Run.plan`) stays the record; these rows are written with the run."""

    __table_args__ = (Index("ix_runupdate_run_host", "run_id", "host"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", ondelete="CASCADE")
    host: str
    package: str
    security: bool = False
    probability: float | None = None


class RunVerdict(SQLModel, table=True):
    """A batch's health verdict with all its evidence."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True, ondelete="CASCADE")
    stage: int
    batch: int
    verdict: str
    action: str  # continue, pause, on_failure (and what shadow mode would have done)
    shadow: bool = False
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Incident(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True, ondelete="CASCADE")
    stage: int | None = None
    batch: int | None = None
    hosts: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class AuditEvent(SQLModel, table=True):
    """Who did what, when and why: every action patchpilot takes or is told to take."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    user: str
    controller: str
    run_id: str | None = Field(default=None, index=True)
    action: str
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class HostLock(SQLModel, table=True):
    """A host taken by a run, with a lease its process renews while it runs. A lock is stale
    once its lease expired, or, on the controller that took it, once its process is gone;
    a paused run's lock (pid 0) holds until approve or abort."""

    host: str = Field(primary_key=True)
    run_id: str
    pid: int
    controller: str
    acquired_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime | None = None
    expires_at: datetime | None = None


class StoreSecret(SQLModel, table=True):
    """Secrets of this store, made on first use (the key that signs frozen plans)."""

    name: str = Field(primary_key=True)
    value: str
