"""A run's report as plain data: what `report RUN --json` prints and the HTML shows.

Built on `store.runs.run_detail` (the record `runs show` prints) plus what a report draws:
each step on a time axis, per batch the samples behind its verdict (the patched hosts after
the patch, the same hosts before it, the control hosts), and the risk of the run's updates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from patchpilot.health.types import Verdict
from patchpilot.risk.score import Thresholds
from patchpilot.run.states import HostState, StepState
from patchpilot.store.models import Run, RunHost, RunStep, RunVerdict
from patchpilot.store.reports import aware
from patchpilot.store.runs import run_detail

# Where a step that belongs to no batch goes on the timeline.
RUN_LANE = "run"
MARKED = ("pause", "approve", "rollback", "verify")
FAILING = frozenset({Verdict.UNHEALTHY.label, Verdict.DEGRADED.label})


def _iso(d: datetime | None) -> str | None:
    d = aware(d)
    return d.astimezone(UTC).isoformat(timespec="seconds") if d else None


def lane(stage: str | None, batch: int | None) -> str:
    """A timeline row: `canary / batch 1` (batch counted from 1), or the run's own row."""
    if stage is None:
        return RUN_LANE
    return stage if batch is None else f"{stage} / batch {batch}"


def run_report(
    session: Session, run_id: str, *, thresholds: Thresholds | None = None
) -> dict[str, Any]:
    detail = run_detail(session, run_id)
    run = session.get(Run, detail["id"])
    assert run is not None
    stages = [s["name"] for s in run.plan["expansion"]["stages"]]

    def stage_name(i: int | None) -> str | None:
        return stages[i] if i is not None and 0 <= i < len(stages) else None

    steps = session.exec(
        select(RunStep).where(RunStep.run_id == run.id).order_by(col(RunStep.id))
    ).all()
    verdicts = session.exec(
        select(RunVerdict).where(RunVerdict.run_id == run.id).order_by(col(RunVerdict.id))
    ).all()
    hosts = session.exec(
        select(RunHost).where(RunHost.run_id == run.id).order_by(col(RunHost.order))
    ).all()
    t0 = aware(run.started_at) or datetime.now(UTC)
    end = aware(run.finished_at) or max(
        [aware(s.finished_at or s.started_at) or t0 for s in steps] + [t0]
    )

    def offset(d: datetime | None) -> float | None:
        d = aware(d)
        return None if d is None else round((d - t0).total_seconds(), 3)

    batch_verdict = {(v.stage, v.batch): v.verdict for v in verdicts}
    timeline = []
    for st in steps:
        if st.kind == "snapshot":  # a record, not a step that takes time
            continue
        timeline.append(
            {
                "lane": lane(stage_name(st.stage), None if st.batch is None else st.batch + 1),
                "stage": stage_name(st.stage),
                "batch": None if st.batch is None else st.batch + 1,
                "step": st.kind,
                "state": st.state,
                "start_s": offset(st.started_at),
                "end_s": offset(st.finished_at),
                "started_at": _iso(st.started_at),
                "finished_at": _iso(st.finished_at),
                "hosts": list(st.hosts),
                "verdict": batch_verdict.get((st.stage, st.batch))
                if st.stage is not None and st.batch is not None
                else None,
                "marked": st.kind in MARKED,
                "failed": st.state == StepState.FAILED,
            }
        )

    batches = []
    for v in verdicts:
        batches.append(_batch_evidence(v, steps, stage_name(v.stage), offset))
    host_rows = [
        {
            "host": h.host,
            "stage": stage_name(h.stage),
            "batch": h.batch + 1,
            "status": h.status,
            "failure": h.failure,
            "message": h.message,
            "patched_at": _iso(h.patched_at),
            "updates": [
                {
                    "package": u["package"],
                    "before": h.snapshot.get(u["package"], u["from"]),
                    "after": _after(h.status, u, h.snapshot),
                    "planned": u["to"],
                }
                for u in h.updates
            ],
        }
        for h in hosts
    ]
    counts = dict(detail["host_states"])
    return {
        "kind": "run",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": {
            k: detail[k]
            for k in (
                "id",
                "plan",
                "status",
                "emergency",
                "check_mode",
                "shadow",
                "started_at",
                "finished_at",
                "message",
                "exit_code",
                "user",
                "plan_sha256",
                "inventory",
            )
        },
        "started_at": _iso(t0),
        "duration_s": round((end - t0).total_seconds(), 3),
        "stages": stages,
        "host_states": counts,
        "timeline": timeline,
        "batches": batches,
        "hosts": host_rows,
        "incidents": detail["incidents"],
        "audit": detail["audit"],
        "risk": _risks(session, hosts, thresholds or Thresholds()),
    }


def _after(status: str, update: dict[str, Any], snapshot: dict[str, str]) -> str | None:
    """The version a host ended the run on, as far as the store knows (None: see the
    host's state: not patched, or unknown after a failure)."""
    if status in (HostState.HEALTHY, HostState.PATCHED):
        return str(update["to"])
    if status == HostState.ROLLED_BACK:
        return snapshot.get(update["package"], update["from"])
    return None


def _batch_evidence(v: RunVerdict, steps: Any, stage: str | None, offset: Any) -> dict[str, Any]:
    """A verdict with its samples: per metric, each patched host after and before its patch,
    and the control hosts after, with the thresholds the judge applied."""

    def measured(kind: str) -> dict[str, Any]:
        found = [s for s in steps if s.kind == kind and (s.stage, s.batch) == (v.stage, v.batch)]
        return dict(found[-1].detail.get("measurements") or {}) if found else {}

    before, after = measured("baseline"), measured("health")
    ev = v.evidence
    controls = list(ev.get("controls") or [])
    judged = ev.get("hosts") or []
    metrics: dict[str, dict[str, Any]] = {}

    def samples(data: dict[str, Any], host: str, key: str) -> list[float]:
        for m in data.get(host) or []:
            if f"{m['check']}.{m['metric']}" == key:
                return [float(x) for x in m.get("samples") or []]
        return []

    for hv in judged:
        for m in hv.get("metrics") or []:
            key = f"{m['check']}.{m['metric']}"
            entry = metrics.setdefault(
                key,
                {
                    "key": key,
                    "check": m["check"],
                    "metric": m["metric"],
                    "unit": m["unit"],
                    "threshold": m.get("threshold") or {},
                    "verdict": Verdict.HEALTHY.label,
                    "hosts": [],
                    "control": [],
                },
            )
            if Verdict[m["verdict"].upper()] > Verdict[entry["verdict"].upper()]:
                entry["verdict"] = m["verdict"]
            entry["hosts"].append(
                {
                    "host": hv["host"],
                    "verdict": m["verdict"],
                    "reason": m["reason"],
                    "after": samples(after, hv["host"], key),
                    "baseline": samples(before, hv["host"], key),
                    "after_median": m.get("after"),
                    "baseline_median": m.get("baseline"),
                    "control_median": m.get("control"),
                    "statistic": m.get("statistic") or {},
                    "lines": list(m.get("lines") or []),
                }
            )
    for entry in metrics.values():
        entry["control"] = [x for c in controls for x in samples(after, c, entry["key"])]
    return {
        "stage": stage,
        "batch": v.batch + 1,
        "lane": lane(stage, v.batch + 1),
        "verdict": v.verdict,
        "action": v.action,
        "shadow": v.shadow,
        "failing": v.verdict in FAILING,
        "at_s": offset(v.created_at),
        "reason": ev.get("reason", ""),
        "controls": controls,
        "host_reasons": [
            {"host": h["host"], "verdict": h["verdict"], "reason": h["reason"]} for h in judged
        ],
        "metrics": list(metrics.values()),
    }


def _risks(session: Session, hosts: Any, thresholds: Thresholds) -> dict[str, Any]:
    """The run's distinct updates with the risk the plan froze, and the reasons in words the
    active model gives for them now (the frozen plan keeps only level and probability)."""
    distinct: dict[tuple[str, str, str], dict[str, Any]] = {}
    for h in hosts:
        for u in h.updates:
            key = (u["package"], u["from"], u["to"])
            entry = distinct.setdefault(
                key,
                {
                    "package": u["package"],
                    "from": u["from"],
                    "to": u["to"],
                    "security": bool(u.get("security")),
                    "risk": u.get("risk"),
                    "probability": u.get("probability"),
                    "hosts": 0,
                    "reasons": [],
                },
            )
            entry["hosts"] += 1
    model_version = None
    try:
        model_version = _reasons(session, list(distinct.values()), thresholds)
    except Exception as exc:  # reasons are a help, never a reason for no report
        for e in distinct.values():
            e["reasons"] = [f"no reasons: the risk model could not score it ({exc})"]
    rows = sorted(
        distinct.values(), key=lambda e: (-(e["probability"] or -1.0), e["package"], e["to"])
    )
    return {"model": model_version, "updates": rows}


def _reasons(session: Session, entries: list[dict[str, Any]], thresholds: Thresholds) -> str:
    from patchpilot.risk.dataset import shipped_table
    from patchpilot.risk.score import active_model, fleet_outcomes, score_items, update_items
    from patchpilot.store.models import PendingUpdate

    model, version = active_model(session)
    if not entries:
        return version
    pending = {
        (u.package, u.candidate_version): u for u in session.exec(select(PendingUpdate)).all()
    }
    rows = [
        pending.get((e["package"], e["to"]))
        or PendingUpdate(
            host_id=0,
            package=e["package"],
            installed_version=e["from"],
            candidate_version=e["to"],
            security=e["security"],
        )
        for e in entries
    ]
    scores = score_items(
        model,
        update_items(rows, now=datetime.now(UTC)),
        table=shipped_table(),
        outcomes=fleet_outcomes(session),
        thresholds=thresholds,
    )
    for e, s in zip(entries, scores, strict=True):
        e["reasons"] = list(s.reasons)
        e["probability_now"] = round(s.probability, 4)
    return version
