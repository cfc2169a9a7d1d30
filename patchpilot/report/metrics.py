"""The store as Prometheus metrics: a collector read fresh at each collection, written in
node_exporter's textfile-collector format (atomically) and, optionally, pushed to a
Pushgateway.

Families (every name starts with `patchpilot_`):

| metric | type | labels | value |
|---|---|---|---|
| `last_run_timestamp_seconds` | gauge | plan | when the plan's newest run started |
| `last_run_finished_timestamp_seconds` | gauge | plan | when it finished (absent while it runs) |
| `last_run_state` | gauge | plan, state | 1 for the state the newest run is in, 0 for the others |
| `last_run_hosts` | gauge | plan, state | the newest run's hosts per state |
| `runs_total` | counter | plan, state | runs in the store by how they stand |
| `pending_updates` | gauge | host | pending updates |
| `pending_security_updates` | gauge | host | pending security updates |
| `oldest_security_update_age_seconds` | gauge | host | age of the oldest (0: none) |
| `host_compliant` | gauge | host | 1: misses no security update, 0: misses one (judged hosts) |
| `compliance_ratio` | gauge | | share of compliant hosts among the judged (absent: none) |
| `compliance_unknown_hosts` | gauge | reason | hosts that cannot be judged, per reason |
| `rolled_back_hosts_total` | counter | plan | hosts runs rolled back |
| `rollback_runs_total` | counter | plan | runs that rolled a host back |
| `time_to_detect_seconds` | summary | | batch patch end to verdict, over every verdict |
| `time_to_recover_seconds` | summary | | failing verdict to verified rollback |
| `metrics_generated_timestamp_seconds` | gauge | | when this was written |

A host is judged when its last gather succeeded. One never gathered, or unreachable or failed
at its last gather (its data is stale), has no `host_compliant` sample and is counted in
`compliance_unknown_hosts` under `never_gathered`, `unreachable` or `gather_failed` (every
reason is written, 0 included). With no judged host, `compliance_ratio` has no sample: never
1 for a fleet nobody looked at.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlmodel import select

from patchpilot.run.states import HostState, RunState
from patchpilot.store.db import session_scope

TEXTFILE = "patchpilot.prom"
PREFIX = "patchpilot_"


def _ts(d: datetime | None) -> float | None:
    if d is None:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


class StoreCollector(Collector):
    def __init__(self, engine: Engine, *, now: datetime | None = None) -> None:
        self.engine = engine
        self.now = now

    def collect(self) -> Iterator[Metric]:
        from patchpilot.report.fleet import detect_and_recover
        from patchpilot.store import reports as q
        from patchpilot.store.models import Run
        from patchpilot.store.queries import compliance, list_hosts

        now = self.now or datetime.now(UTC)
        with session_scope(self.engine) as s:
            runs = q.runs_since(s, None)
            ids = {r.id for r in runs}
            states = q.host_state_counts(s, ids)
            steps = q.timed_steps(s, ids)
            verdicts = q.verdict_rows(s, ids)
            hosts = list_hosts(session=s)
            comp = compliance(session=s, now=now)
            plans = {r[0]: r[1] for r in s.exec(select(Run.id, Run.plan_name))}

        last: dict[str, q.RunRow] = {}
        totals: dict[tuple[str, str], int] = defaultdict(int)
        for r in runs:  # oldest first: the last one seen per plan is its newest
            last[r.plan] = r
            totals[(r.plan, r.status)] += 1

        started = GaugeMetricFamily(
            PREFIX + "last_run_timestamp_seconds",
            "When the plan's newest run started (Unix time).",
            labels=["plan"],
        )
        finished = GaugeMetricFamily(
            PREFIX + "last_run_finished_timestamp_seconds",
            "When the plan's newest run finished (Unix time); absent while it runs.",
            labels=["plan"],
        )
        state = GaugeMetricFamily(
            PREFIX + "last_run_state",
            "1 for the state the plan's newest run is in, 0 for the other states.",
            labels=["plan", "state"],
        )
        run_hosts = GaugeMetricFamily(
            PREFIX + "last_run_hosts",
            "Hosts of the plan's newest run, per host state.",
            labels=["plan", "state"],
        )
        for plan, r in sorted(last.items()):
            started.add_metric([plan], _ts(r.started_at) or 0.0)
            if r.finished_at is not None:
                finished.add_metric([plan], _ts(r.finished_at) or 0.0)
            for rs in RunState:
                state.add_metric([plan, rs.value], 1.0 if r.status == rs else 0.0)
            counts = states.get(r.id, {})
            for hs in HostState:
                run_hosts.add_metric([plan, hs.value], float(counts.get(hs, 0)))
        yield from (started, finished, state, run_hosts)

        runs_total = CounterMetricFamily(
            PREFIX + "runs", "Runs in the store, per plan and state.", labels=["plan", "state"]
        )
        for (plan, st), n in sorted(totals.items()):
            runs_total.add_metric([plan, st], float(n))
        yield runs_total

        pending = GaugeMetricFamily(
            PREFIX + "pending_updates", "Pending updates on the host.", labels=["host"]
        )
        security = GaugeMetricFamily(
            PREFIX + "pending_security_updates",
            "Pending security updates on the host.",
            labels=["host"],
        )
        age = GaugeMetricFamily(
            PREFIX + "oldest_security_update_age_seconds",
            "Age of the host's oldest pending security update (changelog date, else first "
            "seen); 0 when it has none.",
            labels=["host"],
        )
        compliant = GaugeMetricFamily(
            PREFIX + "host_compliant",
            "1 when the host misses no security update, 0 when it misses one; absent when it "
            "cannot be judged (never gathered, or unreachable or failed at its last gather).",
            labels=["host"],
        )
        oldest = _oldest_security_seconds(self.engine, now)
        for h in hosts:
            pending.add_metric([h.name], float(h.pending))
            security.add_metric([h.name], float(h.security))
            age.add_metric([h.name], oldest.get(h.name, 0.0))
        for c in comp.rows:
            if c.compliant is not None:
                compliant.add_metric([c.host], 1.0 if c.compliant else 0.0)
        yield from (pending, security, age, compliant)
        ratio = GaugeMetricFamily(
            PREFIX + "compliance_ratio",
            "Share of the hosts that could be judged that miss no security update; absent "
            "when none could be.",
        )
        if comp.percent is not None:
            ratio.add_metric([], comp.percent / 100.0)
        unknown = GaugeMetricFamily(
            PREFIX + "compliance_unknown_hosts",
            "Hosts whose compliance cannot be judged, per reason: never gathered, or "
            "unreachable or failed at their last gather (their data is stale).",
            labels=["reason"],
        )
        for reason, n in comp.unknown_by_reason().items():
            unknown.add_metric([reason.value], float(n))
        yield from (ratio, unknown)

        rolled_hosts: dict[str, int] = defaultdict(int)
        for run_id, counts in states.items():
            rolled_hosts[plans.get(run_id, "")] += counts.get(HostState.ROLLED_BACK, 0)
        rolled_runs: dict[str, set[str]] = defaultdict(set)
        for step in steps:
            if step.kind == "rollback":
                rolled_runs[plans.get(step.run_id, "")].add(step.run_id)
        rh = CounterMetricFamily(
            PREFIX + "rolled_back_hosts", "Hosts rolled back by runs of the plan.", labels=["plan"]
        )
        rr = CounterMetricFamily(
            PREFIX + "rollback_runs", "Runs of the plan that rolled a host back.", labels=["plan"]
        )
        for plan in sorted(last):
            rh.add_metric([plan], float(rolled_hosts.get(plan, 0)))
            rr.add_metric([plan], float(len(rolled_runs.get(plan, ()))))
        yield from (rh, rr)

        ttd, ttr = detect_and_recover(steps, verdicts)
        yield SummaryMetricFamily(
            PREFIX + "time_to_detect_seconds",
            "From the end of a batch's patch to its health verdict.",
            count_value=len(ttd),
            sum_value=sum(ttd),
        )
        yield SummaryMetricFamily(
            PREFIX + "time_to_recover_seconds",
            "From a failing verdict to the end of the verification of its rollback.",
            count_value=len(ttr),
            sum_value=sum(ttr),
        )
        yield GaugeMetricFamily(
            PREFIX + "metrics_generated_timestamp_seconds",
            "When these metrics were read from the store (Unix time).",
            value=now.timestamp(),
        )


def _oldest_security_seconds(engine: Engine, now: datetime) -> dict[str, float]:
    from patchpilot.store.reports import pending_security

    with session_scope(engine) as s:
        rows = pending_security(s)
    out: dict[str, float] = {}
    for u in rows:
        out[u.host] = max(out.get(u.host, 0.0), max(0.0, (now - u.since).total_seconds()))
    return out


def registry_for(engine: Engine, *, now: datetime | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(engine, now=now))
    return registry


def write_textfile(
    engine: Engine,
    directory: str | Path,
    *,
    pushgateway: str | None = None,
    now: datetime | None = None,
) -> Path:
    """Write DIR/patchpilot.prom for node_exporter's textfile collector (to a temporary
    file, then renamed: the collector never reads half a file); and push the same metrics
    to a Pushgateway when one is given."""
    path = Path(directory).expanduser() / TEXTFILE
    path.parent.mkdir(parents=True, exist_ok=True)
    registry = registry_for(engine, now=now)
    write_to_textfile(str(path), registry)
    if pushgateway:
        push_to_gateway(pushgateway, job="patchpilot", registry=registry, timeout=10)
    return path


def update_if_configured(engine: Engine, settings: Any = None) -> Path | None:
    """What a run calls as it goes (on finishing and on pausing): the textfile and the push
    when the settings ask for them (`settings` None: resolved from the config file and the
    environment). A failure to write metrics never fails a run."""
    import logging

    if settings is None:
        from patchpilot.settings import load_settings

        try:
            settings = load_settings()
        except Exception as exc:
            logging.getLogger(__name__).warning("metrics not written: %s", exc)
            return None

    directory = getattr(settings, "metrics_textfile_dir", None)
    gateway = getattr(settings, "metrics_pushgateway", None)
    if not directory and not gateway:
        return None
    started = time.monotonic()
    try:
        if directory:
            return write_textfile(engine, directory, pushgateway=gateway)
        assert gateway is not None
        push_to_gateway(gateway, job="patchpilot", registry=registry_for(engine), timeout=10)
    except Exception as exc:  # metrics are a view; the run's own record is what counts
        logging.getLogger(__name__).warning("metrics not written: %s", exc)
    finally:
        logging.getLogger(__name__).debug("metrics took %.2f s", time.monotonic() - started)
    return None
