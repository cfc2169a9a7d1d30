"""The verdict policy: host verdicts from judged metrics, batch verdicts from hosts, actions,
shadow mode, and the policy's own validation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from patchpilot.health.judge import judge_host
from patchpilot.health.policy import (
    DEFAULT_POLICY,
    VerdictPolicy,
    batch_action,
    batch_verdict,
    host_action,
    host_verdict,
)
from patchpilot.health.types import (
    BatchVerdict,
    HostVerdict,
    Measurement,
    MetricJudgement,
    Threshold,
    Verdict,
)

H, INC, D, U = Verdict.HEALTHY, Verdict.INCONCLUSIVE, Verdict.DEGRADED, Verdict.UNHEALTHY


def mj(check: str, metric: str, verdict: Verdict, *, critical: bool = False) -> MetricJudgement:
    return MetricJudgement(
        check=check,
        metric=metric,
        unit="",
        verdict=verdict,
        critical=critical,
        reason=f"{metric} reason",
    )


OK = [mj("http", "latency_ms", H, critical=True), mj("load", "load_per_cpu", H)]
HTTP_DOWN = [mj("http", "error_rate", U, critical=True), mj("http", "latency_ms", U, critical=True)]
JOURNAL = mj("journal_errors", "journal_errors", U)
LOAD = mj("load", "load_per_cpu", U)
DISK = mj("disk", "disk_free", U)
UNCLEAR = mj("http", "latency_ms", INC, critical=True)

HOST_CASES: list[tuple[str, list[MetricJudgement], VerdictPolicy, Verdict, list[str]]] = [
    ("no metrics", [], DEFAULT_POLICY, INC, ["no metrics judged"]),
    (
        "no metrics, inconclusive counts as degraded",
        [],
        VerdictPolicy(inconclusive_is=D),
        D,
        ["no metrics judged", "inconclusive counts as degraded"],
    ),
    ("all healthy", OK, DEFAULT_POLICY, H, ["2 checks healthy"]),
    (
        "one non-critical failing check",
        [*OK, JOURNAL],
        DEFAULT_POLICY,
        D,
        ["1 failing check: journal_errors — journal_errors: journal_errors reason"],
    ),
    (
        "one non-critical check failing on two metrics counts once",
        [*OK, mj("disk", "disk_free", U), mj("disk", "inodes_free", U)],
        DEFAULT_POLICY,
        D,
        ["1 failing check: disk — disk: disk_free reason; disk: inodes_free reason"],
    ),
    (
        "one critical failing check",
        [mj("http", "error_rate", U, critical=True), mj("load", "load_per_cpu", H)],
        DEFAULT_POLICY,
        U,
        ["1 failing check: http (critical)"],
    ),
    (
        "a broken endpoint with two failing metrics",
        HTTP_DOWN,
        DEFAULT_POLICY,
        U,
        ["1 failing check: http (critical) — http: error_rate reason; http: latency_ms reason"],
    ),
    (
        "two non-critical failing checks",
        [*OK, JOURNAL, DISK],
        DEFAULT_POLICY,
        U,
        ["2 failing checks: journal_errors, disk"],
    ),
    (
        "critical and non-critical failing checks",
        [*HTTP_DOWN, JOURNAL],
        DEFAULT_POLICY,
        U,
        ["2 failing checks: http (critical), journal_errors"],
    ),
    ("inconclusive only", [UNCLEAR, OK[1]], DEFAULT_POLICY, INC, ["1 inconclusive metric"]),
    (
        "inconclusive counts as degraded",
        [UNCLEAR, OK[1]],
        VerdictPolicy(inconclusive_is=D),
        D,
        ["1 inconclusive metric: http: latency_ms reason", "inconclusive counts as degraded"],
    ),
    (
        "a failure outweighs an inconclusive metric",
        [UNCLEAR, JOURNAL],
        DEFAULT_POLICY,
        D,
        ["1 failing check: journal_errors", "1 inconclusive metric"],
    ),
    (
        "a critical failure outweighs an inconclusive metric",
        [UNCLEAR, mj("ssh", "reachable", U, critical=True)],
        DEFAULT_POLICY,
        U,
        ["ssh (critical)"],
    ),
    (
        "unhealthy at three: two failing checks are degraded",
        [JOURNAL, DISK],
        VerdictPolicy(unhealthy_failures=3),
        D,
        ["2 failing checks"],
    ),
    (
        "unhealthy at three: three failing checks are unhealthy",
        [JOURNAL, DISK, LOAD],
        VerdictPolicy(unhealthy_failures=3),
        U,
        ["3 failing checks: journal_errors, disk, load"],
    ),
    (
        "unhealthy at one: one non-critical failing check is unhealthy",
        [JOURNAL],
        VerdictPolicy(unhealthy_failures=1, degraded_failures=1),
        U,
        ["1 failing check"],
    ),
    (
        "degraded at two: one failing check is tolerated",
        [*OK, JOURNAL],
        VerdictPolicy(unhealthy_failures=3, degraded_failures=2),
        H,
        ["2 checks healthy", "tolerated (degraded at 2): 1 failing check: journal_errors"],
    ),
    (
        "degraded at two: a tolerated failure with an inconclusive metric",
        [UNCLEAR, JOURNAL],
        VerdictPolicy(unhealthy_failures=3, degraded_failures=2),
        INC,
        ["tolerated", "1 inconclusive metric"],
    ),
    (
        "degraded at two: a critical failure is never tolerated",
        [mj("ssh", "reachable", U, critical=True)],
        VerdictPolicy(unhealthy_failures=3, degraded_failures=2),
        U,
        ["ssh (critical)"],
    ),
]


@pytest.mark.parametrize(
    ("judgements", "policy", "verdict", "reasons"),
    [c[1:] for c in HOST_CASES],
    ids=[c[0] for c in HOST_CASES],
)
def test_host_verdict(
    judgements: list[MetricJudgement], policy: VerdictPolicy, verdict: Verdict, reasons: list[str]
) -> None:
    hv = host_verdict("web1", judgements, policy)
    assert hv.host == "web1"
    assert hv.verdict == verdict, hv.reason
    for part in reasons:
        assert part in hv.reason
    assert hv.metrics == tuple(judgements)


def hv(name: str, verdict: Verdict) -> HostVerdict:
    return HostVerdict(name, verdict, f"{verdict.label} reason", ())


def hosts(*verdicts: Verdict) -> list[HostVerdict]:
    return [hv(f"h{i}", v) for i, v in enumerate(verdicts, 1)]


BATCH_CASES: list[tuple[str, list[HostVerdict], VerdictPolicy, Verdict, list[str]]] = [
    ("empty batch", [], DEFAULT_POLICY, INC, ["no hosts judged"]),
    ("all healthy", hosts(H, H, H), DEFAULT_POLICY, H, ["all 3 hosts healthy"]),
    ("one host", hosts(H), DEFAULT_POLICY, H, ["all 1 host healthy"]),
    ("one unhealthy host", hosts(H, U, H), DEFAULT_POLICY, U, ["1 of 3 hosts unhealthy: h2"]),
    ("unhealthy outweighs all", hosts(D, U, INC), DEFAULT_POLICY, U, ["1 of 3 hosts unhealthy"]),
    (
        "two hosts needed: one unhealthy pauses",
        hosts(H, U, H),
        VerdictPolicy(batch_unhealthy_hosts=2),
        D,
        ["1 of 3 hosts unhealthy, below the batch limit of 2 hosts: h2"],
    ),
    (
        "two hosts needed: two unhealthy fail",
        hosts(U, H, U),
        VerdictPolicy(batch_unhealthy_hosts=2),
        U,
        ["2 of 3 hosts unhealthy: h1, h3"],
    ),
    (
        "25%: one unhealthy in eight pauses",
        hosts(U, H, H, H, H, H, H, H),
        VerdictPolicy(batch_unhealthy_percent=25),
        D,
        ["1 of 8 hosts unhealthy, below the batch limit of 1 host and 25%"],
    ),
    (
        "25%: two unhealthy in eight fail",
        hosts(U, H, H, H, H, H, H, U),
        VerdictPolicy(batch_unhealthy_percent=25),
        U,
        ["2 of 8 hosts unhealthy: h1, h8"],
    ),
    (
        "25%: one unhealthy in two fails",
        hosts(H, U),
        VerdictPolicy(batch_unhealthy_percent=25),
        U,
        ["1 of 2 hosts unhealthy"],
    ),
    (
        "25% and 3 hosts: both must be reached",
        hosts(U, U, H, H),
        VerdictPolicy(batch_unhealthy_hosts=3, batch_unhealthy_percent=25),
        D,
        ["2 of 4 hosts unhealthy, below the batch limit of 3 hosts and 25%"],
    ),
    (
        "degraded is the worst",
        hosts(H, D, INC),
        DEFAULT_POLICY,
        D,
        ["1 of 3 hosts degraded: h2", "1 of 3 hosts inconclusive: h3"],
    ),
    (
        "inconclusive is the worst",
        hosts(H, INC),
        DEFAULT_POLICY,
        INC,
        ["1 of 2 hosts inconclusive"],
    ),
    (
        "inconclusive counts as degraded",
        hosts(H, INC),
        VerdictPolicy(inconclusive_is=D),
        D,
        ["1 of 2 hosts degraded: h2"],
    ),
    (
        "long host lists are cut",
        hosts(*[U] * 12),
        DEFAULT_POLICY,
        U,
        ["12 of 12 hosts unhealthy: h1, h2, h3, h4, h5, h6, h7, h8, h9, h10 and 2 more"],
    ),
]


@pytest.mark.parametrize(
    ("batch", "policy", "verdict", "reasons"),
    [c[1:] for c in BATCH_CASES],
    ids=[c[0] for c in BATCH_CASES],
)
def test_batch_verdict(
    batch: list[HostVerdict], policy: VerdictPolicy, verdict: Verdict, reasons: list[str]
) -> None:
    bv = batch_verdict(batch, policy)
    assert bv.verdict == verdict, bv.reason
    for part in reasons:
        assert part in bv.reason
    assert bv.hosts == tuple(batch)


@pytest.mark.parametrize(
    ("verdict", "action"),
    [(H, "continue"), (INC, "pause"), (D, "pause"), (U, "rollback failed hosts")],
)
def test_host_action(verdict: Verdict, action: str) -> None:
    assert host_action(verdict) == action


@pytest.mark.parametrize(
    ("hosts", "shadow", "text"),
    [
        ([H, H], False, "continue"),
        ([H, INC], False, "pause"),
        ([D, H], False, "pause"),
        ([H, D, U], False, "rollback failed hosts"),  # the most serious host action wins
        ([H, H], True, "would continue"),
        ([INC, H], True, "would pause"),
        ([U, D], True, "would rollback failed hosts"),
    ],
)
def test_batch_action(hosts: list[Verdict], shadow: bool, text: str) -> None:
    bv = BatchVerdict(
        max(hosts), "r", tuple(HostVerdict(f"h{i}", v, "r", ()) for i, v in enumerate(hosts))
    )
    assert batch_action(bv, shadow=shadow) == text


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"unhealthy_failures": 0}, "unhealthy_failures must be a whole number of at least 1"),
    ({"unhealthy_failures": -1}, "unhealthy_failures must be a whole number"),
    ({"unhealthy_failures": 1.5}, "unhealthy_failures must be a whole number"),
    ({"unhealthy_failures": True}, "unhealthy_failures must be a whole number"),
    ({"degraded_failures": 0}, "degraded_failures must be a whole number of at least 1"),
    ({"degraded_failures": 3}, "degraded_failures (3) cannot be more than unhealthy_failures (2)"),
    ({"batch_unhealthy_hosts": 0}, "batch_unhealthy_hosts must be a whole number of at least 1"),
    ({"batch_unhealthy_hosts": "2"}, "batch_unhealthy_hosts must be a whole number"),
    ({"inconclusive_is": Verdict.HEALTHY}, "inconclusive_is must be inconclusive or degraded"),
    ({"inconclusive_is": "healthy"}, "never taken as healthy"),
    ({"inconclusive_is": Verdict.UNHEALTHY}, "inconclusive_is must be inconclusive or degraded"),
    ({"inconclusive_is": "maybe"}, "not 'maybe'"),
    ({"inconclusive_is": 0}, "inconclusive_is must be"),
    ({"batch_unhealthy_percent": 0}, "batch_unhealthy_percent must be more than 0"),
    ({"batch_unhealthy_percent": -5.0}, "batch_unhealthy_percent must be more than 0"),
    ({"batch_unhealthy_percent": 101}, "at most 100, not 101"),
    ({"batch_unhealthy_percent": True}, "batch_unhealthy_percent must be"),
    ({"batch_unhealthy_percent": "20%"}, "batch_unhealthy_percent must be"),
]


@pytest.mark.parametrize(("kwargs", "message"), INVALID, ids=[str(k) for k, _ in INVALID])
def test_invalid_policy(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="health policy: ") as exc:
        VerdictPolicy(**kwargs)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({}, "inconclusive_is", INC),
        ({"inconclusive_is": "degraded"}, "inconclusive_is", D),
        ({"inconclusive_is": " Inconclusive "}, "inconclusive_is", INC),
        ({"inconclusive_is": D}, "inconclusive_is", D),
        ({"batch_unhealthy_percent": 20}, "batch_unhealthy_percent", 20.0),
        ({"batch_unhealthy_percent": 100}, "batch_unhealthy_percent", 100.0),
        ({"unhealthy_failures": 1, "degraded_failures": 1}, "degraded_failures", 1),
    ],
)
def test_valid_policy(kwargs: dict[str, Any], field: str, value: object) -> None:
    policy = VerdictPolicy(**kwargs)
    assert getattr(policy, field) == value
    assert type(getattr(policy, field)) is type(value)


def test_defaults() -> None:
    p = VerdictPolicy()
    assert (
        p.unhealthy_failures,
        p.degraded_failures,
        p.inconclusive_is,
        p.batch_unhealthy_hosts,
        p.batch_unhealthy_percent,
    ) == (2, 1, INC, 1, None)


def test_judged_host_to_batch_to_action() -> None:
    """From measurements to an action: a broken, non-critical endpoint fails on two metrics,
    which is one failing check, so the host and its batch are Degraded and the rollout pauses
    (or, in shadow mode, records that it would have)."""
    fast = (10.0, 11.0, 10.5, 9.5, 10.2, 10.8)

    def http(metric: str, unit: str, samples: tuple[float, ...]) -> Measurement:
        return Measurement("status_page", metric, unit, samples)

    after = [http("error_rate", "%", (100.0,)), http("latency_ms", "ms", (300.0,) * 6)]
    baseline = {
        ("status_page", "error_rate"): [http("error_rate", "%", (0.0,))],
        ("status_page", "latency_ms"): [http("latency_ms", "ms", fast)],
    }
    thresholds = {
        ("status_page", "error_rate"): Threshold(max=5.0),
        ("status_page", "latency_ms"): Threshold(max_ratio=2.0),
    }
    judged = judge_host("web1", after, baseline=baseline, control={}, thresholds=thresholds)
    assert [j.verdict for j in judged] == [U, U]

    web1 = host_verdict("web1", judged)
    web2 = host_verdict("web2", [mj("status_page", "error_rate", H)])
    assert web1.verdict == D
    assert "1 failing check: status_page" in web1.reason
    assert "error_rate 100.0% > max 5.0%" in web1.reason
    bv = batch_verdict([web1, web2])
    assert bv.verdict == D
    assert batch_action(bv, shadow=False) == "pause"
    assert batch_action(bv, shadow=True) == "would pause"
    json.dumps(bv.to_dict())
