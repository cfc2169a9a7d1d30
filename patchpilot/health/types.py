"""What health checks measure and what the judge concludes, as plain data (stored as JSON
evidence with every verdict)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any


class Verdict(IntEnum):
    """Ordered from best to worst, so the verdict of a group is the max of its parts."""

    HEALTHY = 0
    INCONCLUSIVE = 1
    DEGRADED = 2
    UNHEALTHY = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Direction(IntEnum):
    """Which way a metric gets worse."""

    HIGHER_IS_WORSE = 1  # latency, error rate, failed units, journal errors, load
    LOWER_IS_WORSE = -1  # memory available, disk free, success share

    @classmethod
    def parse(cls, text: object) -> Direction:
        """The module's and the evidence's spelling: "lower_is_worse", else higher."""
        return cls.LOWER_IS_WORSE if text == "lower_is_worse" else cls.HIGHER_IS_WORSE


@dataclass(frozen=True)
class Measurement:
    """One metric of one check on one host at one moment: its samples (several for latency,
    one for a count) in `unit`. `error` is set when the check could not measure at all."""

    check: str  # the check's name in the plan, e.g. "http" or a given id
    metric: str  # e.g. "latency_ms", "error_rate", "failed_units"
    unit: str  # "ms", "%", "count", "bool", "ratio" ...
    samples: tuple[float, ...]
    direction: Direction = Direction.HIGHER_IS_WORSE
    critical: bool = False
    error: str | None = None
    lines: tuple[str, ...] = ()  # sample log lines (journal errors), for evidence

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["direction"] = self.direction.name.lower()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        """The inverse of to_dict (evidence stored with a run)."""
        return cls(
            check=d["check"],
            metric=d["metric"],
            unit=d["unit"],
            samples=tuple(d["samples"]),
            direction=Direction.parse(d["direction"]),
            critical=d["critical"],
            error=d.get("error"),
            lines=tuple(d.get("lines") or ()),
        )


@dataclass(frozen=True)
class Threshold:
    """Limits a metric must respect, each optional:
    - `max` / `min`: absolute limits on the after value (median of samples);
    - `max_increase`: after minus reference, in the metric's unit ("error rate +5 points");
    - `max_ratio`: after / reference ("latency x2");
    - `min_effect`: the effect size (rank-biserial, 0..1) that the statistical comparison must
      exceed to count as worse;
    - `min_delta`: the smallest worsening of the median against a reference (in the metric's
      unit) that the relative limits and the statistical comparison count: below it a change
      is noise, however significant (a restarted service answering in 2 ms instead of 1.5)."""

    max: float | None = None
    min: float | None = None
    max_increase: float | None = None
    max_ratio: float | None = None
    min_effect: float = 0.5
    min_delta: float = 0.0
    alpha: float = 0.05
    min_samples: int = 5


@dataclass(frozen=True)
class MetricJudgement:
    """The judge's conclusion on one metric of one host, with the evidence behind it."""

    check: str
    metric: str
    unit: str
    verdict: Verdict  # HEALTHY (passes), INCONCLUSIVE, or UNHEALTHY (fails)
    critical: bool
    reason: str
    after: float | None = None  # median of the after samples
    baseline: float | None = None  # median before the patch on the same host
    control: float | None = None  # median on unpatched control hosts
    statistic: dict[str, float] = field(default_factory=dict)  # U, p, effect, n's
    threshold: dict[str, float | None] = field(default_factory=dict)
    lines: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.label
        return d


@dataclass(frozen=True)
class HostVerdict:
    host: str
    verdict: Verdict
    reason: str
    metrics: tuple[MetricJudgement, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "verdict": self.verdict.label,
            "reason": self.reason,
            "metrics": [m.to_dict() for m in self.metrics],
        }


@dataclass(frozen=True)
class BatchVerdict:
    verdict: Verdict
    reason: str
    hosts: tuple[HostVerdict, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.label,
            "reason": self.reason,
            "hosts": [h.to_dict() for h in self.hosts],
        }
