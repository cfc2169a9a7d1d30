"""The check catalogue: what each check measures, its parameters, its default thresholds, and
how a run of playbooks/health.yml turns into Measurements per host."""

from __future__ import annotations

import json
import logging
import math
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Strict, ValidationInfo, with_config

from patchpilot.errors import BadInputError
from patchpilot.health.types import Direction, Measurement, Threshold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckKind:
    """One entry of the catalogue."""

    name: str
    summary: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    critical: bool = False
    thresholds: Mapping[str, Threshold] = field(default_factory=dict)
    on_controller: bool = False  # runs on the patchpilot host, not through Ansible
    extra_metrics: tuple[str, ...] = ()  # measured, with no default threshold

    @property
    def metrics(self) -> tuple[str, ...]:
        """What the check measures: the metrics a plan may set thresholds for."""
        return (*self.thresholds, *self.extra_metrics)


CATALOGUE: dict[str, CheckKind] = {
    k.name: k
    for k in (
        CheckKind(
            "ssh",
            "the host answers over SSH (and, after a reboot, came back)",
            critical=True,
            thresholds={"reachable": Threshold(min=1)},
        ),
        CheckKind(
            "systemd_units",
            "the given units are active; their restart counts do not grow",
            required=("units",),
            critical=True,
            thresholds={
                "inactive_units": Threshold(max=0),
                "restarts": Threshold(max_increase=0),
            },
        ),
        CheckKind(
            "failed_units",
            "no systemd unit failed that had not failed before",
            thresholds={"failed_units": Threshold(max_increase=0)},
        ),
        CheckKind(
            "http",
            "an HTTP endpoint answers the expected status, without added latency",
            required=("url",),
            optional=("samples", "timeout", "interval", "expect_status"),
            critical=True,
            thresholds={
                "error_rate": Threshold(max=5.0, max_increase=5.0),
                "latency_ms": Threshold(max_ratio=2.0, min_delta=20.0),
            },
        ),
        CheckKind(
            "tcp",
            "a TCP port accepts connections",
            required=("port",),
            optional=("host", "timeout"),
            critical=True,
            thresholds={"open": Threshold(min=1)},
        ),
        CheckKind(
            "command",
            "a command exits as expected (and prints what is expected)",
            required=("cmd",),
            optional=("expect_rc", "expect_output", "timeout"),
            thresholds={"ok": Threshold(min=1)},
        ),
        CheckKind(
            "journal_errors",
            "journal lines at priority err or worse since the patch, against before it",
            optional=("window",),
            thresholds={"journal_errors": Threshold(max_increase=5)},
        ),
        CheckKind(
            "load",
            "1-minute load per CPU",
            thresholds={"load_per_cpu": Threshold(max=2.0)},
        ),
        CheckKind(
            "memory",
            "memory available, percent of total",
            thresholds={"memory_available": Threshold(min=5.0)},
        ),
        CheckKind(
            "disk",
            "free space on a filesystem, percent",
            optional=("path",),
            thresholds={"disk_free": Threshold(min=5.0)},
        ),
        CheckKind(
            "kernel",
            "after a reboot, the running kernel is the newest installed (or the one expected)",
            optional=("expect",),
            critical=True,
            thresholds={"kernel_expected": Threshold(min=1)},
        ),
        CheckKind(
            "prometheus",
            "a PromQL query's value, from a Prometheus HTTP API ($host is replaced by the host)",
            required=("url", "query"),
            optional=("timeout", "direction"),
            on_controller=True,
            extra_metrics=("value",),
        ),
    )
}

# Each threshold key and the values it may take: (lowest, highest, lowest included,
# highest included, whole numbers only). `max` and `min` may be any finite number.
_THRESHOLD_RANGES: dict[str, tuple[float | None, float | None, bool, bool, bool]] = {
    "max": (None, None, True, True, False),
    "min": (None, None, True, True, False),
    "max_increase": (0, None, True, True, False),
    "max_ratio": (1, None, False, True, False),
    "min_effect": (0, 1, True, True, False),
    "min_delta": (0, None, True, True, False),
    "alpha": (0, 1, False, False, False),
    "min_samples": (3, 10_000, True, True, True),
}
_THRESHOLD_KEYS = set(_THRESHOLD_RANGES)
_HOST_RE = re.compile(r"[A-Za-z0-9_.:-]+")


def _known_check(value: str, info: ValidationInfo) -> str:
    """A check of the catalogue, or of the names a caller validates with (context
    "checks")."""
    known = (info.context or {}).get("checks", CATALOGUE)
    if value not in known:
        raise ValueError(f"unknown health check {value!r} (known: {', '.join(sorted(known))})")
    return value


@with_config(ConfigDict(extra="forbid"))
@dataclass(frozen=True)
class CheckSpec:
    """A check as a plan stage asks for it: the one model of a health check, read from plan
    files (plan.spec validates it with `validate_check`) and used as is by the run."""

    check: Annotated[str, AfterValidator(_known_check)]
    params: Mapping[str, Any] = field(default_factory=dict)
    critical: Annotated[bool, Strict()] | None = None  # None: the catalogue's default
    # Overrides of the catalogue's Threshold per metric; `validate_check` checks them.
    thresholds: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    id: str | None = None  # names the check when a stage runs the same check twice

    @property
    def name(self) -> str:
        return self.id or self.check

    @property
    def kind(self) -> CheckKind:
        return CATALOGUE[self.check]

    @property
    def is_critical(self) -> bool:
        return self.kind.critical if self.critical is None else self.critical

    def threshold(self, metric: str) -> Threshold:
        base = self.kind.thresholds.get(metric, Threshold())
        override = dict(self.thresholds.get(metric, {}))
        if not override:
            return base
        merged = {k: getattr(base, k) for k in _THRESHOLD_KEYS}
        merged.update(override)
        return Threshold(**merged)


def validate_check(spec: CheckSpec, *, where: str = "health") -> None:
    """Unknown checks, missing or unknown parameters and threshold keys: one clear line."""
    kind = CATALOGUE.get(spec.check)
    if kind is None:
        raise BadInputError(
            f"{where}: unknown check {spec.check!r}",
            hint=f"checks are {', '.join(sorted(CATALOGUE))}",
        )
    params = dict(spec.params)
    if spec.check == "command" and "argv" in params:
        params.setdefault("cmd", params.pop("argv"))
    missing = [p for p in kind.required if p not in params]
    if missing:
        raise BadInputError(
            f"{where}: check {spec.check!r} needs {', '.join(missing)}",
            hint=f"parameters of {spec.check}: {', '.join(kind.required + kind.optional)}",
        )
    unknown = sorted(set(params) - set(kind.required) - set(kind.optional))
    if unknown:
        raise BadInputError(
            f"{where}: check {spec.check!r} has no parameter {unknown[0]!r}",
            hint=f"parameters of {spec.check}: {', '.join(kind.required + kind.optional) or '-'}",
        )
    for metric, values in spec.thresholds.items():
        if metric not in kind.metrics:
            raise BadInputError(
                f"{where}: check {spec.check!r} measures no {metric!r} (it measures "
                f"{', '.join(kind.metrics)})",
                hint="thresholds are set per metric the check measures",
            )
        bad = sorted(set(values) - _THRESHOLD_KEYS)
        if bad:
            raise BadInputError(
                f"{where}: threshold {metric}.{bad[0]} is not a threshold",
                hint=f"thresholds are {', '.join(sorted(_THRESHOLD_KEYS))}",
            )
        for key, limit in values.items():
            if not isinstance(limit, int | float) or isinstance(limit, bool):
                raise BadInputError(
                    f"{where}: threshold {metric}.{key} must be a number, got {limit!r}",
                    hint="e.g. {max: 500}",
                )
            if not math.isfinite(limit):
                raise BadInputError(
                    f"{where}: threshold {metric}.{key} must be a finite number, got {limit!r}",
                    hint="a limit of .nan or .inf never trips; leave the key out instead",
                )
            problem = _out_of_range(key, limit)
            if problem:
                raise BadInputError(
                    f"{where}: threshold {metric}.{key} must be {problem}, got {limit!r}",
                    hint="see docs/health-checks.md for what each threshold means",
                )
        low, high = values.get("min"), values.get("max")
        if low is not None and high is not None and low > high:
            raise BadInputError(
                f"{where}: threshold {metric} has min {low:g} above max {high:g}",
                hint="no value could pass: swap them",
            )


def _out_of_range(key: str, value: float) -> str | None:
    """What a threshold value must be, when it is not."""
    low, high, low_in, high_in, whole = _THRESHOLD_RANGES[key]
    below = low is not None and (value < low or (value == low and not low_in))
    above = high is not None and (value > high or (value == high and not high_in))
    if not (below or above or (whole and value != int(value))):
        return None
    bounds = ["a whole number"] if whole else []
    if low is not None:
        bounds.append(f"{'at least' if low_in else 'more than'} {low:g}")
    if high is not None:
        bounds.append(f"{'at most' if high_in else 'less than'} {high:g}")
    return " and ".join(bounds)


def module_args(specs: Sequence[CheckSpec]) -> list[dict[str, Any]]:
    """The checks that run on hosts, as the patchpilot_health module takes them."""
    return [
        {"id": s.name, "check": s.check, "params": dict(s.params)}
        for s in specs
        if not s.kind.on_controller
    ]


def measurements_from_result(
    result: Mapping[str, Any], specs: Sequence[CheckSpec]
) -> list[Measurement]:
    """The module's answer for one host, as Measurements carrying each check's criticality.
    A host's answer is data: only metrics the check measures are kept, with at most
    MAX_SAMPLES finite samples and MAX_LINES log lines of at most MAX_LINE characters."""
    by_name = {s.name: s for s in specs}
    out: list[Measurement] = []
    for item in list(result.get("checks", []))[: len(specs)]:
        spec = by_name.get(str(item.get("id")))
        if spec is None:
            continue
        for m in list(item.get("metrics", []))[:MAX_METRICS]:
            metric = str(m.get("metric", ""))
            if spec.check in CATALOGUE and metric not in (*spec.kind.metrics, "error"):
                continue
            samples = []
            for x in list(m.get("samples", []))[:MAX_SAMPLES]:
                try:
                    value = float(x)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    samples.append(value)
            error = m.get("error")
            out.append(
                Measurement(
                    check=spec.name,
                    metric=metric,
                    unit=_clip(m.get("unit", ""), 16),
                    samples=tuple(samples),
                    direction=Direction.parse(m.get("direction")),
                    critical=spec.is_critical,
                    error=None if error is None else _clip(error, MAX_LINE),
                    lines=tuple(_clip(x, MAX_LINE) for x in list(m.get("lines", []))[:MAX_LINES]),
                )
            )
    return out


MAX_METRICS = 32
MAX_SAMPLES = 10_000
MAX_LINES = 20
MAX_LINE = 500


def _clip(value: object, limit: int) -> str:
    text = "".join(c if c.isprintable() else " " for c in str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unreachable_measurements(specs: Sequence[CheckSpec], message: str) -> list[Measurement]:
    """A host that did not answer: its ssh check fails (critical), the others cannot measure."""
    out = [
        Measurement(
            check="ssh",
            metric="reachable",
            unit="bool",
            samples=(0.0,),
            direction=Direction.LOWER_IS_WORSE,
            critical=True,
            lines=(message,),
        )
    ]
    return out


Fetch = Callable[[str, float], bytes]


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data: bytes = resp.read(1 << 20)
        return data


def prometheus_measurement(spec: CheckSpec, host: str, *, fetch: Fetch = _fetch) -> Measurement:
    """Query a Prometheus HTTP API (instant query); every value of the result is a sample."""
    if not _HOST_RE.fullmatch(host):
        raise BadInputError(f"host name {host!r} cannot be put into a PromQL query")
    params = spec.params
    base = str(params["url"]).rstrip("/")
    query = str(params["query"]).replace("$host", host)
    direction = Direction.parse(params.get("direction"))
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"

    def make(samples: tuple[float, ...], error: str | None = None) -> Measurement:
        return Measurement(
            check=spec.name,
            metric="value",
            unit="",
            samples=samples,
            direction=direction,
            critical=spec.is_critical,
            error=error,
        )

    try:
        data = json.loads(fetch(url, float(params.get("timeout", 10))))
        if data.get("status") != "success":
            raise ValueError(data.get("error") or "query failed")
        samples = tuple(float(r["value"][1]) for r in data["data"]["result"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return make((), f"prometheus: {exc}")
    if not samples:
        return make((), f"prometheus: no data for {query}")
    return make(samples)


def collect(
    specs: Sequence[CheckSpec],
    hosts: Sequence[str],
    *,
    inventory: str | Path,
    since: float | None = None,
    forks: int | None = None,
) -> dict[str, list[Measurement]]:
    """Run the checks on hosts (one ansible-runner run for all of them, plus controller-side
    queries) and return each host's Measurements. Unreachable hosts fail their ssh check."""
    from patchpilot.ops import executor

    out: dict[str, list[Measurement]] = {h: [] for h in hosts}
    if not hosts:
        return out
    results: dict[str, Mapping[str, Any]] = {}

    def on_event(ev: executor.HostEvent) -> None:
        if ev.action.endswith("patchpilot_health") and ev.kind == "ok":
            results[ev.host] = ev.result

    args = module_args(specs)
    outcome = executor.run_playbook(
        "health.yml",
        inventory,
        hosts=list(hosts),
        forks=forks,
        extravars={"patchpilot_checks": args, "patchpilot_since": since},
        on_event=on_event,
    )
    for host in hosts:
        if host in results:
            out[host].extend(measurements_from_result(results[host], specs))
        else:
            o = outcome.hosts.get(host)
            msg = (o.message if o else None) or "no answer"
            out[host].extend(unreachable_measurements(specs, msg))
        if host in results:
            for spec in specs:
                if spec.kind.on_controller:
                    out[host].append(prometheus_measurement(spec, host))
    return out
