"""What a risk score is, as the rest of patchpilot sees it (plans, CLI, reports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {RiskLevel.LOW: 0, RiskLevel.MEDIUM: 1, RiskLevel.HIGH: 2}

# The rollout strategy each level suggests.
STRATEGY = {RiskLevel.LOW: "fast", RiskLevel.MEDIUM: "canary", RiskLevel.HIGH: "manual review"}


@dataclass(frozen=True)
class RiskScore:
    """One pending update on one host: probability that it causes a regression, an
    uncertainty interval around it, its level and the reasons behind it, in words."""

    probability: float
    low: float
    high: float
    level: RiskLevel
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def strategy(self) -> str:
        return STRATEGY[self.level]
