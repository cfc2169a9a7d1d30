"""The health judge on crafted samples: regressions, improvements, noise, too few samples,
absolute and relative limits in both directions, and measurements that could not be taken."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from patchpilot.health.judge import judge_host, judge_metric
from patchpilot.health.types import Direction, Measurement, Threshold, Verdict

HIGHER = Direction.HIGHER_IS_WORSE
LOWER = Direction.LOWER_IS_WORSE

# Latency in ms: a healthy service answers in ~10 ms, a regressed one in ~200 ms.
FAST = (10.2, 9.8, 11.1, 10.5, 9.6, 10.9, 10.1, 9.9, 10.4, 10.7)
FAST_2 = (10.0, 10.6, 9.7, 10.3, 11.0, 9.9, 10.2, 10.8, 9.5, 10.4)
SLOW = (198.0, 205.0, 211.0, 190.0, 202.0, 215.0, 196.0, 208.0, 201.0, 199.0)
# Memory available in %: ~60 before, ~30 after a leak.
MEM_BEFORE = (61.0, 59.5, 60.2, 60.8, 59.9, 60.4)
MEM_AFTER = (30.5, 29.8, 31.2, 30.1, 29.6, 30.9)


def m(
    samples: tuple[float, ...] | list[float],
    metric: str = "latency_ms",
    unit: str = "ms",
    *,
    check: str = "http",
    direction: Direction = HIGHER,
    critical: bool = False,
    error: str | None = None,
    lines: tuple[str, ...] = (),
) -> Measurement:
    return Measurement(
        check=check,
        metric=metric,
        unit=unit,
        samples=tuple(float(x) for x in samples),
        direction=direction,
        critical=critical,
        error=error,
        lines=lines,
    )


def pct(value: float, metric: str = "error_rate", direction: Direction = HIGHER) -> Measurement:
    return m([value], metric, "%", direction=direction)


def mem(*values: float) -> Measurement:
    return m(values, "memory_available", "%", check="memory", direction=LOWER)


@dataclass(frozen=True)
class Case:
    after: Measurement
    threshold: Threshold = field(default_factory=Threshold)
    baseline: tuple[Measurement, ...] = ()
    control: tuple[Measurement, ...] = ()


CASES: list[tuple[str, Case, Verdict, list[str]]] = [
    # --- statistical comparison -------------------------------------------------------------
    (
        "clear regression against baseline and control",
        Case(m(SLOW), baseline=(m(FAST),), control=(m(FAST_2),)),
        Verdict.UNHEALTHY,
        [
            "latency_ms worse than baseline: median 202 ms vs 10.3 ms, Mann–Whitney p=",
            "latency_ms worse than control: median 202 ms vs 10.2 ms",
            "effect 1.00",
        ],
    ),
    (
        "regression against control alone",
        Case(m(SLOW), control=(m(FAST[:5]), m(FAST[5:]))),
        Verdict.UNHEALTHY,
        ["worse than control", "effect 1.00"],
    ),
    (
        "clear improvement is not flagged",
        Case(m(FAST), baseline=(m(SLOW),), control=(m(SLOW),)),
        Verdict.HEALTHY,
        ["latency_ms median 10.3 ms, baseline 202 ms, control 202 ms"],
    ),
    (
        "lower is worse: memory leak shows in the distribution",
        Case(mem(*MEM_AFTER), baseline=(mem(*MEM_BEFORE),)),
        Verdict.UNHEALTHY,
        ["memory_available worse than baseline: median 30.3% vs 60.3%", "effect 1.00"],
    ),
    (
        "lower is worse: more memory free is an improvement",
        Case(mem(*MEM_BEFORE), baseline=(mem(*MEM_AFTER),)),
        Verdict.HEALTHY,
        ["memory_available median 60.3%, baseline 30.3%"],
    ),
    (
        "identical samples: no variance, no difference",
        Case(m([0] * 8, "error_rate", "%"), baseline=(m([0] * 8, "error_rate", "%"),)),
        Verdict.HEALTHY,
        ["error_rate median 0.0%, baseline 0.0%"],
    ),
    # --- too few samples / nothing to compare with ----------------------------------------------
    (
        "too few samples on both sides",
        Case(m([11, 12, 10]), control=(m([10, 11]),)),
        Verdict.INCONCLUSIVE,
        ["latency_ms: too few samples (3 after, 0 baseline, 2 control; need 5)"],
    ),
    (
        "too few after samples, plenty of reference",
        Case(m([11, 12, 10]), baseline=(m(FAST),)),
        Verdict.INCONCLUSIVE,
        ["too few samples (3 after, 10 baseline, 0 control; need 5)"],
    ),
    (
        "distribution within its absolute limit is still not judged healthy without a reference",
        Case(m(FAST), Threshold(max=100)),
        Verdict.INCONCLUSIVE,
        ["too few samples (10 after, 0 baseline, 0 control; need 5)"],
    ),
    (
        "distribution within its ratio limit but too few samples for the test",
        Case(m([11, 12, 10]), Threshold(max_ratio=2), baseline=(m([10, 11, 12]),)),
        Verdict.INCONCLUSIVE,
        ["too few samples (3 after, 3 baseline, 0 control; need 5)"],
    ),
    (
        "too few samples, but an absolute limit decides",
        Case(m([250, 260, 240]), Threshold(max=100), control=(m([10, 11]),)),
        Verdict.UNHEALTHY,
        ["latency_ms 250 ms > max 100 ms"],
    ),
    (
        "too few samples, but a relative limit decides",
        Case(m([250, 260, 240]), Threshold(max_ratio=2), baseline=(m([10, 11]),)),
        Verdict.UNHEALTHY,
        ["latency_ms 250 ms is 23.8× baseline 10.5 ms (max ×2)"],
    ),
    (
        "min_samples lowered by the plan allows the test",
        Case(m([200, 210, 205]), Threshold(min_samples=3), baseline=(m([10, 11, 12]),)),
        Verdict.HEALTHY,  # 3 vs 3 cannot reach p < 0.05 one-sided (smallest p is 0.05)
        ["latency_ms median 205 ms, baseline 11 ms"],
    ),
    (
        "distribution with no limit and no reference",
        Case(m(FAST)),
        Verdict.INCONCLUSIVE,
        ["latency_ms: nothing to compare with (10 after, 0 baseline, 0 control)"],
    ),
    (
        "single value with no limit and no reference",
        Case(m([3], "value", "")),
        Verdict.INCONCLUSIVE,
        ["value: nothing to compare with (1 after, 0 baseline, 0 control)"],
    ),
    (
        "single value with a relative limit but no reference",
        Case(m([3], "failed_units", "count"), Threshold(max_increase=0)),
        Verdict.INCONCLUSIVE,
        ["failed_units: nothing to compare with"],
    ),
    # --- absolute limits --------------------------------------------------------------------
    (
        "error rate over its absolute max",
        Case(pct(100.0), Threshold(max=5.0)),
        Verdict.UNHEALTHY,
        ["error_rate 100.0% > max 5.0%"],
    ),
    (
        "error rate within its absolute max needs no reference",
        Case(pct(2.0), Threshold(max=5.0)),
        Verdict.HEALTHY,
        ["error_rate 2.0%"],
    ),
    (
        "unreachable host under its min",
        Case(m([0], "reachable", "bool", check="ssh", direction=LOWER), Threshold(min=1)),
        Verdict.UNHEALTHY,
        ["reachable 0 < min 1"],
    ),
    (
        "absolute limit applies to the median, not to one outlier",
        Case(m([10, 11, 900, 12, 10, 11]), Threshold(max=100), baseline=(m(FAST),)),
        Verdict.HEALTHY,
        ["latency_ms median 11 ms, baseline 10.3 ms"],
    ),
    (
        "absolute and relative limits both violated are both reported",
        Case(pct(100.0), Threshold(max=5.0, max_increase=5.0), baseline=(pct(0.0),)),
        Verdict.UNHEALTHY,
        [
            "error_rate 100.0% > max 5.0%",
            "error_rate 100.0% is 100.0 points above baseline 0.0% (max increase 5.0 points)",
        ],
    ),
    # --- relative limits: max_increase -------------------------------------------------------
    (
        "increase over +5 points against baseline",
        Case(pct(12.0), Threshold(max_increase=5.0), baseline=(pct(2.0),)),
        Verdict.UNHEALTHY,
        ["error_rate 12.0% is 10.0 points above baseline 2.0% (max increase 5.0 points)"],
    ),
    (
        "increase over +5 points against control only",
        Case(pct(12.0), Threshold(max_increase=5.0), control=(pct(1.0), pct(2.0), pct(3.0))),
        Verdict.UNHEALTHY,
        ["10.0 points above control 2.0%"],
    ),
    (
        "increase within +5 points",
        Case(pct(6.0), Threshold(max_increase=5.0), baseline=(pct(2.0),)),
        Verdict.HEALTHY,
        ["error_rate 6.0%, baseline 2.0%"],
    ),
    (
        "increase of exactly the limit passes",
        Case(pct(7.0), Threshold(max_increase=5.0), baseline=(pct(2.0),)),
        Verdict.HEALTHY,
        ["error_rate 7.0%, baseline 2.0%"],
    ),
    (
        "decrease of a higher-is-worse metric is fine",
        Case(pct(0.0), Threshold(max_increase=0.0), baseline=(pct(20.0),)),
        Verdict.HEALTHY,
        ["error_rate 0.0%, baseline 20.0%"],
    ),
    (
        "lower is worse: memory drop over 5 points",
        Case(
            pct(40.0, "memory_available", LOWER),
            Threshold(max_increase=5.0),
            baseline=(pct(60.0, "memory_available", LOWER),),
        ),
        Verdict.UNHEALTHY,
        ["memory_available 40.0% is 20.0 points below baseline 60.0% (max decrease 5.0 points)"],
    ),
    (
        "lower is worse: memory drop within 5 points",
        Case(
            pct(57.0, "memory_available", LOWER),
            Threshold(max_increase=5.0),
            baseline=(pct(60.0, "memory_available", LOWER),),
        ),
        Verdict.HEALTHY,
        ["memory_available 57.0%, baseline 60.0%"],
    ),
    (
        "lower is worse: memory rise is fine",
        Case(
            pct(90.0, "memory_available", LOWER),
            Threshold(max_increase=0.0),
            baseline=(pct(60.0, "memory_available", LOWER),),
        ),
        Verdict.HEALTHY,
        ["memory_available 90.0%, baseline 60.0%"],
    ),
    (
        "count increase over zero allowed",
        Case(m([3], "failed_units", "count"), Threshold(max_increase=0), baseline=(m([1]),)),
        Verdict.UNHEALTHY,
        ["failed_units 3 is 2 above baseline 1 (max increase 0)"],
    ),
    # --- relative limits: max_ratio ---------------------------------------------------------
    (
        "latency tripled against control, ×2 allowed",
        Case(m([30]), Threshold(max_ratio=2.0), control=(m([10]),)),
        Verdict.UNHEALTHY,
        ["latency_ms 30 ms is 3× control 10 ms (max ×2)"],
    ),
    (
        "latency up ×1.5, ×2 allowed",
        Case(m([15]), Threshold(max_ratio=2.0), control=(m([10]),)),
        Verdict.HEALTHY,
        ["latency_ms 15 ms, control 10 ms"],
    ),
    (
        "latency halved is fine",
        Case(m([5]), Threshold(max_ratio=2.0), baseline=(m([10]),)),
        Verdict.HEALTHY,
        ["latency_ms 5 ms, baseline 10 ms"],
    ),
    (
        "lower is worse: memory down to a third, ×2 allowed",
        Case(
            pct(20.0, "memory_available", LOWER),
            Threshold(max_ratio=2.0),
            baseline=(pct(60.0, "memory_available", LOWER),),
        ),
        Verdict.UNHEALTHY,
        ["memory_available 20.0% is 3× lower than baseline 60.0% (max ×2 lower)"],
    ),
    (
        "lower is worse: memory down by a third, ×2 allowed",
        Case(
            pct(40.0, "memory_available", LOWER),
            Threshold(max_ratio=2.0),
            baseline=(pct(60.0, "memory_available", LOWER),),
        ),
        Verdict.HEALTHY,
        ["memory_available 40.0%, baseline 60.0%"],
    ),
    (
        "lower is worse: memory down to zero is infinitely worse",
        Case(
            pct(0.0, "memory_available", LOWER),
            Threshold(max_ratio=2.0),
            baseline=(pct(60.0, "memory_available", LOWER),),
        ),
        Verdict.UNHEALTHY,
        ["memory_available fell to 0.0% from baseline 60.0% (max ×2 lower)"],
    ),
    # --- zero reference median ----------------------------------------------------------------
    (
        "zero reference median: the ratio is skipped and says so",
        Case(m([3], "journal_errors", "count"), Threshold(max_ratio=2.0), baseline=(m([0]),)),
        Verdict.INCONCLUSIVE,
        [
            "journal_errors: nothing to compare with (1 after, 1 baseline, 0 control; "
            "ratio to baseline not applied: its median is 0)"
        ],
    ),
    (
        "zero reference median: the increase limit still applies",
        Case(
            m([3], "journal_errors", "count"),
            Threshold(max_ratio=2.0, max_increase=0),
            baseline=(m([0]),),
        ),
        Verdict.UNHEALTHY,
        ["journal_errors 3 is 3 above baseline 0 (max increase 0)"],
    ),
    (
        "zero reference median: healthy, with the skipped ratio noted",
        Case(m([0], "journal_errors", "count"), Threshold(max=0, max_ratio=2.0), control=(m([0]),)),
        Verdict.HEALTHY,
        ["journal_errors 0, control 0; ratio to control not applied: its median is 0"],
    ),
    # --- measurements that could not be taken --------------------------------------------------
    (
        "measurement error after the patch",
        Case(m([], error="connection refused"), Threshold(max_ratio=2), baseline=(m(FAST),)),
        Verdict.UNHEALTHY,
        ["could not measure latency_ms: connection refused"],
    ),
    (
        "no samples after the patch",
        Case(m([])),
        Verdict.UNHEALTHY,
        ["could not measure latency_ms: no samples"],
    ),
    (
        "only NaN samples after the patch",
        Case(m([float("nan")] * 3)),
        Verdict.UNHEALTHY,
        ["could not measure latency_ms: no samples"],
    ),
    (
        "reference measurements that failed are left out",
        Case(
            m(FAST),
            baseline=(m([], error="timeout"), m(FAST_2)),
            control=(m([], error="timeout"),),
        ),
        Verdict.HEALTHY,
        ["latency_ms median 10.3 ms, baseline 10.2 ms"],
    ),
]


@pytest.mark.parametrize(
    ("case", "verdict", "reasons"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_judge_metric(case: Case, verdict: Verdict, reasons: list[str]) -> None:
    j = judge_metric(
        case.after, baseline=case.baseline, control=case.control, threshold=case.threshold
    )
    assert j.verdict == verdict, j.reason
    for part in reasons:
        assert part in j.reason
    # Evidence is stored as JSON.
    json.dumps(j.to_dict())


def test_regression_records_the_statistics() -> None:
    j = judge_metric(m(SLOW), baseline=(m(FAST),), control=(m(FAST_2),), threshold=Threshold())
    assert j.verdict == Verdict.UNHEALTHY
    for ref in ("baseline", "control"):
        assert j.statistic[f"{ref}_p"] < 0.001
        assert j.statistic[f"{ref}_effect"] == pytest.approx(1.0)
        assert j.statistic[f"{ref}_u"] == 100.0  # every after sample beats every reference one
        assert j.statistic[f"{ref}_n_after"] == 10
        assert j.statistic[f"{ref}_n_ref"] == 10
    assert j.after == pytest.approx(201.5)
    assert j.baseline == pytest.approx(10.3)
    assert j.control == pytest.approx(10.25)


def test_improvement_has_negative_effect() -> None:
    j = judge_metric(m(FAST), baseline=(m(SLOW),), threshold=Threshold())
    assert j.verdict == Verdict.HEALTHY
    assert j.statistic["baseline_effect"] == pytest.approx(-1.0)
    assert j.statistic["baseline_p"] > 0.99


def test_lower_is_worse_effect_is_oriented_to_worse() -> None:
    j = judge_metric(mem(*MEM_AFTER), control=(mem(*MEM_BEFORE),), threshold=Threshold())
    assert j.verdict == Verdict.UNHEALTHY
    assert j.statistic["control_effect"] == pytest.approx(1.0)
    assert j.statistic["control_u"] == 0.0  # after ranks lowest: worse for memory


@pytest.mark.parametrize("seed", range(20))
def test_noise_is_healthy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    after, base, ctrl = (rng.normal(12.0, 1.5, 30).round(2) for _ in range(3))
    j = judge_metric(
        m(after.tolist()),
        baseline=(m(base.tolist()),),
        control=(m(ctrl.tolist()),),
        threshold=Threshold(max_ratio=2.0),
    )
    assert j.verdict == Verdict.HEALTHY, j.reason
    assert abs(j.statistic["baseline_effect"]) < 0.5
    assert abs(j.statistic["control_effect"]) < 0.5


@pytest.mark.parametrize(
    ("min_effect", "verdict"), [(0.5, Verdict.HEALTHY), (0.1, Verdict.UNHEALTHY)]
)
def test_small_but_significant_shift_needs_the_effect(min_effect: float, verdict: Verdict) -> None:
    """A slight slowdown on many samples is significant, but a small effect: the effect size
    gate, not p alone, decides."""
    rng = np.random.default_rng(11)
    after, base = rng.normal(12.6, 1.5, 200).round(2), rng.normal(12.0, 1.5, 200).round(2)
    j = judge_metric(
        m(after.tolist()), baseline=(m(base.tolist()),), threshold=Threshold(min_effect=min_effect)
    )
    assert j.statistic["baseline_p"] < 0.05
    assert 0.1 < j.statistic["baseline_effect"] < 0.5
    assert j.verdict == verdict, j.reason


@pytest.mark.parametrize(("alpha", "verdict"), [(0.05, Verdict.UNHEALTHY), (1e-9, Verdict.HEALTHY)])
def test_alpha_gates_the_test(alpha: float, verdict: Verdict) -> None:
    j = judge_metric(m(SLOW), baseline=(m(FAST),), threshold=Threshold(alpha=alpha))
    assert j.verdict == verdict, j.reason


def test_judgement_carries_the_evidence() -> None:
    t = Threshold(max=500.0, max_ratio=2.0)
    after = m(FAST, critical=True, lines=("a line",))
    j = judge_metric(after, baseline=(m(FAST_2),), control=(m(FAST),), threshold=t)
    assert (j.check, j.metric, j.unit, j.critical, j.lines) == (
        "http",
        "latency_ms",
        "ms",
        True,
        ("a line",),
    )
    assert j.threshold == {
        "max": 500.0,
        "min": None,
        "max_increase": None,
        "max_ratio": 2.0,
        "min_effect": 0.5,
        "alpha": 0.05,
        "min_samples": 5,
        "min_delta": 0.0,
    }
    assert (j.after, j.baseline, j.control) == (10.3, 10.25, 10.3)


def test_error_keeps_criticality_and_reference_medians() -> None:
    j = judge_metric(
        m([], error="timed out", critical=True), baseline=(m(FAST),), threshold=Threshold()
    )
    assert j.verdict == Verdict.UNHEALTHY
    assert j.critical
    assert j.after is None
    assert j.baseline == pytest.approx(10.3)


# --- judge_host ---------------------------------------------------------------------------------


def test_judge_host_uses_references_and_thresholds_by_key() -> None:
    latency = m(SLOW)
    errors = pct(0.0)
    units = m([2], "failed_units", "count", check="failed_units")
    judged = judge_host(
        "web1",
        [latency, errors, units],
        baseline={
            ("http", "latency_ms"): [m(FAST)],
            ("failed_units", "failed_units"): [m([0], "failed_units", "count")],
        },
        control={("http", "latency_ms"): [m(FAST_2)]},
        thresholds={("http", "error_rate"): Threshold(max=5.0)},
        default=Threshold(max_increase=0),
    )
    by_key = {(j.check, j.metric): j for j in judged}
    assert [(j.check, j.metric) for j in judged] == [
        ("http", "latency_ms"),
        ("http", "error_rate"),
        ("failed_units", "failed_units"),
    ]
    assert by_key[("http", "latency_ms")].verdict == Verdict.UNHEALTHY
    assert "control_p" in by_key[("http", "latency_ms")].statistic
    assert by_key[("http", "error_rate")].verdict == Verdict.HEALTHY
    assert by_key[("http", "error_rate")].threshold["max"] == 5.0
    # The default threshold applies where no threshold is given.
    assert by_key[("failed_units", "failed_units")].verdict == Verdict.UNHEALTHY
    assert "2 above baseline 0" in by_key[("failed_units", "failed_units")].reason


def test_judge_host_fails_a_metric_that_disappeared_after_the_patch() -> None:
    before = m(FAST, check="api", critical=True)
    judged = judge_host(
        "web1",
        [pct(0.0)],
        baseline={("api", "latency_ms"): [before], ("http", "error_rate"): [pct(0.0)]},
        control={},
        thresholds={("http", "error_rate"): Threshold(max=5.0)},
    )
    assert len(judged) == 2
    missing = judged[1]
    assert (missing.check, missing.metric, missing.verdict) == (
        "api",
        "latency_ms",
        Verdict.UNHEALTHY,
    )
    assert missing.critical
    assert missing.reason == "could not measure latency_ms: not reported after the patch"
    assert missing.baseline == pytest.approx(10.3)


def test_judge_host_with_nothing() -> None:
    assert judge_host("web1", [], baseline={}, control={}, thresholds={}) == []


def test_a_significant_but_tiny_worsening_is_noise_under_min_delta() -> None:
    """A restarted service answering in 2 ms instead of 1.5 ms is significant but harmless."""
    before = Measurement("http", "latency_ms", "ms", tuple(1.4 + i * 0.01 for i in range(20)))
    after = Measurement("http", "latency_ms", "ms", tuple(1.9 + i * 0.01 for i in range(20)))
    strict = judge_metric(after, baseline=[before], threshold=Threshold(max_ratio=2.0))
    assert strict.verdict == Verdict.UNHEALTHY and "Mann–Whitney" in strict.reason
    floor = judge_metric(
        after, baseline=[before], threshold=Threshold(max_ratio=2.0, min_delta=20.0)
    )
    assert floor.verdict == Verdict.HEALTHY
    assert "under the 20 ms that counts" in floor.reason
    slow = Measurement("http", "latency_ms", "ms", tuple(301.0 + i for i in range(20)))
    caught = judge_metric(
        slow, baseline=[before], threshold=Threshold(max_ratio=2.0, min_delta=20.0)
    )
    assert caught.verdict == Verdict.UNHEALTHY
