"""The fleet's figures over the runs in the store, as plain data: what `report fleet --json`
prints, the HTML shows and the Prometheus metrics export.

- success rate: succeeded runs / finished real runs (check-mode and refused runs left out);
- rollback rate: real runs that rolled at least one host back / finished real runs;
- time to detect: from the end of a batch's patch to its verdict;
- time to recover: from a failing verdict to the end of the last rollback verification after
  it (before the run patches anything else);
- pauses: how long each waited for a human (until approved, or aborted, or still waiting);
- compliance over time, per group and OS release: security updates outstanding and the age of
  the oldest. The store keeps today's pending updates (with when each was first seen) and
  every run's frozen plan: an update still pending counts from when it was first seen; one a
  run installed counts from the run's start until the host was patched. So the curve is
  a lower bound for days before patchpilot first gathered a host. Beside it, compliance now:
  the share of compliant hosts among those that could be judged, and how many could not be
  (never gathered, or unreachable or failed at their last gather: see store.queries);
- calibration: the probability each run's plan gave its updates against what happened to them.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlmodel import Session

from patchpilot.run.states import FINISHED, HostState, RunState
from patchpilot.store import reports as q

# Runs that say nothing about how patching goes: dry runs and runs refused for locked hosts.
NOT_REAL = frozenset({RunState.CHECK, RunState.CHECK_FAILED, RunState.REFUSED})
FAILING = frozenset({"unhealthy", "degraded"})
CALIBRATION_BINS = (0.0, 0.02, 0.05, 0.10, 0.20, 1.0)
MAX_POINTS = 60  # compliance-over-time points


def _stats(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": None, "p90": None, "max": None, "mean": None, "sum": 0.0}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 3),
        "p90": round(p90, 3),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
        "sum": round(sum(ordered), 3),
    }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def fleet_report(
    session: Session, *, since: datetime | None = None, now: datetime | None = None
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    runs = q.runs_since(session, since)
    ids = {r.id for r in runs}
    states = q.host_state_counts(session, ids)
    steps = q.timed_steps(session, ids)
    verdicts = q.verdict_rows(session, ids)

    real = [r for r in runs if not r.check_mode and r.status not in NOT_REAL]
    finished = [r for r in real if r.status in FINISHED]
    rolled_back_runs = {
        s.run_id for s in steps if s.kind == "rollback" and s.run_id in {r.id for r in real}
    }
    by_status: dict[str, int] = defaultdict(int)
    for r in runs:
        by_status[r.status] += 1

    ttd, ttr = detect_and_recover(steps, verdicts)
    pauses = pause_waits(steps, now=now, paused={r.id for r in runs if r.status == RunState.PAUSED})
    real_ids = {r.id for r in real}
    patched = sum(states.get(i, {}).get(HostState.HEALTHY, 0) for i in real_ids)
    rolled_back = sum(states.get(i, {}).get(HostState.ROLLED_BACK, 0) for i in real_ids)
    failed_hosts = sum(
        states.get(i, {}).get(HostState.FAILED, 0)
        + states.get(i, {}).get(HostState.ROLLBACK_FAILED, 0)
        for i in real_ids
    )
    comp = compliance_over_time(session, runs, now=now, since=since)
    current = comp["now"]
    kpis = {
        "runs": len(runs),
        "real_runs": len(real),
        "finished_runs": len(finished),
        "success_rate": _ratio(
            sum(r.status == RunState.SUCCEEDED for r in finished), len(finished)
        ),
        "rollback_rate": _ratio(sum(r.id in rolled_back_runs for r in finished), len(finished)),
        "hosts_patched": patched,
        "hosts_rolled_back": rolled_back,
        "hosts_failed": failed_hosts,
        "time_to_detect_s": _stats(ttd),
        "time_to_recover_s": _stats(ttr),
        "pauses": len(pauses),
        "pause_wait_s": _stats([p["wait_s"] for p in pauses]),
        "pauses_waiting": sum(p["waiting"] for p in pauses),
        "compliance_ratio": current["ratio"],  # over the judged hosts; None when none is
        "hosts_judged": current["judged"],
        "hosts_compliance_unknown": current["unknown"],
    }
    run_rows = [
        {
            "id": r.id,
            "plan": r.plan,
            "status": r.status,
            "check_mode": r.check_mode,
            "shadow": r.shadow,
            "emergency": r.emergency,
            "started_at": r.started_at.isoformat(timespec="seconds"),
            "duration_s": round((r.finished_at - r.started_at).total_seconds(), 1)
            if r.finished_at
            else None,
            "host_states": states.get(r.id, {}),
            "rolled_back": r.id in rolled_back_runs,
        }
        for r in reversed(runs)
    ]
    return {
        "kind": "fleet",
        "generated_at": now.isoformat(timespec="seconds"),
        "since": since.isoformat() if since else None,
        "kpis": kpis,
        "runs_by_status": dict(sorted(by_status.items())),
        "runs": run_rows,
        "pauses": pauses,
        "durations": {
            "time_to_detect_s": [round(x, 3) for x in ttd],
            "time_to_recover_s": [round(x, 3) for x in ttr],
        },
        "compliance": comp,
        "calibration": calibration(session, real_ids),
    }


def detect_and_recover(
    steps: Sequence[q.StepRow], verdicts: Sequence[q.VerdictRow]
) -> tuple[list[float], list[float]]:
    """Seconds from each batch's patch end to its verdict; from each failing (acted-on)
    verdict to the end of the last rollback verification that followed it."""
    patch_end: dict[tuple[str, int | None, int | None], datetime] = {}
    per_run: dict[str, list[q.StepRow]] = defaultdict(list)
    for s in steps:
        per_run[s.run_id].append(s)
        if s.kind == "patch" and s.finished_at is not None:
            patch_end[(s.run_id, s.stage, s.batch)] = s.finished_at
    ttd, ttr = [], []
    for v in verdicts:
        end = patch_end.get((v.run_id, v.stage, v.batch))
        if end is not None:
            ttd.append(max(0.0, (v.created_at - end).total_seconds()))
        if v.verdict not in FAILING or v.shadow:
            continue
        verified = None
        for s in per_run[v.run_id]:
            if s.started_at < v.created_at:
                continue
            if s.kind == "patch":
                break
            if s.kind == "verify" and s.finished_at is not None:
                verified = s.finished_at
        if verified is not None:
            ttr.append(max(0.0, (verified - v.created_at).total_seconds()))
    return ttd, ttr


def pause_waits(
    steps: Sequence[q.StepRow], *, now: datetime, paused: set[str]
) -> list[dict[str, Any]]:
    """Each pause and how long it waited: until the next approval of its run, or the run's
    next step of any kind after an abort; a paused run's last pause waits still."""
    per_run: dict[str, list[q.StepRow]] = defaultdict(list)
    for s in steps:
        per_run[s.run_id].append(s)
    out = []
    for run_id, rows in per_run.items():
        for i, s in enumerate(rows):
            if s.kind != "pause":
                continue
            later = [r for r in rows[i + 1 :] if r.kind == "approve"]
            if later:
                ended, waiting = later[0].started_at, False
            elif run_id in paused:
                ended, waiting = now, True
            else:
                ended, waiting = s.finished_at or s.started_at, False
            out.append(
                {
                    "run_id": run_id,
                    "at": s.started_at.isoformat(timespec="seconds"),
                    "wait_s": round(max(0.0, (ended - s.started_at).total_seconds()), 3),
                    "approved": bool(later),
                    "waiting": waiting,
                }
            )
    return out


def _series_key(group: str, os_release: str) -> str:
    return f"{group} · {os_release}"


def compliance_over_time(
    session: Session,
    runs: Sequence[q.RunRow],
    *,
    now: datetime,
    since: datetime | None,
) -> dict[str, Any]:
    """Per (group, OS release), at evenly spaced moments: security updates outstanding on its
    hosts and the age in days of the oldest (see the module's note on what it counts), and
    how many of its hosts cannot be judged now; and `now`: the fleet's compliance today, over
    the hosts that can be judged, with the unknown ones counted per reason."""
    from patchpilot.store.queries import compliance

    labels = q.host_labels(session)
    current = compliance(session=session, now=now)
    unknown_hosts = {r.host for r in current.rows if r.compliant is None}
    # (host, start, end or None): a security update outstanding on a host over a span.
    spans: list[tuple[str, datetime, datetime | None]] = [
        (u.host, u.since, None) for u in q.pending_security(session)
    ]
    evaluated = {r.id: r.started_at for r in runs}
    # Each security update a run's plan gave a host it left healthy: outstanding from the
    # run's start (or the patch, when earlier) until the patch.
    for run_id, host, at, n in q.security_patched(session, set(evaluated)):
        start = evaluated[run_id]
        spans.extend([(host, min(start, at), at)] * n)
    first = min(
        [s for _, s, _ in spans] + [r.started_at for r in runs] + [now - timedelta(days=30)]
    )
    start_at = since or first
    if since is None and (now - start_at) > timedelta(days=365):
        start_at = now - timedelta(days=365)
    points = _moments(start_at, now)
    keys: dict[str, set[str]] = defaultdict(set)  # series -> hosts
    for host, (groups, os_release) in labels.items():
        for g in groups or ["(no group)"]:
            keys[_series_key(g, os_release)].add(host)
    by_host: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for host, s, e in spans:
        by_host[host].append((s.timestamp(), math.inf if e is None else e.timestamp()))
    ts = [t.timestamp() for t in points]
    series = []
    for key in sorted(keys):
        members = keys[key]
        pairs = [p for h in members for p in by_host.get(h, ())]
        starts = np.array([p[0] for p in pairs], dtype=float)
        ends = np.array([p[1] for p in pairs], dtype=float)
        outstanding, oldest = [], []
        for t in ts:
            open_ = starts[(starts <= t) & (ends > t)]
            outstanding.append(int(open_.size))
            oldest.append(round((t - float(open_.min())) / 86400, 1) if open_.size else 0.0)
        group, os_release = key.split(" · ", 1)
        series.append(
            {
                "key": key,
                "group": group,
                "os": os_release,
                "hosts": len(members),
                "unknown_now": len(members & unknown_hosts),
                "outstanding": outstanding,
                "oldest_days": oldest,
                "outstanding_now": outstanding[-1] if outstanding else 0,
                "oldest_days_now": oldest[-1] if oldest else 0.0,
            }
        )
    return {
        "at": [t.isoformat(timespec="seconds") for t in points],
        "series": series,
        "now": {
            "hosts": len(current.rows),
            "judged": current.judged,
            "unknown": current.unknown,
            "unknown_by_reason": {k.value: n for k, n in current.unknown_by_reason().items()},
            "percent": None if current.percent is None else round(current.percent, 1),
            "ratio": None if current.percent is None else round(current.percent / 100, 4),
        },
    }


def _moments(start: datetime, end: datetime) -> list[datetime]:
    if end <= start:
        return [end]
    step = max((end - start) / (MAX_POINTS - 1), timedelta(hours=1))
    out, t = [], start
    while t < end:
        out.append(t)
        t += step
    out.append(end)
    return out


def calibration(session: Session, real_ids: set[str]) -> dict[str, Any]:
    """Each patch a run recorded, with the regression probability its plan gave the update,
    binned: the mean predicted probability against the share that went wrong."""
    cells = q.calibration_cells(session, real_ids, CALIBRATION_BINS)
    scored = [c for c in cells if c.bin is not None]
    unscored = sum(c.n for c in cells if c.bin is None)
    n_scored = sum(c.n for c in scored)
    bins = []
    for i, (lo, hi) in enumerate(itertools.pairwise(CALIBRATION_BINS)):
        inside = [c for c in scored if c.bin == i]
        n = sum(c.n for c in inside)
        failed = sum(c.n for c in inside if c.went_wrong)
        bins.append(
            {
                "low": lo,
                "high": hi,
                "n": n,
                "predicted": round(sum(c.sum_p for c in inside) / n, 4) if n else None,
                "observed": round(failed / n, 4) if n else None,
                "failed": failed,
            }
        )
    brier = round(sum(c.sum_sq for c in scored) / n_scored, 4) if n_scored else None
    return {
        "patches": n_scored + unscored,
        "scored": n_scored,
        "unscored": unscored,
        "failed": sum(c.n for c in scored if c.went_wrong),
        "brier": brier,
        "bins": bins,
    }
