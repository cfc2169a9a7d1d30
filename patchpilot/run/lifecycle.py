"""A run's life: start, drive stage by stage, pause, resume, approve, abort, finish, and the
manual rollback of a run's hosts.

Every step is written to the store when it starts and again when it ends (run.journal), so a
run killed at any point resumes with `--resume` from what the store says, without patching a
host twice or losing its rollback data. What happens to hosts goes through a FleetOps
(ops.fleetops.AnsibleOps in real runs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine

from patchpilot.errors import BadInputError, ExitCode, PatchpilotError
from patchpilot.ops.fleetops import LOCK_TIMEOUT, FleetOps, PatchRun
from patchpilot.plan.load import plan_from_dict
from patchpilot.plan.model import ExpandedPlan
from patchpilot.plan.spec import PlanSpec
from patchpilot.plan.window import in_window, next_window
from patchpilot.run import decide
from patchpilot.run.ids import new_run_id
from patchpilot.run.journal import Journal, create_run, load_run
from patchpilot.run.locks import (
    Heartbeat,
    RunLocked,
    acquire_locks,
    release_locks,
    run_live,
    who,
)
from patchpilot.run.states import FINISHED, HostEvent, HostState, RunEvent, RunState
from patchpilot.run.steps import RunCtx, close_patch, open_patch, rollback_hosts, run_batch
from patchpilot.store.models import Run, RunHost

__all__ = [
    "ApplyOptions",
    "RunLocked",
    "RunSummary",
    "abort_run",
    "load_run",
    "new_run_id",
    "resume_run",
    "rollback_run",
    "start_run",
]


@dataclass
class ApplyOptions:
    check: bool = False
    lock_timeout: int = LOCK_TIMEOUT
    interactive: bool = False
    confirm: Callable[[str], bool] | None = None  # asks a human; None when unattended
    progress: Callable[[str], None] = field(default=lambda _msg: None)
    # The step now running, for a live display: (stage name, "batch i/n", step, hosts).
    on_step: Callable[[str, str, str, Sequence[str]], None] = field(
        default=lambda _stage, _batch, _step, _hosts: None
    )
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    sleep: Callable[[float], None] = time.sleep
    # Called with the store when the run ends or pauses (the CLI updates the metrics).
    on_state: Callable[[Engine], None] = field(default=lambda _engine: None)


@dataclass
class RunSummary:
    run_id: str
    status: str
    exit_code: ExitCode
    message: str
    hosts: dict[str, str]


class _NoOps:
    """For operations that must not touch hosts (abort)."""

    def __getattr__(self, name: str) -> Any:
        raise PatchpilotError("internal: this operation must not touch hosts")


def _open(
    engine: Engine,
    run_id: str,
    ops: Any,
    opts: ApplyOptions,
    *,
    spec: PlanSpec | None = None,
    plan: ExpandedPlan | None = None,
    patching: PatchRun | None = None,
) -> RunCtx:
    """A run as its steps see it: its rows read once, its plan typed once."""
    names: dict[int, str] = {}

    def on_step(stage: int | None, batch: int | None, kind: str, hosts: Sequence[str]) -> None:
        if stage is None or not 0 <= stage < len(ctx.plan.stages):
            opts.on_step("", "", kind, hosts)
            return
        st = ctx.plan.stages[stage]
        where = f"batch {(batch or 0) + 1}/{len(st.batches)}" if batch is not None else ""
        opts.on_step(names.setdefault(stage, st.name), where, kind, hosts)

    journal = Journal(engine, run_id, on_step=on_step)
    frozen = journal.run.plan
    where = f"run {run_id} plan"
    ctx = RunCtx(
        journal=journal,
        plan=plan or ExpandedPlan.from_dict(frozen["expansion"], where=where),
        spec=spec or plan_from_dict(frozen["spec"], where),
        ops=ops,
        opts=opts,
        patching=patching,
    )
    return ctx


# --- starting, resuming, approving, aborting -------------------------------------------------


def start_run(
    engine: Engine,
    spec: PlanSpec,
    frozen_data: dict[str, Any],
    *,
    inventory: str,
    ops: FleetOps,
    opts: ApplyOptions,
    run_id: str | None = None,
    patching: PatchRun | None = None,
) -> RunSummary:
    """Create the run from a frozen plan and drive it. `patching`, a patch process started
    for this run id before the plan was validated (warmstart), is adopted if the run asks
    for exactly it, and closed in any case."""
    try:
        return _start(
            engine,
            spec,
            frozen_data,
            inventory,
            ops,
            opts,
            run_id or new_run_id(opts.now()),
            patching,
        )
    finally:
        if patching is not None:
            patching.close()


def _start(
    engine: Engine,
    spec: PlanSpec,
    frozen_data: dict[str, Any],
    inventory: str,
    ops: FleetOps,
    opts: ApplyOptions,
    run_id: str,
    patching: PatchRun | None,
) -> RunSummary:
    now = opts.now()
    if spec.window is not None and not opts.check and not in_window(spec.window, now):
        start, end = next_window(spec.window, now)
        raise BadInputError(
            f"outside the maintenance window of plan {spec.name!r}: nothing was touched",
            hint=f"the next window opens {start.isoformat()} and closes {end.isoformat()}",
        )
    plan = ExpandedPlan.from_dict(frozen_data["expansion"], where=f"plan {spec.name}")
    if not plan.hosts:
        raise BadInputError(
            f"plan {spec.name!r} selects nothing to patch",
            hint="`patchpilot plan` shows why each host and update was left out",
        )
    sha256 = str(frozen_data["sha256"])
    user, controller = who()
    hosts = [
        RunHost(
            run_id=run_id,
            host=h["name"],
            stage=plan.positions[h["name"]][0],
            batch=plan.positions[h["name"]][1],
            order=order,
            updates=list(h["updates"]),
        )
        for order, h in enumerate(frozen_data["expansion"]["hosts"])
    ]
    create_run(
        engine,
        Run(
            id=run_id,
            plan_name=spec.name,
            plan_sha256=sha256,
            plan=frozen_data,
            inventory=inventory,
            status=RunState.RUNNING,
            check_mode=opts.check,
            emergency=spec.emergency,
            shadow=spec.health_policy.shadow,
            pid=os.getpid(),
            controller=controller,
            user=user,
        ),
        hosts,
        "apply emergency plan" if spec.emergency else "apply",
        plan=spec.name,
        plan_sha256=sha256,
        hosts=len(hosts),
        check=opts.check,
        emergency=spec.emergency,
    )
    ctx = _open(engine, run_id, ops, opts, spec=spec, plan=plan, patching=patching)
    if spec.emergency:
        ctx.say("EMERGENCY plan: all at once, recorded as such in the audit log")
    try:
        acquire_locks(engine, run_id, list(plan.hosts), progress=ctx.say)
    except RunLocked:
        ctx.journal.set_run(event=RunEvent.REFUSE, message="hosts locked by another run")
        raise
    return _drive(ctx)


def resume_run(
    engine: Engine,
    run_id: str,
    *,
    ops: FleetOps,
    opts: ApplyOptions,
    approve: bool = False,
    reason: str | None = None,
) -> RunSummary:
    run = load_run(engine, run_id)
    if run.status in FINISHED:
        raise BadInputError(
            f"run {run_id} is {run.status}: there is nothing to resume",
            hint="start a new run with `patchpilot apply`",
        )
    if run.status == RunState.PAUSED and not approve:
        raise BadInputError(
            f"run {run_id} is paused: {run.pause_reason}",
            hint=f"continue it with `patchpilot approve {run_id}` or stop it with "
            f"`patchpilot abort {run_id}`",
        )
    if run_live(engine, run):
        raise RunLocked(
            f"run {run_id} is still running (pid {run.pid} on {run.controller})",
            hint="wait for it, or stop that process first; a run on another controller is "
            "live until its lease expires",
        )
    # A run keeps the mode it was started in: a crashed dry run resumes as a dry run.
    ctx = _open(engine, run_id, ops, replace(opts, check=run.check_mode))
    acquire_locks(engine, run_id, list(ctx.journal.hosts), progress=ctx.say)
    ctx.journal.audit(
        "approve" if approve else "resume",
        was=run.status,
        pause_reason=run.pause_reason,
        reason=reason,
    )
    if approve:
        with ctx.journal.step("approve", stage=run.stage_index, batch=run.batch_index) as d:
            d["reason"] = run.pause_reason
        _accept_patched(ctx, run.pause_reason)
    ctx.journal.set_run(event=RunEvent.CONTINUE, pid=os.getpid(), pause_reason=None)
    if run.status == RunState.RUNNING:
        ctx.say(f"resuming run {run_id} after an interruption")
    _finish_interrupted_rollbacks(ctx)
    return _drive(ctx)


def _finish_interrupted_rollbacks(ctx: RunCtx) -> None:
    """Hosts a crash caught mid-rollback, in any stage (a stage-wide or whole-run rollback
    spans batches), are rolled back again before anything else: it installs fixed versions,
    so doing it twice is safe, and each is verified with its own stage's checks."""
    rows = [r for r in ctx.journal.rows() if r.status == HostState.ROLLING_BACK]
    if rows:
        rollback_hosts(ctx, rows, reason="resumed after a crash", stage=None, batch=None)


def abort_run(engine: Engine, run_id: str, *, reason: str | None = None) -> RunSummary:
    run = load_run(engine, run_id)
    if run.status in FINISHED - {RunState.REFUSED}:
        raise BadInputError(f"run {run_id} is already {run.status}")
    if run_live(engine, run):
        raise RunLocked(
            f"run {run_id} is running (pid {run.pid} on {run.controller})",
            hint="stop that process first (Ctrl-C), then abort",
        )
    ctx = _open(engine, run_id, _NoOps(), ApplyOptions())
    ctx.journal.audit("abort", reason=reason, was=run.status)
    return finish(ctx, RunEvent.ABORT, f"aborted{': ' + reason if reason else ''}")


# --- driving the run -------------------------------------------------------------------------


def pause(
    ctx: RunCtx, reason: str, *, stage: int, batch: int, ask: bool = True
) -> RunSummary | None:
    """Wait for a human: at a prompt when one is there (and `ask`), else exit 'paused' for
    `patchpilot approve`. Returns None when approved at the prompt (go on)."""
    with ctx.journal.step("pause", stage=stage, batch=batch) as d:
        d["reason"] = reason
    ctx.say(f"PAUSED: {reason}")
    confirm = ctx.opts.confirm if ask else None
    if confirm is not None and confirm(f"{reason}. Approve and continue?"):
        ctx.journal.audit("approve", reason=reason, at_prompt=True)
        with ctx.journal.step("approve", stage=stage, batch=batch) as d:
            d["reason"] = reason
        _accept_patched(ctx, reason)
        return None
    ctx.journal.pause(reason, stage=stage, batch=batch)
    ctx.opts.on_state(ctx.journal.engine)
    return RunSummary(
        ctx.run_id,
        RunState.PAUSED,
        ExitCode.PAUSED,
        f"paused: {reason}; continue with `patchpilot approve {ctx.run_id}` or stop with "
        f"`patchpilot abort {ctx.run_id}`",
        ctx.journal.states(),
    )


def _accept_patched(ctx: RunCtx, reason: str | None) -> None:
    """A human approved: patched hosts waiting on an unclear verdict count as healthy."""
    for r in ctx.journal.rows():
        if r.status == HostState.PATCHED:
            ctx.journal.move(r.host, HostEvent.ACCEPT, message=f"approved: {reason}")


def finish(ctx: RunCtx, event: RunEvent, message: str) -> RunSummary:
    """The run's end: its state, exit code and message, its locks freed, its audit."""
    code = decide.exit_code(event)
    status = ctx.journal.end(event, message=message, exit_code=code)
    ctx.opts.on_state(ctx.journal.engine)
    ctx.say(message)
    return RunSummary(ctx.run_id, status, code, message, ctx.journal.states())


def _drive(ctx: RunCtx) -> RunSummary:
    # Ansible starts (a second or so) while the first batch's guards and baseline run.
    open_patch(ctx)
    try:
        with Heartbeat(ctx.journal.engine, ctx.run_id):
            return _drive_stages(ctx)
    finally:
        close_patch(ctx)


def _drive_stages(ctx: RunCtx) -> RunSummary:
    run = ctx.journal.run
    window = ctx.spec.window
    for si in range(run.stage_index, len(ctx.plan.stages)):
        stage = ctx.plan.stages[si]
        first_batch = run.batch_index if si == run.stage_index else 0
        if not stage.batches:
            continue
        started = any(r.status != HostState.PENDING for r in ctx.journal.rows(stage=si))
        if not started and not ctx.opts.check:
            now = ctx.opts.now()
            if window is not None and not in_window(window, now):
                # A rule, not a question of evidence: no answer at a prompt overrides it, and
                # an approval outside a window pauses again here.
                opens, closes = next_window(window, now)
                summary = pause(
                    ctx,
                    f"the maintenance window has ended; stage {stage.name} was not started "
                    f"(approve it within the next window, {opens.isoformat()} to "
                    f"{closes.isoformat()})",
                    stage=si,
                    batch=0,
                    ask=False,
                )
                assert summary is not None
                return summary
            if stage.settings.approval and not ctx.journal.approved(si):
                summary = pause(
                    ctx, f"stage {stage.name} needs approval before it starts", stage=si, batch=0
                )
                if summary is not None:
                    return summary
        for bi in range(first_batch, len(stage.batches)):
            ctx.journal.set_run(stage_index=si, batch_index=bi)
            ctx.say(
                f"stage {stage.name} batch {bi + 1}/{len(stage.batches)}: "
                + " ".join(r.host for r in ctx.journal.rows(stage=si, batch=bi))
            )
            outcome = run_batch(ctx, si, bi)
            if outcome is not None:
                return outcome
        ctx.journal.set_run(stage_index=si + 1, batch_index=0)
    event, message = decide.run_end(ctx.journal.rows(), check=ctx.opts.check)
    return finish(ctx, event, message)


# --- manual rollback -------------------------------------------------------------------------


def rollback_run(
    engine: Engine,
    run_id: str,
    *,
    hosts: Sequence[str] | None,
    ops: FleetOps,
    opts: ApplyOptions,
    reason: str | None = None,
    limit: str | None = None,
) -> RunSummary:
    """A manual rollback of hosts a finished or paused run patched, in the plan's rollback
    sequence; `limit` is the --limit pattern that chose `hosts`, for the audit log."""
    run = load_run(engine, run_id)
    if run.check_mode:
        raise BadInputError(
            f"run {run_id} was a --check run: it changed nothing, so there is nothing to roll back"
        )
    if run_live(engine, run):
        raise RunLocked(
            f"run {run_id} is running (pid {run.pid} on {run.controller})",
            hint="wait for it to end",
        )
    ctx = _open(engine, run_id, ops, opts)
    known = set(ctx.journal.hosts)
    if hosts:
        unknown = sorted(set(hosts) - known)
        if unknown:
            raise BadInputError(
                f"host {unknown[0]} is not part of run {run_id}",
                hint=f"the run's hosts: {', '.join(sorted(known))}",
            )
    scope = decide.manual_scope(ctx.journal.rows(), hosts)
    if not scope:
        raise BadInputError(
            f"nothing to roll back in run {run_id}" + (f" for {', '.join(hosts)}" if hosts else ""),
            hint="only hosts the run patched (status patched or healthy) or whose rollback was "
            "interrupted or failed, or named hosts whose patch stopped answering or timed out, "
            "can be rolled back",
        )
    names = [r.host for r in scope]
    pruned = ctx.journal.pruned()
    gone = [h for h in names if h in pruned]
    if gone:
        when = pruned[gone[0]]
        raise BadInputError(
            f"the rollback artifacts of run {run_id} were pruned from {', '.join(gone)} "
            f"({f'on {when:%Y-%m-%d}' if when else 'earlier'}): nothing to install the "
            "previous versions from",
            hint="roll those hosts back by hand from an archive that keeps the versions "
            f"(`patchpilot runs show {run_id}` lists them), or leave them out with --hosts",
        )
    acquire_locks(engine, run_id, names, progress=ctx.say)
    try:
        detail = {"limit": limit} if limit is not None else {}
        ctx.journal.audit("manual rollback", hosts=names, reason=reason, **detail)
        with Heartbeat(engine, run_id):
            rollback_hosts(
                ctx,
                scope,
                reason=f"manual rollback: {reason}" if reason else "manual rollback",
                stage=None,
                batch=None,
            )
    finally:
        release_locks(engine, run_id, keep_paused=run.status == RunState.PAUSED)
    states = ctx.journal.states()
    bad = sorted(h for h in names if states.get(h) != HostState.ROLLED_BACK)
    msg = f"rolled back {len(names) - len(bad)} of {len(names)} hosts" + (
        f"; failed: {', '.join(bad)}" if bad else ""
    )
    ctx.journal.set_run(message=msg)
    ctx.say(msg)
    return RunSummary(run_id, run.status, ExitCode.FAILED if bad else ExitCode.OK, msg, states)
