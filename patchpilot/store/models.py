"""Tables of the store. Every change to them ships with an Alembic migration
(patchpilot/store/migrations/versions); `open_store` upgrades a database before use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


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
    changelog facts are copied in, so retraining does not depend on today's pending list."""

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
