"""A batch as a list of steps walked in order, and the rollback they end in when it breaks.

Each step reads what the journal holds (the host rows read once for the run) and what the
steps before it handed on, calls one decision of `run.decide` or one verdict of `health`,
acts through FleetOps, and writes what happened once, through the journal, before the next
step starts. A step that returns a summary ends the run there (failed, paused).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from patchpilot.health.checks import CheckSpec
from patchpilot.health.judge import judge_host
from patchpilot.health.policy import (
    PAUSE,
    ROLLBACK_FAILED,
    batch_action,
    batch_verdict,
    host_action,
    host_verdict,
)
from patchpilot.health.types import BatchVerdict, HostVerdict, Measurement, Threshold, Verdict
from patchpilot.ops.fleetops import FleetOps, HostResult, PatchRun, plan_request
from patchpilot.plan.model import ExpandedPlan
from patchpilot.plan.spec import PlanSpec, Stage
from patchpilot.run import decide
from patchpilot.run.journal import Journal, measurements_from_json, measurements_to_json
from patchpilot.run.states import TODO, HostEvent, HostState
from patchpilot.store.models import RunHost

if TYPE_CHECKING:
    from patchpilot.run.lifecycle import ApplyOptions, RunSummary

log = logging.getLogger(__name__)


@dataclass
class RunCtx:
    """A run being driven: its typed plan (validated once, when the run was opened), its
    journal, the operations on hosts and the options of this invocation."""

    journal: Journal
    plan: ExpandedPlan
    spec: PlanSpec
    ops: FleetOps
    opts: ApplyOptions
    patching: PatchRun | None = None  # the patch process of the remaining batches, once open
    ansible_recorded: bool = False  # the patch process's Ansible settings are in the audit log

    @property
    def run_id(self) -> str:
        return self.journal.run_id

    def say(self, msg: str) -> None:
        log.info("%s: %s", self.run_id, msg)
        self.opts.progress(msg)


# --- the patch process -----------------------------------------------------------------------


def open_patch(ctx: RunCtx, *, force: bool = False) -> None:
    """One patch process for every batch from the run's position on (fleetops.PatchRun);
    one already open for exactly that (started while patchpilot loaded) is kept."""
    run = ctx.journal.run
    position = (run.stage_index, run.batch_index)
    request = plan_request(
        run.plan,
        run_id=ctx.run_id,
        check=ctx.opts.check,
        lock_timeout=ctx.opts.lock_timeout,
        hosts={
            r.host
            for r in ctx.journal.rows()
            if (r.stage, r.batch) >= position and r.status in TODO
        },
    )
    if ctx.patching is not None and ctx.patching.request == request and not force:
        log.debug("%s: using the patch process started while patchpilot loaded", ctx.run_id)
        return
    close_patch(ctx)
    if request.batches:
        log.debug("%s: starting the patch process for %d batches", ctx.run_id, len(request.batches))
        ctx.patching = ctx.ops.open_patch(request)


def close_patch(ctx: RunCtx) -> None:
    if ctx.patching is not None:
        ctx.patching.close()
        ctx.patching = None


def _patch_batch(ctx: RunCtx, hosts: list[str]) -> dict[str, HostResult]:
    if ctx.patching is None or ctx.patching.next_hosts() != hosts:
        # The run's state moved in a way the open process did not plan for.
        open_patch(ctx, force=True)
    assert ctx.patching is not None and ctx.patching.next_hosts() == hosts
    results = ctx.patching.batch(hosts)
    if ctx.patching.ansible_settings and not ctx.ansible_recorded:
        from patchpilot.ops.ansible_setup import current

        config = current().config
        ctx.journal.audit(
            "ansible settings",
            config=str(config) if config else None,
            **ctx.patching.ansible_settings,
        )
        ctx.ansible_recorded = True
    return results


# --- judging ---------------------------------------------------------------------------------


def _keyed(measurements: Sequence[Measurement]) -> dict[tuple[str, str], list[Measurement]]:
    """Measurements by (check, metric), as the judge takes references."""
    out: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        out.setdefault((m.check, m.metric), []).append(m)
    return out


def judge(
    ctx: RunCtx,
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
    return host_verdict(host, judgements, ctx.spec.health_policy)


# --- the batch -------------------------------------------------------------------------------


@dataclass
class Batch:
    """One batch as its steps see it: where it is in the plan, and what each step hands on
    to the next."""

    si: int
    bi: int
    stage: Stage
    todo: list[RunHost] = field(default_factory=list)  # hosts still to patch
    controls: list[str] = field(default_factory=list)
    baseline: dict[str, list[Measurement]] = field(default_factory=dict)
    after: dict[str, list[Measurement]] = field(default_factory=dict)
    patch_started: float = 0.0
    verdict: BatchVerdict | None = None
    unclear: list[HostVerdict] = field(default_factory=list)

    @property
    def specs(self) -> tuple[CheckSpec, ...]:
        return self.stage.health

    def rows(self, ctx: RunCtx) -> list[RunHost]:
        return ctx.journal.rows(stage=self.si, batch=self.bi)

    def patched(self, ctx: RunCtx) -> list[RunHost]:
        return [r for r in self.rows(ctx) if r.status == HostState.PATCHED]


def find_todo(ctx: RunCtx, b: Batch) -> RunSummary | None:
    """The batch's hosts still to patch (all of them, or after a crash those it had not
    finished), and the unpatched hosts that serve as its controls."""
    rows = b.rows(ctx)
    b.todo = [r for r in rows if r.status in TODO]
    b.controls = decide.choose_controls(
        ctx.plan, ctx.journal.states(), [r.host for r in rows], stage=b.si, batch=b.bi
    )
    return None


def take_baseline(ctx: RunCtx, b: Batch) -> RunSummary | None:
    """The batch's hosts before the patch, and the unpatched control hosts; a baseline
    recorded before a crash is used as it was."""
    saved = ctx.journal.saved_baseline(b.si, b.bi)
    if saved is not None:
        b.baseline = measurements_from_json(saved.get("measurements", {}))
        b.controls = list(saved.get("controls", b.controls))
    elif b.specs and b.todo and not ctx.opts.check:
        hosts = [r.host for r in b.todo]
        with ctx.journal.step("baseline", stage=b.si, batch=b.bi, hosts=hosts) as d:
            b.baseline = ctx.ops.measure(b.specs, hosts + b.controls, since=None)
            d["measurements"] = measurements_to_json(b.baseline)
            d["controls"] = b.controls
    return None


def patch(ctx: RunCtx, b: Batch) -> RunSummary | None:
    """Preflight, snapshot, rollback artifacts and install, in one pass on each host. A host
    recorded as patching again after a crash is sent again: its snapshot persisted on the
    host is the one returned, and apt installs nothing a second time."""
    b.patch_started = time.time()
    if not b.todo:
        return None
    hosts = [r.host for r in b.todo]
    resumed = {r.host for r in b.todo if r.status == HostState.PATCHING}
    for h in hosts:
        ctx.journal.move(h, HostEvent.SEND)
    with ctx.journal.step("patch", stage=b.si, batch=b.bi, hosts=hosts) as d:
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
    refuse = ctx.spec.rollback.on_impossible == "refuse"
    for r in b.todo:
        x = res[r.host]
        if x.snapshot and not r.snapshot and not ctx.opts.check:
            # The first snapshot recorded for the run is the one a rollback returns to.
            ctx.journal.note(r.host, snapshot=dict(x.snapshot))
            ctx.journal.record(
                "snapshot",
                stage=b.si,
                batch=b.bi,
                hosts=[r.host],
                versions=dict(x.snapshot),
                artifacts={k: v for k, v in x.artifacts.items() if v},
                sources=dict(x.sources),
                sha256=dict(x.sha256),
                notes=dict(x.notes),
                modified_before={k: v for k, v in x.modified_before.items() if v},
            )
        change = decide.classify_patch(
            r,
            x,
            resumed=r.host in resumed,
            check=ctx.opts.check,
            refuse_without_rollback=refuse,
            run_id=ctx.run_id,
        )
        values: dict[str, Any] = {"failure": change.failure, "message": change.message}
        if change.event == HostEvent.PATCHED:
            values = {"patched_at": datetime.now(UTC)}
        ctx.journal.move(r.host, change.event, **values)
        if change.say:
            ctx.say(change.say)
    return None


def soak(ctx: RunCtx, b: Batch) -> RunSummary | None:
    seconds = b.stage.soak
    if seconds and b.patched(ctx):
        with ctx.journal.step("soak", stage=b.si, batch=b.bi, seconds=seconds):
            ctx.say(f"  soaking {seconds}s")
            ctx.opts.sleep(seconds)
    return None


def measure(ctx: RunCtx, b: Batch) -> RunSummary | None:
    """The patched hosts and the controls, measured again at the same moment."""
    patched = [r.host for r in b.patched(ctx)]
    if patched and b.specs:
        with ctx.journal.step("health", stage=b.si, batch=b.bi, hosts=patched) as d:
            t0 = time.time()
            b.after = ctx.ops.measure(b.specs, patched + b.controls, since=b.patch_started)
            d["measurements"] = measurements_to_json(b.after)
            d["controls"] = b.controls
            d["seconds"] = round(time.time() - t0, 2)
    return None


def give_verdict(ctx: RunCtx, b: Batch) -> RunSummary | None:
    """Each patched host judged against its baseline and the controls, and the batch's
    verdict recorded with its evidence and the policy's action (in shadow mode recorded
    only); unhealthy hosts are marked failed. A stage without health checks is judged by
    its installs alone."""
    patched = b.patched(ctx)
    if not b.specs:
        if patched:
            ctx.say("  no health checks in this stage: judged by the install alone")
        return None
    control = [m for c in b.controls for m in b.after.get(c, [])]
    verdicts = [
        judge(
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
    policy = ctx.spec.health_policy
    b.verdict = bv = batch_verdict(verdicts, policy)
    shadow = policy.shadow
    ctx.journal.verdict(
        stage=b.si,
        batch=b.bi,
        verdict=bv.verdict.label,
        action=batch_action(bv, shadow=shadow),
        shadow=shadow,
        evidence={**bv.to_dict(), "controls": b.controls, "patch_started": b.patch_started},
    )
    ctx.say(
        f"  verdict: {bv.verdict.label}{' (shadow mode: not acted on)' if shadow else ''}"
        f" - {bv.reason}"
    )
    if shadow:
        return None
    b.unclear = [v for v in verdicts if host_action(v.verdict) == PAUSE]
    for v in verdicts:
        if host_action(v.verdict) == ROLLBACK_FAILED:
            ctx.journal.move(
                v.host, HostEvent.FAIL, failure=decide.Failure.HEALTH_FAILED, message=v.reason
            )
    return None


def restore_failed(ctx: RunCtx, b: Batch) -> RunSummary | None:
    """Touched hosts (a snapshot was taken) that failed are put back, unless the stage
    halts as it is; a host that failed its preflight was never changed. Then every host's
    outcome is recorded for the risk model."""
    broken = decide.to_restore(b.rows(ctx))
    if broken and b.stage.on_failure != "halt":
        rollback_hosts(ctx, broken, reason="failed in this batch", stage=b.si, batch=b.bi)
    outcomes = {r.host: o for r in b.rows(ctx) if (o := decide.outcome_of(r)) is not None}
    ctx.journal.outcomes(outcomes)
    return None


def enforce_budget(ctx: RunCtx, b: Batch) -> RunSummary | None:
    """Failures over the whole run so far against the failure budget; past it, an incident
    and the stage's on_failure: pause, or roll back the wave or everything, and fail."""
    from patchpilot.run import lifecycle

    all_rows = ctx.journal.rows()
    reason = decide.budget_problem(all_rows, ctx.plan, b.stage.name)
    if reason is None:
        return None
    on_failure = b.stage.on_failure
    ctx.journal.incident(
        stage=b.si,
        batch=b.bi,
        hosts=[r.host for r in b.rows(ctx) if r.failure],
        reason=reason,
        evidence={"verdict": b.verdict.to_dict() if b.verdict else None, "on_failure": on_failure},
    )
    if on_failure == "pause":
        return lifecycle.pause(ctx, reason, stage=b.si, batch=b.bi + 1)
    if on_failure in ("rollback_wave", "rollback_all"):
        scope = decide.wave_scope(all_rows, on_failure=on_failure, stage=b.si)
        if scope:
            rollback_hosts(
                ctx,
                scope,
                reason=f"{on_failure.replace('_', ' ')} after: {reason}",
                stage=b.si,
                batch=b.bi,
            )
    return lifecycle.finish(ctx, decide.RunEvent.FAIL, reason)


def settle(ctx: RunCtx, b: Batch) -> RunSummary | None:
    """Patched hosts with a clear verdict are healthy; an unclear one pauses the run before
    the next batch."""
    from patchpilot.run import lifecycle

    unclear = {v.host for v in b.unclear}
    for r in b.patched(ctx):
        if r.host not in unclear:
            ctx.journal.move(r.host, HostEvent.ACCEPT)
    if not b.unclear:
        return None
    reason = "; ".join(f"{v.host}: {v.verdict.label} ({v.reason})" for v in b.unclear)
    return lifecycle.pause(
        ctx,
        f"health unclear after batch {b.bi + 1} of stage {b.stage.name}: {reason}",
        stage=b.si,
        batch=b.bi + 1,
    )


BatchStep = Callable[[RunCtx, Batch], "RunSummary | None"]
# A batch's steps, in the order they are walked. Check mode walks only the first three: the
# patch is Ansible's check mode, and there is nothing to judge.
CHECK_STEPS: tuple[BatchStep, ...] = (find_todo, take_baseline, patch)
BATCH_STEPS: tuple[BatchStep, ...] = (
    *CHECK_STEPS,
    soak,
    measure,
    give_verdict,
    restore_failed,
    enforce_budget,
    settle,
)


def run_batch(ctx: RunCtx, si: int, bi: int) -> RunSummary | None:
    b = Batch(si, bi, ctx.plan.stages[si].settings)
    for step in CHECK_STEPS if ctx.opts.check else BATCH_STEPS:
        summary = step(ctx, b)
        if summary is not None:
            return summary
    return None


# --- rollback --------------------------------------------------------------------------------


def rollback_hosts(
    ctx: RunCtx,
    rows: Sequence[RunHost],
    *,
    reason: str,
    stage: int | None,
    batch: int | None,
) -> None:
    """Put hosts back on their snapshot versions in the plan's own rollback sequence (one
    batch at a time, last first), restart the units their stages' checks watch, verify
    versions and, by each host's own stage's checks, health. A host that cannot be rolled
    back is recorded as such; the others go on."""
    journal = ctx.journal
    recorded = journal.snapshots()
    groups = decide.rollback_groups(
        ctx.plan,
        [r.host for r in rows],
        snapshots={r.host: journal.hosts[r.host].snapshot for r in rows},
        artifacts={h: dict(d.get("artifacts") or {}) for h, d in recorded.items()},
        run_id=ctx.run_id,
    )
    t_first = time.time()
    for group in groups:
        names = [item.host for item in group]
        specs = _checks_of(ctx, names)
        units = sorted(
            {u for s in specs if s.check == "systemd_units" for u in s.params.get("units", [])}
        )
        for h in names:
            journal.move(h, HostEvent.ROLLBACK)
        ctx.say(f"  rolling back {', '.join(names)} ({reason})")
        try:
            with journal.step(
                "rollback", stage=stage, batch=batch, hosts=names, reason=reason
            ) as d:
                d["started_after_s"] = round(time.time() - t_first, 2)
                res = ctx.ops.rollback(
                    {item.host: list(item.items) for item in group},
                    restart_units=units,
                    lock_timeout=ctx.opts.lock_timeout,
                    checksums=decide.kept_checksums(recorded, names),
                )
                d["results"] = {
                    h: {"status": x.status, "message": x.message, "verify": x.verify}
                    for h, x in res.items()
                }
        except Exception as exc:
            # Ansible itself failed for this batch (not a host): the batches still to be
            # rolled back go on; these hosts are recorded as not restored.
            log.debug("rollback of %s failed", names, exc_info=True)
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            res = {h: HostResult("failed", message) for h in names}
        restored = []
        for item in group:
            row, x = journal.hosts[item.host], res[item.host]
            wrong = decide.rollback_wrong(item, x) or decide.rollback_damage(
                x, recorded.get(item.host) or {}
            )
            if x.status == "ok" and not wrong:
                before = (
                    f"{row.message}; " if row.message and row.status == HostState.FAILED else ""
                )
                versions = ", ".join(f"{p} {v}" for p, v in sorted(item.expected.items()))
                journal.move(
                    item.host, HostEvent.RESTORED, message=f"{before}rolled back to {versions}"
                )
                restored.append(item.host)
            else:
                journal.move(
                    item.host,
                    HostEvent.NOT_RESTORED,
                    message=f"rollback failed: {x.message or wrong}",
                )
                ctx.say(f"  {item.host}: ROLLBACK FAILED: {x.message or wrong}")
        if restored and specs:
            _verify(ctx, restored, specs, stage=stage, batch=batch)
        journal.incident(
            stage=stage,
            batch=batch,
            hosts=names,
            reason=f"rollback: {reason}",
            evidence={"results": {h: x.status for h, x in res.items()}},
            audited=("rollback", {"hosts": names, "reason": reason}),
        )


def _checks_of(ctx: RunCtx, hosts: Sequence[str]) -> list[CheckSpec]:
    """The health checks of the hosts' own stages, each name once."""
    unique: dict[str, CheckSpec] = {}
    for h in hosts:
        si = ctx.plan.positions[h][0]
        for spec in ctx.plan.stages[si].settings.health:
            unique.setdefault(spec.name, spec)
    return list(unique.values())


def _verify(
    ctx: RunCtx,
    hosts: list[str],
    specs: Sequence[CheckSpec],
    *,
    stage: int | None,
    batch: int | None,
) -> None:
    """Rolled-back hosts judged against their own baseline from before the patch."""
    with ctx.journal.step("verify", stage=stage, batch=batch, hosts=hosts) as d:
        after = ctx.ops.measure(specs, hosts, since=None)
        d["measurements"] = measurements_to_json(after)
        d["verdicts"] = {}
        for h in hosts:
            hv = judge(
                ctx,
                h,
                after.get(h, []),
                baseline=ctx.journal.baseline_of(ctx.journal.hosts[h]),
                control=[],
                specs=specs,
            )
            d["verdicts"][h] = hv.to_dict()
            if hv.verdict == Verdict.UNHEALTHY:
                ctx.journal.note(h, message=f"rolled back, but still unhealthy: {hv.reason}")
                ctx.say(f"  {h}: rolled back, but still unhealthy: {hv.reason}")
