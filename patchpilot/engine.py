"""The run state machine: waves of batches, patch (preflight, snapshot, install), health gate,
rollback, pause and resume. Every step is written to the store when it starts and again when
it ends (SQLite in WAL mode, one transaction each), so a run killed at any point resumes with
`--resume` from what the store says, without patching a host twice or losing its rollback
data.

What happens to hosts goes through a FleetOps (fleetops.AnsibleOps in real runs)."""

from __future__ import annotations

import getpass
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from patchpilot.errors import BadInputError, ExitCode, PatchpilotError
from patchpilot.fleetops import (
    LOCK_TIMEOUT,
    FleetOps,
    HostResult,
    PatchRequest,
    PatchRun,
    deb_filename,
    on_impossible,
    run_rollback_dir,
    stage_timeouts,
)
from patchpilot.health.checks import CheckSpec, validate_check
from patchpilot.health.judge import judge_host
from patchpilot.health.policy import VerdictPolicy, batch_verdict, host_verdict
from patchpilot.health.types import BatchVerdict, HostVerdict, Measurement, Threshold, Verdict
from patchpilot.plan.expand import budget_exceeded
from patchpilot.plan.spec import FailureBudget, PlanSpec, parse_duration, plan_from_dict
from patchpilot.plan.window import in_window, next_window
from patchpilot.store.db import session_scope
from patchpilot.store.models import (
    AuditEvent,
    HostLock,
    Incident,
    PatchOutcome,
    PendingUpdate,
    Run,
    RunHost,
    RunStep,
    RunVerdict,
)
from patchpilot.warmstart import new_run_id

log = logging.getLogger(__name__)

MAX_CONTROLS = 3
TERMINAL = {"healthy", "failed", "rolled_back", "rollback_failed", "skipped"}
PATCHED = {"patched", "healthy"}
FINISHED = {"succeeded", "failed", "partial", "aborted", "check", "check_failed", "refused"}
# What a manual rollback takes: patched hosts, and hosts whose rollback did not finish.
RESTORABLE = PATCHED | {"rolling_back", "rollback_failed"}


class RunLocked(PatchpilotError):
    exit_code = ExitCode.LOCKED


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


@dataclass
class RunSummary:
    run_id: str
    status: str
    exit_code: ExitCode
    message: str
    hosts: dict[str, str]


def _who() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return user, socket.gethostname()


def audit(session: Session, action: str, *, run_id: str | None, **detail: Any) -> None:
    user, controller = _who()
    session.add(
        AuditEvent(user=user, controller=controller, run_id=run_id, action=action, detail=detail)
    )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- locks -----------------------------------------------------------------------------------


def acquire_locks(
    engine: Engine, run_id: str, hosts: Sequence[str], *, progress: Callable[[str], None]
) -> None:
    """Take every host for this run, or none. A lock of a dead process on this machine is
    stale and reclaimed; a paused run's lock (pid 0) holds until approve or abort."""
    _, controller = _who()
    try:
        with session_scope(engine) as s:
            held = s.exec(select(HostLock).where(col(HostLock.host).in_(list(hosts)))).all()
            for lock in held:
                if lock.run_id == run_id:
                    if lock.pid > 0 and lock.pid != os.getpid() and not _pid_alive(lock.pid):
                        progress(
                            f"taking over {lock.host} from this run's interrupted process "
                            f"(pid {lock.pid} is gone)"
                        )
                    s.delete(lock)
                    continue
                stale = lock.controller == controller and lock.pid > 0 and not _pid_alive(lock.pid)
                if not stale:
                    holder = "paused" if lock.pid == 0 else f"pid {lock.pid} on {lock.controller}"
                    raise RunLocked(
                        f"host {lock.host} is locked by run {lock.run_id} ({holder})",
                        hint=f"wait for it, or `patchpilot abort {lock.run_id}` if it must stop",
                    )
                progress(
                    f"reclaimed the stale lock on {lock.host} of run {lock.run_id} "
                    f"(pid {lock.pid} is gone)"
                )
                audit(s, "lock reclaimed", run_id=run_id, host=lock.host, stale_run=lock.run_id)
                s.delete(lock)
            s.flush()
            for h in hosts:
                s.add(HostLock(host=h, run_id=run_id, pid=os.getpid(), controller=controller))
    except IntegrityError as exc:
        raise RunLocked(
            "another run took some of these hosts at the same moment",
            hint="`patchpilot runs list` shows it",
        ) from exc


def release_locks(engine: Engine, run_id: str, *, keep_paused: bool = False) -> None:
    with session_scope(engine) as s:
        if keep_paused:
            for lock in s.exec(select(HostLock).where(HostLock.run_id == run_id)).all():
                lock.pid = 0
                s.add(lock)
        else:
            s.execute(delete(HostLock).where(col(HostLock.run_id) == run_id))


# --- plan access -----------------------------------------------------------------------------


def check_specs(stage_settings: Mapping[str, Any]) -> list[CheckSpec]:
    specs = []
    for i, h in enumerate(stage_settings.get("health") or []):
        spec = CheckSpec(
            check=h["check"],
            params=dict(h.get("params") or {}),
            critical=h.get("critical"),
            thresholds={
                metric: {k: v for k, v in (limits or {}).items() if v is not None}
                for metric, limits in (h.get("thresholds") or {}).items()
            },
            id=h.get("id"),
        )
        validate_check(spec, where=f"health[{i}]")
        specs.append(spec)
    return specs


def verdict_policy(spec: Mapping[str, Any]) -> VerdictPolicy:
    raw = dict(spec.get("health_policy") or {})
    raw.pop("shadow", None)
    return VerdictPolicy(**raw) if raw else VerdictPolicy()


@dataclass
class _Ctx:
    engine: Engine
    ops: FleetOps
    opts: ApplyOptions
    run_id: str
    frozen: dict[str, Any]  # the frozen plan as stored with the run
    patching: PatchRun | None = None  # the patch process of the remaining batches, once open

    @property
    def expansion(self) -> dict[str, Any]:
        return dict(self.frozen["expansion"])

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.frozen["spec"])

    @property
    def stages(self) -> list[dict[str, Any]]:
        return list(self.expansion["stages"])

    @property
    def shadow(self) -> bool:
        return bool((self.spec.get("health_policy") or {}).get("shadow", False))

    def plan_spec(self) -> PlanSpec:
        return plan_from_dict(self.spec, "run plan")

    def say(self, msg: str) -> None:
        log.info("%s: %s", self.run_id, msg)
        self.opts.progress(msg)


@contextmanager
def _step(
    ctx: _Ctx,
    kind: str,
    *,
    stage: int | None,
    batch: int | None,
    hosts: Sequence[str] = (),
    **detail: Any,
) -> Iterator[dict[str, Any]]:
    """A journal entry: written (committed) before the step, then again after it."""
    stages = ctx.stages
    if stage is not None and 0 <= stage < len(stages):
        n = len(stages[stage]["batches"])
        where = (
            stages[stage]["name"],
            f"batch {(batch or 0) + 1}/{n}" if batch is not None else "",
        )
    else:
        where = ("", "")
    ctx.opts.on_step(where[0], where[1], kind, list(hosts))
    with session_scope(ctx.engine) as s:
        row = RunStep(
            run_id=ctx.run_id, stage=stage, batch=batch, kind=kind, hosts=list(hosts), detail=detail
        )
        s.add(row)
        s.flush()
        step_id = row.id
    out: dict[str, Any] = dict(detail)
    state = "failed"
    try:
        yield out
        state = "done"
    finally:
        with session_scope(ctx.engine) as s:
            row2 = s.get(RunStep, step_id)
            if row2 is not None:
                row2.state = state
                row2.detail = out
                row2.finished_at = datetime.now(UTC)
                s.add(row2)


def _hosts(ctx: _Ctx, *, stage: int | None = None, batch: int | None = None) -> list[RunHost]:
    with session_scope(ctx.engine) as s:
        stmt = select(RunHost).where(RunHost.run_id == ctx.run_id)
        if stage is not None:
            stmt = stmt.where(RunHost.stage == stage)
        if batch is not None:
            stmt = stmt.where(RunHost.batch == batch)
        rows = s.exec(stmt.order_by(col(RunHost.order))).all()
        for r in rows:
            s.expunge(r)
        return list(rows)


def _update_host(ctx: _Ctx, host: str, **values: Any) -> None:
    with session_scope(ctx.engine) as s:
        row = s.exec(
            select(RunHost).where(RunHost.run_id == ctx.run_id, RunHost.host == host)
        ).one()
        for k, v in values.items():
            setattr(row, k, v)
        row.updated_at = datetime.now(UTC)
        s.add(row)


def _update_run(ctx: _Ctx, **values: Any) -> None:
    with session_scope(ctx.engine) as s:
        run = s.get(Run, ctx.run_id)
        assert run is not None
        for k, v in values.items():
            setattr(run, k, v)
        run.updated_at = datetime.now(UTC)
        s.add(run)


def _run_row(ctx: _Ctx) -> Run:
    with session_scope(ctx.engine) as s:
        run = s.get(Run, ctx.run_id)
        assert run is not None
        s.expunge(run)
        return run


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
        return _start_run(
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


def _start_run(
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
    expansion = frozen_data["expansion"]
    sha256 = str(frozen_data["sha256"])
    hosts = expansion["hosts"]
    if not hosts:
        raise BadInputError(
            f"plan {spec.name!r} selects nothing to patch",
            hint="`patchpilot plan` shows why each host and update was left out",
        )
    stage_index = {s["name"]: i for i, s in enumerate(expansion["stages"])}
    user, controller = _who()
    with session_scope(engine) as s:
        s.add(
            Run(
                id=run_id,
                plan_name=spec.name,
                plan_sha256=sha256,
                plan=frozen_data,
                inventory=inventory,
                status="running",
                check_mode=opts.check,
                emergency=spec.emergency,
                shadow=bool((frozen_data["spec"].get("health_policy") or {}).get("shadow")),
                pid=os.getpid(),
                controller=controller,
                user=user,
            )
        )
        for order, h in enumerate(hosts):
            s.add(
                RunHost(
                    run_id=run_id,
                    host=h["name"],
                    stage=stage_index[h["stage"]],
                    batch=int(h["batch"]),
                    order=order,
                    updates=list(h["updates"]),
                )
            )
        audit(
            s,
            "apply emergency plan" if spec.emergency else "apply",
            run_id=run_id,
            plan=spec.name,
            plan_sha256=sha256,
            hosts=len(hosts),
            check=opts.check,
            emergency=spec.emergency,
        )
    ctx = _Ctx(engine, ops, opts, run_id, frozen_data, patching)
    if spec.emergency:
        ctx.say("EMERGENCY plan: all at once, recorded as such in the audit log")
    try:
        acquire_locks(engine, run_id, [h["name"] for h in hosts], progress=ctx.say)
    except RunLocked:
        _update_run(ctx, status="refused", message="hosts locked by another run")
        raise
    return _drive(ctx)


def load_run(engine: Engine, run_id: str) -> Run:
    with session_scope(engine) as s:
        run = s.get(Run, run_id)
        if run is None:
            raise BadInputError(
                f"no run {run_id!r} in this store", hint="`patchpilot runs list` shows the runs"
            )
        s.expunge(run)
        return run


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
    if run.status == "paused" and not approve:
        raise BadInputError(
            f"run {run_id} is paused: {run.pause_reason}",
            hint=f"continue it with `patchpilot approve {run_id}` or stop it with "
            f"`patchpilot abort {run_id}`",
        )
    _, controller = _who()
    if (
        run.status == "running"
        and run.pid
        and run.pid != os.getpid()
        and run.controller == controller
        and _pid_alive(run.pid)
    ):
        raise RunLocked(
            f"run {run_id} is still running (pid {run.pid})",
            hint="wait for it, or stop that process first",
        )
    # A run keeps the mode it was started in: a crashed dry run resumes as a dry run.
    opts = replace(opts, check=run.check_mode)
    ctx = _Ctx(engine, ops, opts, run_id, run.plan)
    hosts = [h.host for h in _hosts(ctx)]
    acquire_locks(engine, run_id, hosts, progress=ctx.say)
    with session_scope(engine) as s:
        audit(
            s,
            "approve" if approve else "resume",
            run_id=run_id,
            was=run.status,
            pause_reason=run.pause_reason,
            reason=reason,
        )
    if approve:
        with _step(ctx, "approve", stage=run.stage_index, batch=run.batch_index) as d:
            d["reason"] = run.pause_reason
        _accept_patched(ctx, run.pause_reason)
    _update_run(ctx, status="running", pid=os.getpid(), pause_reason=None)
    if run.status == "running":
        ctx.say(f"resuming run {run_id} after an interruption")
    _finish_interrupted_rollbacks(ctx)
    return _drive(ctx)


def _finish_interrupted_rollbacks(ctx: _Ctx) -> None:
    """Hosts a crash caught mid-rollback, in any stage (a stage-wide or whole-run rollback
    spans batches), are rolled back again before anything else: it installs fixed versions,
    so doing it twice is safe, and each is verified with its own stage's checks."""
    by_stage: dict[int, list[RunHost]] = {}
    for r in _hosts(ctx):
        if r.status == "rolling_back":
            by_stage.setdefault(r.stage, []).append(r)
    for si, rows in sorted(by_stage.items(), reverse=True):
        specs = check_specs(ctx.stages[si]["settings"])
        _rollback(ctx, rows, reason="resumed after a crash", stage=si, batch=None, specs=specs)


def abort_run(engine: Engine, run_id: str, *, reason: str | None = None) -> RunSummary:
    run = load_run(engine, run_id)
    if run.status in FINISHED - {"refused"}:
        raise BadInputError(f"run {run_id} is already {run.status}")
    _, controller = _who()
    if run.status == "running" and run.controller == controller and _pid_alive(run.pid or 0):
        raise RunLocked(
            f"run {run_id} is running (pid {run.pid})",
            hint="stop that process first (Ctrl-C), then abort",
        )
    ctx = _Ctx(engine, _NoOps(), ApplyOptions(), run_id, run.plan)
    with session_scope(engine) as s:
        audit(s, "abort", run_id=run_id, reason=reason, was=run.status)
    return _finish(ctx, "aborted", f"aborted{': ' + reason if reason else ''}")


class _NoOps:
    """For operations that must not touch hosts (abort)."""

    def __getattr__(self, name: str) -> Any:
        raise PatchpilotError("internal: this operation must not touch hosts")


# --- driving the run -------------------------------------------------------------------------


def _approved(ctx: _Ctx, stage: int) -> bool:
    with session_scope(ctx.engine) as s:
        row = s.exec(
            select(RunStep).where(
                RunStep.run_id == ctx.run_id,
                RunStep.kind == "approve",
                RunStep.stage == stage,
                RunStep.state == "done",
            )
        ).first()
        return row is not None


def _pause(
    ctx: _Ctx, reason: str, *, stage: int, batch: int, ask: bool = True
) -> RunSummary | None:
    """Wait for a human: at a prompt when one is there (and `ask`), else exit 'paused' for
    `patchpilot approve`. Returns None when approved at the prompt (go on)."""
    with _step(ctx, "pause", stage=stage, batch=batch) as d:
        d["reason"] = reason
    ctx.say(f"PAUSED: {reason}")
    confirm = ctx.opts.confirm if ask else None
    if confirm is not None and confirm(f"{reason}. Approve and continue?"):
        with session_scope(ctx.engine) as s:
            audit(s, "approve", run_id=ctx.run_id, reason=reason, at_prompt=True)
        with _step(ctx, "approve", stage=stage, batch=batch) as d:
            d["reason"] = reason
        _accept_patched(ctx, reason)
        return None
    _update_run(ctx, status="paused", pause_reason=reason, stage_index=stage, batch_index=batch)
    release_locks(ctx.engine, ctx.run_id, keep_paused=True)
    return RunSummary(
        ctx.run_id,
        "paused",
        ExitCode.PAUSED,
        f"paused: {reason}; continue with `patchpilot approve {ctx.run_id}` or stop with "
        f"`patchpilot abort {ctx.run_id}`",
        _host_states(ctx),
    )


def _accept_patched(ctx: _Ctx, reason: str | None) -> None:
    """A human approved: patched hosts waiting on an unclear verdict count as healthy."""
    for r in _hosts(ctx):
        if r.status == "patched":
            _update_host(ctx, r.host, status="healthy", message=f"approved: {reason}")


def _host_states(ctx: _Ctx) -> dict[str, str]:
    return {h.host: h.status for h in _hosts(ctx)}


TODO = ("pending", "ready", "patching")  # hosts a batch still has to patch


def _drive(ctx: _Ctx) -> RunSummary:
    # Ansible starts (a second or so) while the first batch's guards and baseline run.
    _open_patch(ctx)
    try:
        return _drive_batches(ctx)
    finally:
        _close_patch(ctx)


def _open_patch(ctx: _Ctx, *, force: bool = False) -> None:
    """One patch process for every batch from the run's position on (fleetops.PatchRun);
    one already open for exactly that (started while patchpilot loaded) is kept."""
    run = _run_row(ctx)
    request = PatchRequest.build(
        [
            ((r.stage, r.batch), r.host, _targets(r))
            for r in _hosts(ctx)
            if (r.stage, r.batch) >= (run.stage_index, run.batch_index) and r.status in TODO
        ],
        run_id=ctx.run_id,
        reboot=str(ctx.expansion.get("reboot", "if_needed")),
        lock_timeout=ctx.opts.lock_timeout,
        on_impossible=on_impossible(ctx.spec),
        check=ctx.opts.check,
        stage_timeouts=stage_timeouts(ctx.stages),
    )
    if ctx.patching is not None and ctx.patching.request == request and not force:
        log.debug("%s: using the patch process started while patchpilot loaded", ctx.run_id)
        return
    _close_patch(ctx)
    if request.batches:
        log.debug("%s: starting the patch process for %d batches", ctx.run_id, len(request.batches))
        ctx.patching = ctx.ops.open_patch(request)


def _close_patch(ctx: _Ctx) -> None:
    if ctx.patching is not None:
        ctx.patching.close()
        ctx.patching = None


def _patch_batch(ctx: _Ctx, hosts: list[str]) -> dict[str, HostResult]:
    if ctx.patching is None or ctx.patching.next_hosts() != hosts:
        # The run's state moved in a way the open process did not plan for.
        _open_patch(ctx, force=True)
    assert ctx.patching is not None and ctx.patching.next_hosts() == hosts
    return ctx.patching.batch(hosts)


def _drive_batches(ctx: _Ctx) -> RunSummary:
    run = _run_row(ctx)
    stages = ctx.stages
    spec = ctx.plan_spec()
    for si in range(run.stage_index, len(stages)):
        stage = stages[si]
        batches = stage["batches"]
        first_batch = run.batch_index if si == run.stage_index else 0
        if not batches:
            continue
        stage_started = any(h.status != "pending" for h in _hosts(ctx, stage=si))
        if not stage_started and not ctx.opts.check:
            now = ctx.opts.now()
            if spec.window is not None and not in_window(spec.window, now):
                # A rule, not a question of evidence: no answer at a prompt overrides it, and
                # an approval outside a window pauses again here.
                opens, closes = next_window(spec.window, now)
                summary = _pause(
                    ctx,
                    f"the maintenance window has ended; stage {stage['name']} was not started "
                    f"(approve it within the next window, {opens.isoformat()} to "
                    f"{closes.isoformat()})",
                    stage=si,
                    batch=0,
                    ask=False,
                )
                assert summary is not None
                return summary
            if stage["settings"].get("approval") and not _approved(ctx, si):
                summary = _pause(
                    ctx, f"stage {stage['name']} needs approval before it starts", stage=si, batch=0
                )
                if summary is not None:
                    return summary
        for bi in range(first_batch, len(batches)):
            _update_run(ctx, stage_index=si, batch_index=bi)
            ctx.say(
                f"stage {stage['name']} batch {bi + 1}/{len(batches)}: "
                + " ".join(h.host for h in _hosts(ctx, stage=si, batch=bi))
            )
            outcome = _run_batch(ctx, si, bi)
            if outcome is not None:
                return outcome
        _update_run(ctx, stage_index=si + 1, batch_index=0)
    rows = _hosts(ctx)
    states = {r.host: r.status for r in rows}
    if ctx.opts.check:
        refused = [r for r in rows if r.status not in ("checked", "skipped")]
        if refused:
            return _finish(
                ctx,
                "check_failed",
                "check mode: nothing was changed; would not patch: "
                + "; ".join(f"{r.host} ({r.message})" for r in refused),
            )
        return _finish(ctx, "check", "check mode: nothing was changed")
    failed = sorted(h for h, st in states.items() if st not in ("healthy", "skipped"))
    skipped = sorted(h for h, st in states.items() if st == "skipped")
    if failed or skipped:
        healthy = len(states) - len(failed) - len(skipped)
        return _finish(
            ctx,
            "partial",
            f"{healthy} of {len(states)} hosts patched and healthy"
            + (f"; failed within the budget: {', '.join(failed)}" if failed else "")
            + (f"; skipped (packages held on the host): {', '.join(skipped)}" if skipped else ""),
        )
    return _finish(ctx, "succeeded", f"all {len(states)} hosts patched and healthy")


_EXIT = {
    "succeeded": ExitCode.OK,
    "check": ExitCode.OK,
    "check_failed": ExitCode.FAILED,
    "partial": ExitCode.PARTIAL,
    "failed": ExitCode.FAILED,
    "aborted": ExitCode.FAILED,
}


def _finish(ctx: _Ctx, status: str, message: str) -> RunSummary:
    code = _EXIT[status]
    _update_run(
        ctx, status=status, message=message, exit_code=int(code), finished_at=datetime.now(UTC)
    )
    release_locks(ctx.engine, ctx.run_id)
    with session_scope(ctx.engine) as s:
        audit(s, f"run {status}", run_id=ctx.run_id, message=message)
    ctx.say(message)
    return RunSummary(ctx.run_id, status, code, message, _host_states(ctx))


def _controls(ctx: _Ctx, stage: int, batch: int, hosts: Sequence[RunHost]) -> list[str]:
    """Unpatched hosts of the same groups, from later batches of the plan."""
    groups: set[str] = set()
    by_name = {h["name"]: h for h in ctx.expansion["hosts"]}
    for h in hosts:
        groups.update(by_name[h.host]["groups"])
    later = [
        r
        for r in _hosts(ctx)
        if (r.stage, r.batch) > (stage, batch)
        and r.status == "pending"
        and groups & set(by_name[r.host]["groups"])
    ]
    return [r.host for r in later[:MAX_CONTROLS]]


def _targets(row: RunHost) -> dict[str, str]:
    return {u["package"]: u["to"] for u in row.updates}


def _snapshot(row: RunHost) -> dict[str, str]:
    """The versions a rollback returns to: the host's snapshot, or, for a host that never
    answered with one, the versions it had when the plan was made."""
    return dict(row.snapshot) or {u["package"]: u["from"] for u in row.updates if u.get("from")}


def _measurements_to_json(data: Mapping[str, Sequence[Measurement]]) -> dict[str, Any]:
    return {h: [m.to_dict() for m in ms] for h, ms in data.items()}


def _measurements_from_json(data: Mapping[str, Any]) -> dict[str, list[Measurement]]:
    return {h: [Measurement.from_dict(m) for m in ms] for h, ms in data.items()}


def _keyed(measurements: Sequence[Measurement]) -> dict[tuple[str, str], list[Measurement]]:
    """Measurements by (check, metric), as the judge takes references."""
    out: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        out.setdefault((m.check, m.metric), []).append(m)
    return out


def _judge(
    ctx: _Ctx,
    host: str,
    after: Sequence[Measurement],
    *,
    baseline: Sequence[Measurement],
    control: Sequence[Measurement],
    specs: Sequence[CheckSpec],
) -> HostVerdict:
    """One host's verdict under the plan's policy, each metric held to its check's
    thresholds (a metric no check of the stage owns, such as an unreachable host's ssh, must
    be at least 1)."""
    by_name = {spec.name: spec for spec in specs}
    thresholds = {
        (m.check, m.metric): (
            by_name[m.check].threshold(m.metric) if m.check in by_name else Threshold(min=1)
        )
        for m in after
    }
    judgements = judge_host(
        host, after, baseline=_keyed(baseline), control=_keyed(control), thresholds=thresholds
    )
    return host_verdict(host, judgements, verdict_policy(ctx.spec))


def _saved_baseline(ctx: _Ctx, stage: int, batch: int) -> dict[str, Any] | None:
    with session_scope(ctx.engine) as s:
        row = s.exec(
            select(RunStep)
            .where(
                RunStep.run_id == ctx.run_id,
                RunStep.kind == "baseline",
                RunStep.stage == stage,
                RunStep.batch == batch,
                RunStep.state == "done",
            )
            .order_by(col(RunStep.id).desc())
        ).first()
        return None if row is None else dict(row.detail)


@dataclass
class _Batch:
    """One batch as its steps see it: where it is in the plan, and what each step hands on
    to the next (the store holds the hosts' states; this holds what is not in it yet)."""

    si: int
    bi: int
    stage: dict[str, Any]
    specs: list[CheckSpec]
    todo: list[RunHost] = field(default_factory=list)  # hosts still to patch
    controls: list[str] = field(default_factory=list)
    baseline: dict[str, list[Measurement]] = field(default_factory=dict)
    after: dict[str, list[Measurement]] = field(default_factory=dict)
    patch_started: float = 0.0
    verdict: BatchVerdict | None = None
    unclear: list[HostVerdict] = field(default_factory=list)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.stage["settings"])

    @property
    def on_failure(self) -> str:
        return str(self.settings.get("on_failure", "rollback_wave"))

    def rows(self, ctx: _Ctx) -> list[RunHost]:
        return _hosts(ctx, stage=self.si, batch=self.bi)

    def patched(self, ctx: _Ctx) -> list[RunHost]:
        return [r for r in self.rows(ctx) if r.status == "patched"]


def _find_todo(ctx: _Ctx, b: _Batch) -> RunSummary | None:
    """The batch's hosts still to patch (all of them, or after a crash those it had not
    finished), and the unpatched hosts that serve as its controls."""
    rows = b.rows(ctx)
    b.todo = [r for r in rows if r.status in TODO]
    b.controls = _controls(ctx, b.si, b.bi, rows)
    return None


def _take_baseline(ctx: _Ctx, b: _Batch) -> RunSummary | None:
    """The batch's hosts before the patch, and the unpatched control hosts; a baseline
    recorded before a crash is used as it was."""
    saved = _saved_baseline(ctx, b.si, b.bi)
    if saved is not None:
        b.baseline = _measurements_from_json(saved.get("measurements", {}))
        b.controls = list(saved.get("controls", b.controls))
    elif b.specs and b.todo and not ctx.opts.check:
        hosts = [r.host for r in b.todo]
        with _step(ctx, "baseline", stage=b.si, batch=b.bi, hosts=hosts) as d:
            b.baseline = ctx.ops.measure(b.specs, hosts + b.controls, since=None)
            d["measurements"] = _measurements_to_json(b.baseline)
            d["controls"] = b.controls
    return None


def _patch(ctx: _Ctx, b: _Batch) -> RunSummary | None:
    """Preflight, snapshot, rollback artifacts and install, in one pass on each host. A host
    recorded as patching again after a crash is sent again: its snapshot persisted on the
    host is the one returned, and apt installs nothing a second time."""
    b.patch_started = time.time()
    if not b.todo:
        return None
    hosts = [r.host for r in b.todo]
    resumed = {r.host for r in b.todo if r.status == "patching"}
    for h in hosts:
        _update_host(ctx, h, status="patching")
    with _step(ctx, "patch", stage=b.si, batch=b.bi, hosts=hosts) as d:
        res = _patch_batch(ctx, hosts)
        d["results"] = {
            h: {
                "status": x.status,
                "phase": x.phase,
                "message": x.message,
                "installed": x.installed,
                "rebooted": x.rebooted,
            }
            for h, x in res.items()
        }
    _patched(ctx, b.si, b.bi, b.todo, res, resumed)
    return None


def _soak(ctx: _Ctx, b: _Batch) -> RunSummary | None:
    soak = parse_duration(b.settings.get("soak") or 0)
    if soak and b.patched(ctx):
        with _step(ctx, "soak", stage=b.si, batch=b.bi, seconds=soak):
            ctx.say(f"  soaking {soak}s")
            ctx.opts.sleep(soak)
    return None


def _measure(ctx: _Ctx, b: _Batch) -> RunSummary | None:
    """The patched hosts and the controls, measured again at the same moment."""
    patched = [r.host for r in b.patched(ctx)]
    if patched and b.specs:
        with _step(ctx, "health", stage=b.si, batch=b.bi, hosts=patched) as d:
            t0 = time.time()
            b.after = ctx.ops.measure(b.specs, patched + b.controls, since=b.patch_started)
            d["measurements"] = _measurements_to_json(b.after)
            d["controls"] = b.controls
            d["seconds"] = round(time.time() - t0, 2)
    return None


def _give_verdict(ctx: _Ctx, b: _Batch) -> RunSummary | None:
    """Each patched host judged against its baseline and the controls, and the batch's
    verdict recorded with its evidence (in shadow mode recorded only); unhealthy hosts are
    marked failed. A stage without health checks is judged by its installs alone."""
    patched = b.patched(ctx)
    if not b.specs:
        if patched:
            ctx.say("  no health checks in this stage: judged by the install alone")
        return None
    control = [m for c in b.controls for m in b.after.get(c, [])]
    verdicts = [
        _judge(
            ctx,
            r.host,
            b.after.get(r.host, []),
            baseline=b.baseline.get(r.host, []),
            control=control,
            specs=b.specs,
        )
        for r in patched
    ]
    if not verdicts:
        return None
    b.verdict = bv = batch_verdict(verdicts, verdict_policy(ctx.spec))
    unhealthy = [v for v in verdicts if v.verdict == Verdict.UNHEALTHY]
    unclear = [v for v in verdicts if v.verdict in (Verdict.DEGRADED, Verdict.INCONCLUSIVE)]
    action = "rollback failed hosts" if unhealthy else "pause" if unclear else "continue"
    shadow = ctx.shadow
    with session_scope(ctx.engine) as s:
        s.add(
            RunVerdict(
                run_id=ctx.run_id,
                stage=b.si,
                batch=b.bi,
                verdict=bv.verdict.label,
                action=f"would {action}" if shadow else action,
                shadow=shadow,
                evidence={**bv.to_dict(), "controls": b.controls, "patch_started": b.patch_started},
            )
        )
    ctx.say(
        f"  verdict: {bv.verdict.label}{' (shadow mode: not acted on)' if shadow else ''}"
        f" - {bv.reason}"
    )
    if shadow:
        return None
    b.unclear = unclear
    for v in unhealthy:
        _update_host(ctx, v.host, status="failed", failure="health_failed", message=v.reason)
    return None


def _restore_failed(ctx: _Ctx, b: _Batch) -> RunSummary | None:
    """Touched hosts (a snapshot was taken) that failed are put back, unless the stage
    halts as it is; a host that failed its preflight was never changed. Then every host's
    outcome is recorded for the risk model."""
    broken = [
        r
        for r in b.rows(ctx)
        if r.status == "failed"
        and r.snapshot
        and r.failure in ("install_failed", "health_failed", "unreachable")
    ]
    if broken and b.on_failure != "halt":
        _rollback(ctx, broken, reason="failed in this batch", stage=b.si, batch=b.bi, specs=b.specs)
    _record_outcomes(ctx, b.si, b.bi)
    return None


def _enforce_budget(ctx: _Ctx, b: _Batch) -> RunSummary | None:
    """Failures over the whole run so far against the failure budget; past it, an incident
    and the stage's on_failure: pause, or roll back the wave or everything, and fail."""
    all_rows = _hosts(ctx)
    # A host skipped because a package was held on it is the operator's choice, no failure.
    failures = sum(
        1 for r in all_rows if r.failure and r.failure != "unreachable" and r.status != "skipped"
    )
    unreachable = sum(1 for r in all_rows if r.failure == "unreachable")
    budget = _budget(ctx)
    if not budget_exceeded(failures, unreachable, len(all_rows), budget):
        return None
    allowed = ctx.expansion["failure_budget"].get("allowed")
    counted = failures + (unreachable if budget.unreachable_counts else 0)
    reason = (
        f"failure budget exceeded in stage {b.stage['name']}: {counted} host(s) counted "
        f"({failures} failed, {unreachable} unreachable"
        f"{'' if budget.unreachable_counts else ', not counted'}), {allowed} allowed"
    )
    on_failure = b.on_failure
    with session_scope(ctx.engine) as s:
        s.add(
            Incident(
                run_id=ctx.run_id,
                stage=b.si,
                batch=b.bi,
                hosts=[r.host for r in b.rows(ctx) if r.failure],
                reason=reason,
                evidence={
                    "verdict": b.verdict.to_dict() if b.verdict else None,
                    "on_failure": on_failure,
                },
            )
        )
    if on_failure == "pause":
        return _pause(ctx, reason, stage=b.si, batch=b.bi + 1)
    if on_failure in ("rollback_wave", "rollback_all"):
        scope = [
            r
            for r in all_rows
            if r.status in PATCHED and (on_failure == "rollback_all" or r.stage == b.si)
        ]
        if scope:
            _rollback(
                ctx,
                scope,
                reason=f"{on_failure.replace('_', ' ')} after: {reason}",
                stage=b.si,
                batch=b.bi,
                specs=b.specs,
            )
    return _finish(ctx, "failed", reason)


def _settle(ctx: _Ctx, b: _Batch) -> RunSummary | None:
    """Patched hosts with a clear verdict are healthy; an unclear one pauses the run before
    the next batch."""
    unclear = {v.host for v in b.unclear}
    for r in b.patched(ctx):
        if r.host not in unclear:
            _update_host(ctx, r.host, status="healthy")
    if not b.unclear:
        return None
    reason = "; ".join(f"{v.host}: {v.verdict.label} ({v.reason})" for v in b.unclear)
    return _pause(
        ctx,
        f"health unclear after batch {b.bi + 1} of stage {b.stage['name']}: {reason}",
        stage=b.si,
        batch=b.bi + 1,
    )


BatchStep = Callable[[_Ctx, _Batch], RunSummary | None]
# A batch's steps, in the order the engine walks them; a step that returns a summary ends
# the run there (failed, paused). Each step journals what it does (`_step`), so a resumed
# run finds where it stopped. Check mode walks only the first three: the patch is
# Ansible's check mode, and there is nothing to judge.
CHECK_STEPS: tuple[BatchStep, ...] = (_find_todo, _take_baseline, _patch)
BATCH_STEPS: tuple[BatchStep, ...] = (
    *CHECK_STEPS,
    _soak,
    _measure,
    _give_verdict,
    _restore_failed,
    _enforce_budget,
    _settle,
)


def _run_batch(ctx: _Ctx, si: int, bi: int) -> RunSummary | None:
    stage = ctx.stages[si]
    b = _Batch(si, bi, stage, check_specs(stage["settings"]))
    for step in CHECK_STEPS if ctx.opts.check else BATCH_STEPS:
        summary = step(ctx, b)
        if summary is not None:
            return summary
    return None


def _patched(
    ctx: _Ctx,
    si: int,
    bi: int,
    todo: Sequence[RunHost],
    res: Mapping[str, HostResult],
    resumed: set[str],
) -> None:
    """Each host's state after its patch, and its snapshot with the kept .debs (the first
    one recorded for the run is the one a rollback returns to)."""
    for r in todo:
        x = res[r.host]
        if x.snapshot and not r.snapshot and not ctx.opts.check:
            _update_host(ctx, r.host, snapshot=dict(x.snapshot))
            with session_scope(ctx.engine) as s:
                s.add(
                    RunStep(
                        run_id=ctx.run_id,
                        stage=si,
                        batch=bi,
                        kind="snapshot",
                        state="done",
                        hosts=[r.host],
                        detail={
                            "versions": dict(x.snapshot),
                            "artifacts": {k: v for k, v in x.artifacts.items() if v},
                        },
                        finished_at=datetime.now(UTC),
                    )
                )
        if x.status == "unreachable":
            # Nothing was read back: whether anything changed is unknown until it answers.
            msg = (
                f"no answer during its patch, state unknown ({x.message}); once it answers, "
                f"`patchpilot rollback {ctx.run_id} --hosts {r.host}` puts back what may have "
                "changed"
            )
            _update_host(ctx, r.host, status="failed", failure="unreachable", message=msg)
            ctx.say(f"  {r.host}: unreachable: {x.message}")
        elif x.status == "timeout":
            # Ended mid-patch: its apt may have been cut short, or may still be running.
            # Nothing is done to it unasked; it counts as a failure.
            msg = (
                f"{x.message} (check mode: nothing was changed)"
                if ctx.opts.check
                else f"{x.message}; state unknown: check the host, then `patchpilot rollback "
                f"{ctx.run_id} --hosts {r.host}` puts back what may have changed"
            )
            _update_host(ctx, r.host, status="failed", failure="timeout", message=msg)
            ctx.say(f"  {r.host}: timed out: {x.message}")
        elif x.status != "ok" and x.phase == "preflight":
            if x.held:
                msg = f"held on the host since the plan was made: {', '.join(x.held)}"
                _update_host(ctx, r.host, status="skipped", failure="preflight", message=msg)
                ctx.say(f"  {r.host}: skipped, {', '.join(x.held)} held")
            else:
                # A host caught mid-patch (dpkg left interrupted) was touched: restore it.
                failure = "install_failed" if r.host in resumed else "preflight"
                _update_host(ctx, r.host, status="failed", failure=failure, message=x.message)
                ctx.say(f"  {r.host}: preflight failed: {x.message}")
        elif ctx.opts.check:
            if x.status == "ok" and x.rollback_missing and on_impossible(ctx.spec) == "refuse":
                msg = (
                    "rollback impossible (previous version not available: "
                    f"{', '.join(x.rollback_missing)}); the rollback policy would refuse it"
                )
                _update_host(ctx, r.host, status="failed", failure="preflight", message=msg)
                ctx.say(f"  {r.host}: would be refused: {msg}")
            elif x.status == "ok":
                _update_host(ctx, r.host, status="checked", message=x.message)
            else:  # apt-get's simulation of the install failed
                msg = x.message or "the simulated install failed"
                _update_host(ctx, r.host, status="failed", failure="install_failed", message=msg)
                ctx.say(f"  {r.host}: would fail its install: {msg}")
        else:
            wrong = {p: x.versions.get(p) for p, v in _targets(r).items() if x.versions.get(p) != v}
            if x.status == "ok" and not wrong:
                _update_host(ctx, r.host, status="patched", patched_at=datetime.now(UTC))
                if r.host in resumed and not x.installed:
                    ctx.say(f"  {r.host}: already on the target versions (patched before a crash)")
                else:
                    ctx.say(f"  {r.host}: patched")
            else:
                msg = x.message or f"versions after patching are not the planned ones: {wrong}"
                _update_host(ctx, r.host, status="failed", failure="install_failed", message=msg)
                ctx.say(f"  {r.host}: install failed: {msg}")


def _budget(ctx: _Ctx) -> FailureBudget:
    raw = ctx.expansion["failure_budget"]
    return FailureBudget(
        **{k: raw[k] for k in ("hosts", "percent", "unreachable_counts") if k in raw}
    )


def _rollback(
    ctx: _Ctx,
    rows: Sequence[RunHost],
    *,
    reason: str,
    stage: int | None,
    batch: int | None,
    specs: Sequence[CheckSpec],
) -> None:
    """Put hosts back on their snapshot versions, in reverse deploy order (one batch at a
    time, last first), restart the units the health checks watch, verify versions and health.
    A host that cannot be rolled back is recorded as such; the others go on."""
    fresh = {r.host: r for r in _hosts(ctx)}
    todo = sorted((fresh[r.host] for r in rows), key=lambda r: r.order, reverse=True)
    units = sorted(
        {u for s in specs if s.check == "systemd_units" for u in s.params.get("units", [])}
    )
    groups: list[list[RunHost]] = []
    for r in todo:
        if groups and (groups[-1][0].stage, groups[-1][0].batch) == (r.stage, r.batch):
            groups[-1].append(r)
        else:
            groups.append([r])
    t_first = time.time()
    kept = _artifacts(ctx)
    for group in groups:
        restore: dict[str, list[str]] = {}
        for r in group:
            artifacts = kept.get(r.host, {})
            arches = {u["package"]: u.get("arch") or "all" for u in r.updates}
            items = []
            for pkg, ver in sorted(_snapshot(r).items()):
                if pkg not in _targets(r):
                    continue
                # No kept .deb recorded (nothing was read back from the host): the one the
                # host may have kept all the same, else the version from its repositories.
                deb = deb_filename(pkg, ver, arches.get(pkg, "all"))
                path = f"{run_rollback_dir(ctx.run_id)}/{deb}"
                items.append(artifacts.get(pkg) or f"{path}|{pkg}={ver}")
            restore[r.host] = items
            _update_host(ctx, r.host, status="rolling_back")
        ctx.say(f"  rolling back {', '.join(restore)} ({reason})")
        try:
            with _step(
                ctx, "rollback", stage=stage, batch=batch, hosts=list(restore), reason=reason
            ) as d:
                d["started_after_s"] = round(time.time() - t_first, 2)
                res = ctx.ops.rollback(
                    restore, restart_units=units, lock_timeout=ctx.opts.lock_timeout
                )
                d["results"] = {
                    h: {"status": x.status, "message": x.message} for h, x in res.items()
                }
        except Exception as exc:
            # Ansible itself failed for this batch (not a host): the batches still to be
            # rolled back go on; these hosts are recorded as not restored.
            log.debug("rollback of %s failed", list(restore), exc_info=True)
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            res = {h: HostResult("failed", message) for h in restore}
        verify_hosts = []
        for r in group:
            x = res[r.host]
            wrong = {
                p: x.versions.get(p)
                for p, v in _snapshot(r).items()
                if p in _targets(r) and x.versions.get(p) != v
            }
            if x.status == "ok" and not wrong:
                _update_host(
                    ctx,
                    r.host,
                    status="rolled_back",
                    message=f"{r.message + '; ' if r.message and r.status == 'failed' else ''}"
                    "rolled back to "
                    + ", ".join(f"{p} {v}" for p, v in sorted(_snapshot(r).items())),
                )
                verify_hosts.append(r.host)
            else:
                _update_host(
                    ctx,
                    r.host,
                    status="rollback_failed",
                    message=f"rollback failed: {x.message or wrong}",
                )
                ctx.say(f"  {r.host}: ROLLBACK FAILED: {x.message or wrong}")
        if verify_hosts and specs:
            with _step(ctx, "verify", stage=stage, batch=batch, hosts=verify_hosts) as d:
                after = ctx.ops.measure(specs, verify_hosts, since=None)
                d["measurements"] = _measurements_to_json(after)
                d["verdicts"] = {}
                for r in group:
                    if r.host not in verify_hosts:
                        continue
                    h = r.host
                    hv = _judge(
                        ctx,
                        h,
                        after.get(h, []),
                        baseline=_baseline_of(ctx, r),
                        control=[],
                        specs=specs,
                    )
                    d["verdicts"][h] = hv.to_dict()
                    if hv.verdict == Verdict.UNHEALTHY:
                        _update_host(
                            ctx,
                            h,
                            message=f"rolled back, but still unhealthy: {hv.reason}",
                        )
                        ctx.say(f"  {h}: rolled back, but still unhealthy: {hv.reason}")
        with session_scope(ctx.engine) as s:
            s.add(
                Incident(
                    run_id=ctx.run_id,
                    stage=stage,
                    batch=batch,
                    hosts=list(restore),
                    reason=f"rollback: {reason}",
                    evidence={"results": {h: x.status for h, x in res.items()}},
                )
            )
            audit(s, "rollback", run_id=ctx.run_id, hosts=list(restore), reason=reason)


def _baseline_of(ctx: _Ctx, row: RunHost) -> list[Measurement]:
    """The host's own measurements from before its patch."""
    saved = _saved_baseline(ctx, row.stage, row.batch) or {}
    return _measurements_from_json(saved.get("measurements", {})).get(row.host, [])


def _artifacts(ctx: _Ctx) -> dict[str, dict[str, str]]:
    """Per host, the .debs kept at its first preflight in this run."""
    out: dict[str, dict[str, str]] = {}
    with session_scope(ctx.engine) as s:
        rows = s.exec(
            select(RunStep)
            .where(RunStep.run_id == ctx.run_id, RunStep.kind == "snapshot")
            .order_by(col(RunStep.id))
        ).all()
        for row in rows:
            for host in row.hosts:
                out.setdefault(host, dict((row.detail or {}).get("artifacts", {})))
    return out


def _record_outcomes(ctx: _Ctx, stage: int, batch: int) -> None:
    """The fleet's evidence for `risk train`: one outcome per host and package."""
    rows = _hosts(ctx, stage=stage, batch=batch)
    with session_scope(ctx.engine) as s:
        # The changelog facts gathered for each (package, version), read once for the batch.
        packages = sorted({u["package"] for r in rows for u in r.updates})
        facts_of: dict[tuple[str, str], PendingUpdate] = {}
        for pu in s.exec(select(PendingUpdate).where(col(PendingUpdate.package).in_(packages))):
            facts_of.setdefault((pu.package, pu.candidate_version), pu)
        for r in rows:
            if r.status in ("patched", "healthy"):
                outcome = "healthy"
            elif r.status in ("rolled_back", "rollback_failed"):
                outcome = "install_failed" if r.failure == "install_failed" else "rolled_back"
            elif r.failure in ("install_failed", "timeout"):
                outcome = "install_failed"
            elif r.failure == "health_failed":
                outcome = "health_failed"
            else:
                continue
            for u in r.updates:
                facts = facts_of.get((u["package"], u["to"]))
                s.add(
                    PatchOutcome(
                        run_id=ctx.run_id,
                        host=r.host,
                        package=u["package"],
                        source=u.get("source"),
                        arch=u.get("arch", ""),
                        from_version=u["from"],
                        to_version=u["to"],
                        outcome=outcome,
                        cves=len(facts.cve_ids) if facts else 0,
                        urgency=facts.urgency if facts else None,
                        changelog_entries=facts.changelog_entries if facts else None,
                        upstream_changed=facts.upstream_changed if facts else None,
                        reboot_needed=bool(u.get("reboot_needed")),
                    )
                )


def rollback_run(
    engine: Engine,
    run_id: str,
    *,
    hosts: Sequence[str] | None,
    ops: FleetOps,
    opts: ApplyOptions,
    reason: str | None = None,
) -> RunSummary:
    """A manual rollback of hosts a finished or paused run patched, in reverse deploy order."""
    run = load_run(engine, run_id)
    if run.check_mode:
        raise BadInputError(
            f"run {run_id} was a --check run: it changed nothing, so there is nothing to roll back"
        )
    if run.status == "running" and _pid_alive(run.pid or 0):
        raise RunLocked(f"run {run_id} is running (pid {run.pid})", hint="wait for it to end")
    ctx = _Ctx(engine, ops, opts, run_id, run.plan)
    rows = _hosts(ctx)
    known = {r.host for r in rows}
    if hosts:
        unknown = sorted(set(hosts) - known)
        if unknown:
            raise BadInputError(
                f"host {unknown[0]} is not part of run {run_id}",
                hint=f"the run's hosts: {', '.join(sorted(known))}",
            )
    # Hosts the run patched, and hosts named here that stopped answering during their patch.
    scope = [
        r
        for r in rows
        if (not hosts or r.host in hosts)
        and (r.status in RESTORABLE or (hosts and r.failure in ("unreachable", "timeout")))
    ]
    if not scope:
        raise BadInputError(
            f"nothing to roll back in run {run_id}" + (f" for {', '.join(hosts)}" if hosts else ""),
            hint="only hosts the run patched (status patched or healthy) or whose rollback was "
            "interrupted or failed, or named hosts whose patch stopped answering or timed out, "
            "can be rolled back",
        )
    acquire_locks(engine, f"{run_id}", [r.host for r in scope], progress=ctx.say)
    try:
        with session_scope(engine) as s:
            audit(s, "manual rollback", run_id=run_id, hosts=[r.host for r in scope], reason=reason)
        by_stage: dict[int, list[CheckSpec]] = {}
        for r in scope:
            by_stage.setdefault(r.stage, check_specs(ctx.stages[r.stage]["settings"]))
        unique: dict[str, CheckSpec] = {}
        for group in by_stage.values():
            for spec in group:
                unique.setdefault(spec.name, spec)
        _rollback(
            ctx,
            scope,
            reason=f"manual rollback: {reason}" if reason else "manual rollback",
            stage=None,
            batch=None,
            specs=list(unique.values()),
        )
    finally:
        if run.status not in ("paused",):
            release_locks(engine, run_id)
        else:
            release_locks(engine, run_id, keep_paused=True)
    states = _host_states(ctx)
    bad = sorted(r.host for r in scope if states.get(r.host) != "rolled_back")
    msg = f"rolled back {len(scope) - len(bad)} of {len(scope)} hosts" + (
        f"; failed: {', '.join(bad)}" if bad else ""
    )
    _update_run(ctx, message=msg)
    ctx.say(msg)
    return RunSummary(run_id, run.status, ExitCode.FAILED if bad else ExitCode.OK, msg, states)
