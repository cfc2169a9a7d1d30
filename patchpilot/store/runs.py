"""The run queries the CLI shows (and `--json` prints): a run's summary and its whole record,
as plain data."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from patchpilot.errors import BadInputError
from patchpilot.store.models import AuditEvent, Incident, Run, RunHost, RunStep, RunVerdict


def _t(d: datetime | None) -> str:
    if d is None:
        return ""
    d = d if d.tzinfo else d.replace(tzinfo=UTC)
    return d.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def run_summary(session: Session, run: Run) -> dict[str, Any]:
    hosts = session.exec(select(RunHost).where(RunHost.run_id == run.id)).all()
    counts: dict[str, int] = {}
    for h in hosts:
        counts[h.status] = counts.get(h.status, 0) + 1
    return {
        "id": run.id,
        "plan": run.plan_name,
        "status": run.status,
        "emergency": run.emergency,
        "check_mode": run.check_mode,
        "shadow": run.shadow,
        "started_at": _t(run.started_at),
        "finished_at": _t(run.finished_at),
        "hosts": len(hosts),
        "host_states": counts,
        "message": run.message or run.pause_reason,
        "exit_code": run.exit_code,
        "user": run.user,
    }


def list_runs(session: Session) -> list[dict[str, Any]]:
    """Every run's summary, newest first."""
    runs = session.exec(select(Run).order_by(col(Run.started_at).desc())).all()
    return [run_summary(session, r) for r in runs]


def run_detail(session: Session, run_id: str) -> dict[str, Any]:
    if run_id == "last":
        newest = session.exec(select(Run).order_by(col(Run.started_at).desc())).first()
        if newest is None:
            raise BadInputError("no runs yet", hint="start one with `patchpilot apply`")
        run_id = newest.id
    run = session.get(Run, run_id)
    if run is None:
        raise BadInputError(f"no run {run_id!r}", hint="`patchpilot runs list` shows the runs")
    stages = [s["name"] for s in run.plan["expansion"]["stages"]]
    steps = session.exec(
        select(RunStep).where(RunStep.run_id == run_id).order_by(col(RunStep.id))
    ).all()
    hosts = session.exec(
        select(RunHost).where(RunHost.run_id == run_id).order_by(col(RunHost.order))
    ).all()
    verdicts = session.exec(
        select(RunVerdict).where(RunVerdict.run_id == run_id).order_by(col(RunVerdict.id))
    ).all()
    incidents = session.exec(
        select(Incident).where(Incident.run_id == run_id).order_by(col(Incident.id))
    ).all()
    audit = session.exec(
        select(AuditEvent).where(AuditEvent.run_id == run_id).order_by(col(AuditEvent.id))
    ).all()

    kept: dict[str, dict[str, dict[str, Any]]] = {}
    pruned: dict[str, str] = {}
    for st in steps:
        if st.kind == "snapshot" and st.state == "done":
            det = st.detail or {}
            for h in st.hosts:
                if h in kept:
                    continue  # the first snapshot is the one a rollback returns to
                kept[h] = {
                    pkg: {
                        "version": (det.get("versions") or {}).get(pkg),
                        "source": (det.get("sources") or {}).get(pkg),
                        "sha256": (det.get("sha256") or {}).get(pkg),
                        "note": (det.get("notes") or {}).get(pkg),
                        "path": path,
                    }
                    for pkg, path in sorted((det.get("artifacts") or {}).items())
                }
        elif st.kind == "prune" and st.state == "done":
            for h in st.hosts:
                pruned[h] = _t(st.finished_at)

    def stage_name(i: int | None) -> str | None:
        return stages[i] if i is not None and 0 <= i < len(stages) else None

    return {
        **run_summary(session, run),
        "plan_sha256": run.plan_sha256,
        "inventory": run.inventory,
        "limit": run.plan.get("limit"),
        "timeline": [
            {
                "at": _t(st.started_at),
                "finished": _t(st.finished_at),
                "stage": stage_name(st.stage),
                "batch": None if st.batch is None else st.batch + 1,
                "step": st.kind,
                "state": st.state,
                "hosts": st.hosts,
                "detail": {k: v for k, v in st.detail.items() if k != "measurements"},
            }
            for st in steps
        ],
        "hosts": [
            {
                "host": h.host,
                "stage": stage_name(h.stage),
                "batch": h.batch + 1,
                "status": h.status,
                "failure": h.failure,
                "message": h.message,
                "before": h.snapshot,
                "artifacts": kept.get(h.host, {}),
                "artifacts_pruned": pruned.get(h.host),
                "updates": [f"{u['package']} {u['from']} -> {u['to']}" for u in h.updates],
            }
            for h in hosts
        ],
        "verdicts": [
            {
                "stage": stage_name(v.stage),
                "batch": v.batch + 1,
                "verdict": v.verdict,
                "action": v.action,
                "shadow": v.shadow,
                "at": _t(v.created_at),
                "evidence": v.evidence,
            }
            for v in verdicts
        ],
        "incidents": [
            {
                "at": _t(i.created_at),
                "stage": stage_name(i.stage),
                "hosts": i.hosts,
                "reason": i.reason,
                "evidence": i.evidence,
            }
            for i in incidents
        ],
        "audit": [
            {
                "at": _t(a.at),
                "user": a.user,
                "controller": a.controller,
                "action": a.action,
                "detail": a.detail,
            }
            for a in audit
        ],
    }
