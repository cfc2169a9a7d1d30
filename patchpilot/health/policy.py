"""The verdict policy: how judged metrics become a host verdict, host verdicts a batch verdict,
and a batch verdict an action.

**Hosts.** Failures are counted per check, not per metric: one broken HTTP endpoint whose
status and latency both fail is one failing check. A host is Unhealthy when a critical check
fails or when at least `unhealthy_failures` checks fail (default 2); Degraded when at least
`degraded_failures` non-critical checks fail (default 1), which pauses the rollout for review.
Fewer failing checks than `degraded_failures` are tolerated (reported, but not acted on). With
no failure acted on, any Inconclusive metric makes the host `inconclusive_is`: Inconclusive by
default, or Degraded for teams that want unclear results recorded as problems. A host with no
metrics at all is treated the same way. Inconclusive is never taken as Healthy.

**Batches.** A batch is Unhealthy when at least `batch_unhealthy_hosts` of its hosts are
Unhealthy (default 1) and, if `batch_unhealthy_percent` is set, at least that share of its hosts
too: the count is a floor, the share a tolerance for large batches (with 20%, one Unhealthy host
in 3 fails the batch, one in 100 does not). Unhealthy hosts below that limit make the batch
Degraded, so the rollout pauses for review instead of going on. Otherwise the batch takes its
worst host verdict: Healthy only when every host is Healthy. A batch with no hosts judged is
Inconclusive (or `inconclusive_is`).

**Actions.** Healthy continues; Inconclusive and Degraded pause for review (nobody knows that
the patch is safe); Unhealthy applies the plan's `on_failure`. In shadow mode the rollout always
continues: the verdict and what would have been done ("would pause") are recorded, so a team can
see how the gates would have behaved before trusting them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import BeforeValidator, ConfigDict, PlainSerializer, Strict, with_config

from patchpilot.health.types import BatchVerdict, HostVerdict, MetricJudgement, Verdict

__all__ = [
    "CONTINUE",
    "DEFAULT_POLICY",
    "PAUSE",
    "ROLLBACK_FAILED",
    "VerdictPolicy",
    "batch_action",
    "batch_verdict",
    "host_action",
    "host_verdict",
]

CONTINUE = "continue"
PAUSE = "pause"
ROLLBACK_FAILED = "rollback failed hosts"

# Verdict -> what a run does with the host: the run's steps and the action text it records
# both come from here (`host_action`, `batch_action`).
_HOST_ACTIONS = {
    Verdict.HEALTHY: CONTINUE,
    Verdict.INCONCLUSIVE: PAUSE,
    Verdict.DEGRADED: PAUSE,
    Verdict.UNHEALTHY: ROLLBACK_FAILED,
}
_PRECEDENCE = (ROLLBACK_FAILED, PAUSE, CONTINUE)
_INCONCLUSIVE_CHOICES = (Verdict.INCONCLUSIVE, Verdict.DEGRADED)
_MAX_LISTED = 10  # hosts named in a batch reason before "and N more"


def _count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"health policy: {name} must be a whole number of at least 1, not {value!r}"
        )


def _label(verdict: Verdict) -> str:
    return verdict.label


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class VerdictPolicy:
    """Thresholds for host and batch verdicts, and shadow mode; see the module docstring.
    The one model of a plan's `health_policy`: values are checked here, and
    `inconclusive_is` also accepts the verdict's name ("degraded")."""

    unhealthy_failures: Annotated[int, Strict()] = 2
    degraded_failures: Annotated[int, Strict()] = 1
    inconclusive_is: Annotated[
        Verdict, BeforeValidator(lambda v: _inconclusive_choice(v)), PlainSerializer(_label)
    ] = Verdict.INCONCLUSIVE
    batch_unhealthy_hosts: Annotated[int, Strict()] = 1
    batch_unhealthy_percent: float | None = None
    shadow: Annotated[bool, Strict()] = False  # judge and record, never act (build trust first)

    def __post_init__(self) -> None:
        _count("unhealthy_failures", self.unhealthy_failures)
        _count("degraded_failures", self.degraded_failures)
        _count("batch_unhealthy_hosts", self.batch_unhealthy_hosts)
        if self.degraded_failures > self.unhealthy_failures:
            raise ValueError(
                f"health policy: degraded_failures ({self.degraded_failures}) cannot be more "
                f"than unhealthy_failures ({self.unhealthy_failures})"
            )
        object.__setattr__(self, "inconclusive_is", _inconclusive_choice(self.inconclusive_is))
        pct = self.batch_unhealthy_percent
        if pct is not None:
            if isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 < pct <= 100:
                raise ValueError(
                    "health policy: batch_unhealthy_percent must be more than 0 and at most 100, "
                    f"not {pct!r}"
                )
            object.__setattr__(self, "batch_unhealthy_percent", float(pct))


def _inconclusive_choice(value: object) -> Verdict:
    allowed = " or ".join(v.label for v in _INCONCLUSIVE_CHOICES)
    choice: Verdict | None = None
    if isinstance(value, Verdict):
        choice = value
    elif isinstance(value, str):
        choice = next((v for v in Verdict if v.label == value.strip().lower()), None)
    if choice not in _INCONCLUSIVE_CHOICES:
        raise ValueError(
            f"health policy: inconclusive_is must be {allowed}, not {value!r} "
            "(an unclear result is never taken as healthy)"
        )
    assert choice is not None
    return choice


DEFAULT_POLICY = VerdictPolicy()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def host_verdict(
    host: str, judgements: Sequence[MetricJudgement], policy: VerdictPolicy = DEFAULT_POLICY
) -> HostVerdict:
    """One host's verdict from its judged metrics; see the module docstring."""
    failing: dict[str, list[MetricJudgement]] = {}
    for j in judgements:
        if j.verdict >= Verdict.DEGRADED:
            failing.setdefault(j.check, []).append(j)
    critical = [c for c, js in failing.items() if any(j.critical for j in js)]
    unclear = [j for j in judgements if j.verdict == Verdict.INCONCLUSIVE]

    parts: list[str] = []
    if failing:
        names = ", ".join(f"{c} (critical)" if c in critical else c for c in failing)
        details = "; ".join(f"{j.check}: {j.reason}" for js in failing.values() for j in js)
        parts.append(f"{_plural(len(failing), 'failing check')}: {names} — {details}")
    if unclear:
        details = "; ".join(f"{j.check}: {j.reason}" for j in unclear)
        parts.append(f"{_plural(len(unclear), 'inconclusive metric')}: {details}")

    if critical or len(failing) >= policy.unhealthy_failures:
        verdict = Verdict.UNHEALTHY
    elif len(failing) >= policy.degraded_failures:
        verdict = Verdict.DEGRADED
    else:
        if failing:
            parts[0] = f"tolerated (degraded at {policy.degraded_failures}): {parts[0]}"
        if unclear or not judgements:
            verdict = policy.inconclusive_is
            if not judgements:
                parts.append("no metrics judged")
            if verdict != Verdict.INCONCLUSIVE:
                parts.append(f"inconclusive counts as {verdict.label} by the policy")
        else:
            verdict = Verdict.HEALTHY
            healthy = {j.check for j in judgements} - failing.keys()
            parts.insert(0, f"{_plural(len(healthy), 'check')} healthy")
    return HostVerdict(host, verdict, "; ".join(parts), tuple(judgements))


def _hosts_list(hosts: Sequence[HostVerdict]) -> str:
    names = [h.host for h in hosts[:_MAX_LISTED]]
    more = len(hosts) - len(names)
    return ", ".join(names) + (f" and {more} more" if more else "")


def batch_verdict(
    hosts: Sequence[HostVerdict], policy: VerdictPolicy = DEFAULT_POLICY
) -> BatchVerdict:
    """One batch's verdict from its hosts' verdicts; see the module docstring."""
    if not hosts:
        return BatchVerdict(policy.inconclusive_is, "no hosts judged", ())

    def effective(h: HostVerdict) -> Verdict:
        return policy.inconclusive_is if h.verdict == Verdict.INCONCLUSIVE else h.verdict

    n = len(hosts)
    by_verdict = {v: [h for h in hosts if effective(h) == v] for v in Verdict}
    unhealthy = by_verdict[Verdict.UNHEALTHY]
    u = len(unhealthy)
    pct = policy.batch_unhealthy_percent
    if u and u >= policy.batch_unhealthy_hosts and (pct is None or 100 * u / n >= pct):
        return BatchVerdict(
            Verdict.UNHEALTHY,
            f"{u} of {n} hosts unhealthy: {_hosts_list(unhealthy)}",
            tuple(hosts),
        )
    parts = []
    if u:
        limit = _plural(policy.batch_unhealthy_hosts, "host")
        if pct is not None:
            limit += f" and {pct:g}%"
        parts.append(
            f"{u} of {n} hosts unhealthy, below the batch limit of {limit}: "
            f"{_hosts_list(unhealthy)}"
        )
    for v in (Verdict.DEGRADED, Verdict.INCONCLUSIVE):
        if by_verdict[v]:
            parts.append(
                f"{len(by_verdict[v])} of {n} hosts {v.label}: {_hosts_list(by_verdict[v])}"
            )
    # Unhealthy hosts below the batch limit still stop the rollout for review.
    verdict = Verdict.DEGRADED if u else max(effective(h) for h in hosts)
    if verdict == Verdict.HEALTHY:
        parts.append(f"all {_plural(n, 'host')} healthy")
    return BatchVerdict(verdict, "; ".join(parts), tuple(hosts))


def host_action(verdict: Verdict) -> str:
    """What a run does with one judged host: roll it back when unhealthy (the failure budget
    then decides whether the stage's `on_failure` applies), pause on it when degraded or
    inconclusive (a human decides), else go on."""
    return _HOST_ACTIONS[Verdict(verdict)]


def batch_action(verdict: BatchVerdict, *, shadow: bool) -> str:
    """What a run does after a judged batch, in the words it records with the verdict: the
    most serious of its hosts' actions (`host_action`). In shadow mode nothing is done, and
    what would have been is recorded ("would pause")."""
    actions = {host_action(h.verdict) for h in verdict.hosts}
    action = next((a for a in _PRECEDENCE if a in actions), CONTINUE)
    return f"would {action}" if shadow else action
