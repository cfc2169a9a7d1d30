"""The check catalogue, its validation, and turning module answers into Measurements."""

from __future__ import annotations

import json
from typing import Any

import pytest

from patchpilot.errors import BadInputError
from patchpilot.health.checks import (
    CATALOGUE,
    CheckSpec,
    measurements_from_result,
    module_args,
    prometheus_measurement,
    unreachable_measurements,
    validate_check,
)
from patchpilot.health.types import Direction
from tests.unit.host_modules import load


def _module() -> Any:
    return load("patchpilot_health")


def test_every_check_the_module_runs_is_in_the_catalogue_and_back() -> None:
    on_hosts = {name for name, kind in CATALOGUE.items() if not kind.on_controller}
    assert on_hosts == set(_module().CHECKS)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (CheckSpec("pingz"), "unknown check 'pingz'"),
        (CheckSpec("http"), "check 'http' needs url"),
        (CheckSpec("tcp", {"port": 80, "hots": "x"}), "has no parameter 'hots'"),
        (
            CheckSpec("http", {"url": "http://x/"}, thresholds={"latency_ms": {"maxx": 1}}),
            "latency_ms.maxx is not a threshold",
        ),
        (
            CheckSpec("load", thresholds={"load1": {"max": 1}}),
            "check 'load' measures no 'load1' (it measures load_per_cpu)",
        ),
        (
            CheckSpec("load", thresholds={"load_per_cpu": {"max": float("nan")}}),
            "load_per_cpu.max must be a finite number",
        ),
        (
            CheckSpec("disk", thresholds={"disk_free": {"min": 50, "max": 10}}),
            "disk_free has min 50 above max 10",
        ),
        (
            CheckSpec("prometheus", {"url": "http://p/", "query": "up"}, thresholds={"value": {}}),
            None,
        ),
    ],
)
def test_bad_check_specs_are_one_line(spec: CheckSpec, message: str | None) -> None:
    if message is None:  # a metric the check measures with no default threshold
        validate_check(spec)
        return
    with pytest.raises(BadInputError) as exc:
        validate_check(spec, where="plans/x.yml:9 stages[1].health[0]")
    assert message in exc.value.message
    assert exc.value.message.startswith("plans/x.yml:9")


def test_thresholds_merge_over_the_catalogue_defaults() -> None:
    spec = CheckSpec("http", {"url": "http://x/"}, thresholds={"latency_ms": {"max": 500}})
    t = spec.threshold("latency_ms")
    assert t.max == 500 and t.max_ratio == 2.0
    assert spec.threshold("error_rate").max == 5.0
    assert spec.is_critical and not CheckSpec("journal_errors").is_critical
    assert CheckSpec("http", {"url": "u"}, critical=False).is_critical is False


def test_module_answers_become_measurements() -> None:
    specs = [CheckSpec("http", {"url": "http://x/"}, id="web"), CheckSpec("memory")]
    result = {
        "checks": [
            {
                "id": "web",
                "check": "http",
                "metrics": [
                    {"metric": "error_rate", "unit": "%", "samples": [100.0], "lines": ["500"]},
                    {"metric": "latency_ms", "unit": "ms", "samples": [1.5, 2.5]},
                ],
            },
            {
                "id": "memory",
                "check": "memory",
                "metrics": [
                    {
                        "metric": "memory_available",
                        "unit": "%",
                        "samples": [50.0],
                        "direction": "lower_is_worse",
                    }
                ],
            },
            {"id": "stranger", "check": "load", "metrics": []},
        ]
    }
    ms = measurements_from_result(result, specs)
    assert [(m.check, m.metric) for m in ms] == [
        ("web", "error_rate"),
        ("web", "latency_ms"),
        ("memory", "memory_available"),
    ]
    assert ms[0].critical and ms[0].lines == ("500",) and ms[1].samples == (1.5, 2.5)
    assert ms[2].direction is Direction.LOWER_IS_WORSE and not ms[2].critical
    assert module_args(specs)[0] == {"id": "web", "check": "http", "params": {"url": "http://x/"}}


def test_an_unreachable_host_fails_its_critical_ssh_check() -> None:
    (m,) = unreachable_measurements([CheckSpec("http", {"url": "u"})], "Connection timed out")
    assert (m.check, m.metric, m.samples, m.critical) == ("ssh", "reachable", (0.0,), True)
    assert "timed out" in m.lines[0]


def test_prometheus_values_become_samples_and_errors_are_reported() -> None:
    spec = CheckSpec(
        "prometheus",
        {"url": "http://prom:9090/", "query": 'rate(errors{instance="$host"}[5m])'},
    )
    seen: list[str] = []

    def fetch(url: str, timeout: float) -> bytes:
        seen.append(url)
        body = {"status": "success", "data": {"result": [{"value": [0, "0.25"]}]}}
        return json.dumps(body).encode()

    m = prometheus_measurement(spec, "web01", fetch=fetch)
    assert m.samples == (0.25,) and m.error is None
    assert "web01" in seen[0] and seen[0].startswith("http://prom:9090/api/v1/query?query=")

    def broken(url: str, timeout: float) -> bytes:
        raise OSError("connection refused")

    assert "connection refused" in (prometheus_measurement(spec, "web01", fetch=broken).error or "")
    with pytest.raises(BadInputError):
        prometheus_measurement(spec, 'web01"} or vector(1) #', fetch=fetch)


def test_module_parsers() -> None:
    mod = _module()
    assert mod.parse_loadavg("3.00 1.00 0.50 1/100 42", 2) == 1.5
    mem = "MemTotal:       1000 kB\nMemFree:  10 kB\nMemAvailable:    250 kB\n"
    assert mod.parse_meminfo(mem) == 25.0
    assert mod.parse_failed_units("foo.service loaded failed failed Foo\n\n") == ["foo.service"]
    names = ["vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-28-amd64", "config-6.1.0-28-amd64"]
    assert mod.newest_installed_kernel(names) == "6.1.0-28-amd64"
    assert mod.newest_installed_kernel([]) is None


def test_one_broken_check_does_not_hide_the_others() -> None:
    mod = _module()
    results = mod.run_checks([{"check": "nosuch"}, {"check": "load"}], None)
    assert "unknown check" in results[0]["metrics"][0]["error"]
    assert results[1]["metrics"][0]["metric"] == "load_per_cpu"


def test_a_hosts_health_answer_is_bounded() -> None:
    from patchpilot.health.checks import MAX_LINE, MAX_LINES, measurements_from_result

    spec = CheckSpec("journal_errors")
    answer = {
        "checks": [
            {
                "id": "journal_errors",
                "metrics": [
                    {
                        "metric": "journal_errors",
                        "unit": "count",
                        "samples": [3, "nan", "x", float("inf")],
                        "lines": ["E" * 100_000] * 1000,
                    },
                    {"metric": "{{ injected }}", "samples": [1]},
                    {"metric": "error", "samples": [], "error": "boom\x1b[31m"},
                ],
            }
        ]
    }
    got = measurements_from_result(answer, [spec])
    assert [m.metric for m in got] == ["journal_errors", "error"]
    assert got[0].samples == (3.0,)
    assert len(got[0].lines) == MAX_LINES and all(len(ln) <= MAX_LINE for ln in got[0].lines)
    assert got[1].error == "boom [31m"
