"""Wave plan files: the schema, and a loader that treats every plan as untrusted input.

A plan decides which packages reach which hosts, so a plan file must not be able to do more
than describe that: only plain YAML (no object tags), no template expressions anywhere (a
plan is never rendered, so ``{{ ... }}`` could only be a mistake or an injection), package
patterns and names restricted to characters that cannot reach a shell as anything but a
literal. Every error names the file, the line and the field, so it can be fixed in place.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from fractions import Fraction
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from patchpilot.durations import format_duration, parse_duration
from patchpilot.errors import PatchpilotError
from patchpilot.health.checks import CATALOGUE, CheckSpec, validate_check
from patchpilot.health.policy import VerdictPolicy
from patchpilot.risk.types import RiskLevel

# Health checks the runner knows (the catalogue); plans naming anything else are rejected.
KNOWN_CHECKS: frozenset[str] = frozenset(CATALOGUE)

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_GLOB_RE = re.compile(r"[A-Za-z0-9_.+~*?\[\]-]{1,200}")
_PERCENT_RE = re.compile(r"(\d{1,3}(?:\.\d{1,4})?)%")


# --- field types -----------------------------------------------------------------------------


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid name {value!r}: use letters, digits, '_', '.' and '-' (at most 100)"
        )
    return value


def _check_glob(value: str) -> str:
    if not _GLOB_RE.fullmatch(value) or value.startswith("-"):
        raise ValueError(
            f"invalid package pattern {value!r}: use letters, digits and _ . + ~ - with the"
            " wildcards * ? [ ], not starting with '-'"
        )
    return value


def _positive(seconds: int) -> int:
    if seconds < 1:
        raise ValueError("must be at least 1s")
    return seconds


def _check_percent(text: str) -> str:
    m = _PERCENT_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"invalid percentage {text!r}")
    if not 0 < Fraction(m.group(1)) <= 100:
        raise ValueError(f"percentage {text!r} must be above 0% and at most 100%")
    return f"{m.group(1)}%"


def _check_hosts(value: object) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError("must be at least 1")
        return value
    if value == "rest":
        return "rest"
    if isinstance(value, str) and value.strip().endswith("%"):
        return _check_percent(value)
    raise ValueError("must be a host count (5), a percentage ('20%') or 'rest'")


def _check_parallel(value: object) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError("must be at least 1")
        return value
    if isinstance(value, str) and value.strip().endswith("%"):
        return _check_percent(value)
    raise ValueError("must be a batch size (5) or a percentage of the stage ('25%')")


def _check_fact_value(value: object) -> str | tuple[str, ...]:
    def one(v: object) -> str:
        if isinstance(v, str):
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)  # `distribution_major_version: 12` means the string "12"
        raise ValueError(f"fact values are strings; quote {v!r}")

    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("an empty list matches no host")
        return tuple(one(v) for v in value)
    return one(value)


def _check_pattern(value: str) -> str:
    if not value or value.startswith("-") or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(
            f"invalid host pattern {value!r}: an Ansible pattern without spaces,"
            " not starting with '-'"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Glob = Annotated[str, AfterValidator(_check_glob)]
Duration = Annotated[
    int, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
PositiveDuration = Annotated[
    int,
    BeforeValidator(parse_duration),
    AfterValidator(_positive),
    PlainSerializer(format_duration, return_type=str),
]
HostCount = Annotated[int | str, BeforeValidator(_check_hosts)]
BatchSize = Annotated[int | str, BeforeValidator(_check_parallel)]
FactValue = Annotated[str | tuple[str, ...], BeforeValidator(_check_fact_value)]
StrictBool = Annotated[bool, Field(strict=True)]


def resolve_count(value: int | str, base: int) -> int:
    """How many hosts a count means: an int as is, 'P%' as ceil(P/100 x base), 'rest' as
    base. Percentages are exact (Fraction), so '7%' of 100 is 7, never 8."""
    if isinstance(value, int):
        return value
    if value == "rest":
        return base
    return math.ceil(Fraction(value[:-1]) * base / 100)


# --- the models ------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Select(_Model):
    security_only: StrictBool = False
    include: tuple[Glob, ...] = Field(default=("*",), min_length=1)
    exclude: tuple[Glob, ...] = ()
    max_risk: RiskLevel | None = None
    max_probability: float | None = Field(default=None, ge=0, le=1, strict=True)
    min_age_days: float = Field(default=0, ge=0, le=3650, strict=True)
    held: Literal["respect"] = "respect"
    unscored: Literal["include", "exclude"] = "exclude"


class Targets(_Model):
    pattern: Annotated[str, AfterValidator(_check_pattern)] = "all"
    groups: tuple[Name, ...] = ()
    facts: dict[Name, FactValue] = Field(default_factory=dict)


def _valid_check(value: CheckSpec) -> CheckSpec:
    """A stage's health check, checked by the catalogue (health.checks.validate_check): the
    one description of what each check takes and measures."""
    if value.id is not None:
        _check_name(value.id)
    if value.check not in CATALOGUE:
        return value  # a check the caller knows (checks=...), not the catalogue
    try:
        validate_check(value, where="")
    except PatchpilotError as exc:
        raise ValueError(exc.message.removeprefix(": ")) from None
    return value


HealthCheck = Annotated[CheckSpec, AfterValidator(_valid_check)]


class Stage(_Model):
    name: Name
    hosts: HostCount
    group: Name | None = None
    after: tuple[Name, ...] = ()
    parallel: BatchSize = 1
    soak: Duration = 0
    health: tuple[HealthCheck, ...] = ()
    timeout: PositiveDuration = 1800
    on_failure: Literal["halt", "rollback_wave", "rollback_all", "pause"] = "rollback_wave"
    approval: StrictBool = False
    validation: StrictBool = False

    @field_validator("health")
    @classmethod
    def _checks_told_apart(cls, value: tuple[CheckSpec, ...]) -> tuple[CheckSpec, ...]:
        seen: dict[str, int] = {}
        for i, check in enumerate(value):
            name = check.id or check.check
            if name in seen:
                raise ValueError(
                    f"health[{i}] and health[{seen[name]}] are both {name!r}: give each an `id`"
                    " to tell them apart in verdicts and evidence"
                )
            seen[name] = i
        return value


class FailureBudget(_Model):
    hosts: int | None = Field(default=None, ge=0, strict=True)
    percent: float | None = Field(default=None, ge=0, le=100, strict=True)
    unreachable_counts: StrictBool = True

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            has_hosts = data.get("hosts") is not None
            has_percent = data.get("percent") is not None
            if has_hosts and has_percent:
                raise ValueError("give either hosts or percent, not both")
            if not has_hosts and not has_percent:
                return {**data, "hosts": 0}
        return data


class Window(_Model):
    cron: str
    duration: PositiveDuration
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(
                f"invalid cron expression {value!r}: give 5 fields"
                " (minute hour day-of-month month day-of-week)"
            )
        try:
            CronSim(value, datetime(2026, 1, 1, tzinfo=UTC))
        except (CronSimError, ValueError) as exc:
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name like Europe/Berlin or UTC"
            ) from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# One-line apt source: "deb [options] URI SUITE [COMPONENT...]", over http(s) or file.
_APT_SOURCE_RE = re.compile(
    r"deb(?: \[[A-Za-z0-9=,._ -]{1,200}\])? (?:https?://|file:/)[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]{1,400}"
    r"(?: [A-Za-z0-9._/-]{1,100}){1,20}"
)


class RollbackSpec(_Model):
    on_impossible: Literal["refuse", "proceed"] = "refuse"
    # Archives that keep old versions (a local aptly/reprepro mirror, snapshot.debian.org),
    # as one-line apt sources; the preflight reads them only for a previous version that is
    # neither in apt's cache nor in the host's repositories.
    version_sources: tuple[str, ...] = Field(default=(), max_length=20)

    @field_validator("version_sources")
    @classmethod
    def _apt_sources(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for line in value:
            if not _APT_SOURCE_RE.fullmatch(line):
                raise ValueError(
                    f"{line[:120]!r} is not a one-line apt source: write "
                    "'deb [options] http://mirror/debian SUITE COMPONENT'"
                )
        return value


class PlanSpec(_Model):
    name: Name
    description: str = Field(default="", max_length=4000)
    emergency: StrictBool = False
    select: Select = Field(default_factory=Select)
    targets: Targets = Field(default_factory=Targets)
    stages: tuple[Stage, ...] = Field(min_length=1)
    failure_budget: FailureBudget = Field(default_factory=FailureBudget)
    reboot: Literal["never", "if_needed", "always"] = "if_needed"
    window: Window | None = None
    rollback: RollbackSpec = Field(default_factory=RollbackSpec)
    health_policy: VerdictPolicy = Field(default_factory=VerdictPolicy)

    def stage_index(self, name: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.name == name:
                return i
        raise KeyError(name)
