"""`patchpilot runs list|show`: what runs did, with their evidence and audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from patchpilot.cli.context import state
from patchpilot.cli.inventory import JsonOpt
from patchpilot.console import console, info, print_json, print_table
from patchpilot.errors import BadInputError

if TYPE_CHECKING:  # the store loads when a command runs, not when the CLI starts
    from sqlmodel import Session

    from patchpilot.store.models import Run

app = typer.Typer(
    help="Runs: what happened, host by host, with the evidence.", no_args_is_help=True
)


def _t(d: datetime | None) -> str:
    if d is None:
        return ""
    d = d if d.tzinfo else d.replace(tzinfo=UTC)
    return d.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def run_summary(session: Session, run: Run) -> dict[str, Any]:
    from sqlmodel import select

    from patchpilot.store.models import RunHost

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


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every run, newest first."""
    from sqlmodel import col, select

    from patchpilot.store.db import session_scope
    from patchpilot.store.models import Run

    with session_scope(state(ctx).engine()) as s:
        runs = s.exec(select(Run).order_by(col(Run.started_at).desc())).all()
        rows = [run_summary(s, r) for r in runs]
    if as_json:
        print_json(rows)
        return
    if not rows:
        info("no runs yet")
        return
    print_table(
        None,
        ["run", "plan", "status", "started", "hosts", "states", "message"],
        [
            (
                r["id"],
                r["plan"] + (" (EMERGENCY)" if r["emergency"] else ""),
                r["status"],
                r["started_at"],
                r["hosts"],
                ", ".join(f"{k} {v}" for k, v in sorted(r["host_states"].items())),
                r["message"] or "",
            )
            for r in rows
        ],
    )


def run_detail(session: Session, run_id: str) -> dict[str, Any]:
    from sqlmodel import col, select

    from patchpilot.store.models import AuditEvent, Incident, Run, RunHost, RunStep, RunVerdict

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

    def stage_name(i: int | None) -> str | None:
        return stages[i] if i is not None and 0 <= i < len(stages) else None

    return {
        **run_summary(session, run),
        "plan_sha256": run.plan_sha256,
        "inventory": run.inventory,
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


@app.command()
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="A run id, or `last`.")],
    as_json: JsonOpt = False,
) -> None:
    """A run's timeline, per-host results, verdicts with their evidence, incidents, audit."""
    from patchpilot.store.db import session_scope

    with session_scope(state(ctx).engine()) as s:
        d = run_detail(s, run_id)
    if as_json:
        print_json(d)
        return
    console.print(
        f"[bold]run {d['id']}[/]  plan {escape(d['plan'])}  status [bold]{d['status']}[/]"
        + ("  [bold red]EMERGENCY[/]" if d["emergency"] else "")
        + ("  (check mode)" if d["check_mode"] else "")
        + ("  (shadow mode)" if d["shadow"] else "")
    )
    # What hosts, apt and operators wrote is printed as text, never read as Rich markup.
    console.print(
        f"started {d['started_at']} by {d['user']}; finished {d['finished_at'] or '-'}",
        markup=False,
    )
    if d["message"]:
        console.print(d["message"], markup=False)
    print_table(
        "timeline",
        ["at", "stage", "batch", "step", "state", "hosts"],
        [
            (
                t["at"],
                t["stage"] or "",
                t["batch"] or "",
                t["step"],
                t["state"],
                " ".join(t["hosts"]),
            )
            for t in d["timeline"]
        ],
    )
    print_table(
        "hosts",
        ["host", "stage", "batch", "status", "updates", "message"],
        [
            (
                h["host"],
                h["stage"],
                h["batch"],
                h["status"],
                "; ".join(h["updates"]),
                h["message"] or "",
            )
            for h in d["hosts"]
        ],
    )
    for v in d["verdicts"]:
        console.print(
            f"verdict stage {v['stage']} batch {v['batch']}: [bold]{v['verdict']}[/] -> "
            f"{v['action']}: {escape(v['evidence'].get('reason', ''))}"
        )
        for hv in v["evidence"].get("hosts", []):
            console.print(f"  {hv['host']}: {hv['verdict']} - {hv['reason']}", markup=False)
            for m in hv.get("metrics", []):
                if m["verdict"] != "healthy":
                    console.print(
                        f"    {m['check']}.{m['metric']}: {m['verdict']}: {m['reason']}",
                        markup=False,
                    )
                    for line in m.get("lines") or []:
                        console.print(f"      | {line}", markup=False)
    for i in d["incidents"]:
        console.print(f"incident {i['at']}: {i['reason']} ({', '.join(i['hosts'])})", markup=False)
    for a in d["audit"]:
        why = ", ".join(
            f"{k}={_short(v)}" for k, v in sorted(a["detail"].items()) if v not in (None, "", [])
        )
        console.print(
            f"audit {a['at']} {a['user']}@{a['controller']}: {a['action']}"
            + (f" ({why})" if why else ""),
            markup=False,
        )


def _short(value: Any, limit: int = 80) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
