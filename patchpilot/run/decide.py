"""The run's decisions, as pure functions of what is known: no store, no hosts, no clock.

Each takes the typed plan and host rows or answers and returns what to do, so every rule is
tested on its own (tests/unit/test_run_decide.py) and the steps only read, call one of these,
act and write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from patchpilot.errors import ExitCode
from patchpilot.ops.fleetops import HostResult, deb_filename, parse_verify, run_rollback_dir
from patchpilot.plan.model import ExpandedPlan, budget_allowed, budget_exceeded
from patchpilot.run.states import (
    PATCHED,
    RESTORABLE,
    TOUCHED,
    UNKNOWN_STATE,
    Failure,
    HostEvent,
    HostState,
    Outcome,
    RunEvent,
    RunState,
    run_after,
)
from patchpilot.store.models import RunHost

MAX_CONTROLS = 3


@dataclass(frozen=True)
class HostChange:
    """What a host's answer means for it: the event to apply, why, and what to tell."""

    event: HostEvent
    failure: Failure | None = None
    message: str | None = None
    say: str | None = None


def targets(row: RunHost) -> dict[str, str]:
    """The versions the plan takes the host to."""
    return {u["package"]: u["to"] for u in row.updates}


def classify_patch(
    row: RunHost,
    x: HostResult,
    *,
    resumed: bool,
    check: bool,
    refuse_without_rollback: bool,
    run_id: str,
) -> HostChange:
    """A host's state after its patch (or, in check mode, its dry run)."""
    h = row.host
    if x.status == "unreachable":
        # Nothing was read back: whether anything changed is unknown until it answers.
        return HostChange(
            HostEvent.FAIL,
            Failure.UNREACHABLE,
            f"no answer during its patch, state unknown ({x.message}); once it answers, "
            f"`patchpilot rollback {run_id} --hosts {h}` puts back what may have changed",
            f"  {h}: unreachable: {x.message}",
        )
    if x.status == "timeout":
        # Ended mid-patch: its apt may have been cut short, or may still be running.
        # Nothing is done to it unasked; it counts as a failure.
        msg = (
            f"{x.message} (check mode: nothing was changed)"
            if check
            else f"{x.message}; state unknown: check the host, then `patchpilot rollback "
            f"{run_id} --hosts {h}` puts back what may have changed"
        )
        return HostChange(HostEvent.FAIL, Failure.TIMEOUT, msg, f"  {h}: timed out: {x.message}")
    if x.status != "ok" and x.phase == "preflight":
        if x.held:
            return HostChange(
                HostEvent.HELD,
                Failure.PREFLIGHT,
                f"held on the host since the plan was made: {', '.join(x.held)}",
                f"  {h}: skipped, {', '.join(x.held)} held",
            )
        # A host caught mid-patch (dpkg left interrupted) was touched: restore it.
        failure = Failure.INSTALL_FAILED if resumed else Failure.PREFLIGHT
        return HostChange(
            HostEvent.FAIL, failure, x.message, f"  {h}: preflight failed: {x.message}"
        )
    if check:
        if x.status == "ok" and x.rollback_missing and refuse_without_rollback:
            missing = ", ".join(
                item + (f" ({why})" if (why := x.reasons.get(item.split("=")[0])) else "")
                for item in x.rollback_missing
            )
            msg = (
                f"rollback impossible (previous version not available: {missing}); "
                "the rollback policy would refuse it"
            )
            return HostChange(
                HostEvent.FAIL, Failure.PREFLIGHT, msg, f"  {h}: would be refused: {msg}"
            )
        if x.status == "ok":
            return HostChange(HostEvent.CHECKED, None, x.message)
        msg = x.message or "the simulated install failed"  # apt-get's simulation failed
        return HostChange(
            HostEvent.FAIL, Failure.INSTALL_FAILED, msg, f"  {h}: would fail its install: {msg}"
        )
    wrong = {p: x.versions.get(p) for p, v in targets(row).items() if x.versions.get(p) != v}
    if x.status == "ok" and not wrong:
        said = (
            f"  {h}: already on the target versions (patched before a crash)"
            if resumed and not x.installed
            else f"  {h}: patched"
        )
        return HostChange(HostEvent.PATCHED, None, None, said)
    msg = x.message or f"versions after patching are not the planned ones: {wrong}"
    return HostChange(HostEvent.FAIL, Failure.INSTALL_FAILED, msg, f"  {h}: install failed: {msg}")


def choose_controls(
    plan: ExpandedPlan,
    states: Mapping[str, str],
    batch_hosts: Sequence[str],
    *,
    stage: int,
    batch: int,
    limit: int = MAX_CONTROLS,
) -> list[str]:
    """Unpatched hosts of the same groups from later batches of the plan, in deploy order:
    the batch's controls."""
    groups = {g for h in batch_hosts for g in plan.hosts[h].groups}
    later = [
        name
        for name, h in plan.hosts.items()
        if plan.positions[name] > (stage, batch)
        and states.get(name) == HostState.PENDING
        and groups.intersection(h.groups)
    ]
    return later[:limit]


@dataclass(frozen=True)
class RestoreItem:
    """One host's rollback: what is sent (a kept .deb, or a path and name=version) and the
    versions the host must be on afterwards."""

    host: str
    items: tuple[str, ...]
    expected: Mapping[str, str]


def rollback_groups(
    plan: ExpandedPlan,
    scope: Iterable[str],
    *,
    snapshots: Mapping[str, Mapping[str, str]],
    artifacts: Mapping[str, Mapping[str, str]],
    run_id: str,
) -> list[list[RestoreItem]]:
    """The plan's own rollback sequence (the one `plan` showed: last batch first, each
    host's packages in reverse install order), for the hosts in `scope`, one group per
    batch. Each package returns to the version the host reported before its patch, else to
    the one it had when the plan was made; from the .deb the host kept when one is
    recorded, else from the path it would have kept it at, else from its repositories."""
    wanted = set(scope)
    groups: list[list[RestoreItem]] = []
    last: tuple[str, int] | None = None
    for step in plan.rollback:
        if step.host not in wanted:
            continue
        snapshot = snapshots.get(step.host) or {}
        kept = artifacts.get(step.host) or {}
        items, expected = [], {}
        for u in step.packages:
            version = snapshot.get(u.package) or u.installed_version
            path = f"{run_rollback_dir(run_id)}/{deb_filename(u.package, version, u.arch)}"
            items.append(kept.get(u.package) or f"{path}|{u.package}={version}")
            expected[u.package] = version
        item = RestoreItem(step.host, tuple(items), expected)
        if last == (step.stage, step.batch):
            groups[-1].append(item)
        else:
            groups.append([item])
            last = (step.stage, step.batch)
    return groups


def rollback_wrong(item: RestoreItem, x: HostResult) -> dict[str, str | None]:
    """Packages not on the version the rollback was to restore (empty: restored)."""
    return {p: x.versions.get(p) for p, v in item.expected.items() if x.versions.get(p) != v}


def rollback_damage(x: HostResult, recorded: Mapping[str, Any]) -> str | None:
    """What is still wrong on a host whose versions are back, in words (None: nothing):
    files of the restored packages that `dpkg --verify` finds changed or missing and that
    were not so before the patch, and anything `dpkg --audit` reports."""
    before = {
        line
        for lines in (recorded.get("modified_before") or {}).values()
        for line in parse_verify("\n".join(map(str, lines)))
    }
    new = [line for line in x.verify if line not in before]
    problems = []
    if new:
        problems.append(
            f"dpkg --verify finds {len(new)} file(s) changed that were not before the patch "
            f"({'; '.join(new[:3])}{'; ...' if len(new) > 3 else ''})"
        )
    if x.audit:
        problems.append(f"dpkg --audit: {x.audit[:200]}")
    return "; ".join(problems) or None


def kept_checksums(
    recorded: Mapping[str, Mapping[str, Any]], hosts: Iterable[str]
) -> dict[str, dict[str, str]]:
    """Per host, {kept .deb path: sha256} as the run recorded them at its preflight."""
    out: dict[str, dict[str, str]] = {}
    for h in hosts:
        d = recorded.get(h) or {}
        paths, sums = d.get("artifacts") or {}, d.get("sha256") or {}
        out[h] = {str(paths[p]): str(sums[p]) for p in paths if p in sums}
    return out


def to_restore(rows: Iterable[RunHost]) -> list[RunHost]:
    """A batch's failed hosts that were touched (their snapshot was taken): put back."""
    return [r for r in rows if r.status == HostState.FAILED and r.snapshot and r.failure in TOUCHED]


def manual_scope(rows: Iterable[RunHost], hosts: Sequence[str] | None) -> list[RunHost]:
    """What a manual rollback takes: hosts the run patched, hosts whose rollback did not
    finish, and hosts named here whose patch stopped answering or timed out."""
    return [
        r
        for r in rows
        if (not hosts or r.host in hosts)
        and (r.status in RESTORABLE or (bool(hosts) and r.failure in UNKNOWN_STATE))
    ]


def budget_problem(rows: Sequence[RunHost], plan: ExpandedPlan, stage: str) -> str | None:
    """Why the run must halt (failures over its whole course against the failure budget),
    or None while within it. A host skipped because a package was held on it is the
    operator's choice, not a failure."""
    failures = sum(
        1
        for r in rows
        if r.failure and r.failure != Failure.UNREACHABLE and r.status != HostState.SKIPPED
    )
    unreachable = sum(1 for r in rows if r.failure == Failure.UNREACHABLE)
    budget = plan.budget
    if not budget_exceeded(failures, unreachable, len(rows), budget):
        return None
    counted = failures + (unreachable if budget.unreachable_counts else 0)
    return (
        f"failure budget exceeded in stage {stage}: {counted} host(s) counted "
        f"({failures} failed, {unreachable} unreachable"
        f"{'' if budget.unreachable_counts else ', not counted'}), "
        f"{budget_allowed(len(rows), budget)} allowed"
    )


def wave_scope(rows: Iterable[RunHost], *, on_failure: str, stage: int) -> list[RunHost]:
    """The patched hosts a stage's `on_failure` rolls back: its own, or every stage's."""
    return [
        r
        for r in rows
        if r.status in PATCHED and (on_failure == "rollback_all" or r.stage == stage)
    ]


def run_end(rows: Sequence[RunHost], *, check: bool) -> tuple[RunEvent, str]:
    """How a run that went through every batch ends, and the words for it."""
    if check:
        refused = [r for r in rows if r.status not in (HostState.CHECKED, HostState.SKIPPED)]
        if refused:
            return RunEvent.CHECK_FAILED, (
                "check mode: nothing was changed; would not patch: "
                + "; ".join(f"{r.host} ({r.message})" for r in refused)
            )
        return RunEvent.CHECKED, "check mode: nothing was changed"
    failed = sorted(r.host for r in rows if r.status not in (HostState.HEALTHY, HostState.SKIPPED))
    skipped = sorted(r.host for r in rows if r.status == HostState.SKIPPED)
    if failed or skipped:
        healthy = len(rows) - len(failed) - len(skipped)
        return RunEvent.PARTIAL, (
            f"{healthy} of {len(rows)} hosts patched and healthy"
            + (f"; failed within the budget: {', '.join(failed)}" if failed else "")
            + (f"; skipped (packages held on the host): {', '.join(skipped)}" if skipped else "")
        )
    return RunEvent.SUCCEED, f"all {len(rows)} hosts patched and healthy"


EXIT_CODES: Mapping[RunState, ExitCode] = {
    RunState.SUCCEEDED: ExitCode.OK,
    RunState.CHECK: ExitCode.OK,
    RunState.CHECK_FAILED: ExitCode.FAILED,
    RunState.PARTIAL: ExitCode.PARTIAL,
    RunState.FAILED: ExitCode.FAILED,
    RunState.ABORTED: ExitCode.FAILED,
    RunState.PAUSED: ExitCode.PAUSED,
}


def exit_code(event: RunEvent) -> ExitCode:
    return EXIT_CODES[run_after(RunState.RUNNING, event)]


def outcome_of(row: RunHost) -> Outcome | None:
    """The risk model's evidence from one host's end in a batch (None: nothing learnt)."""
    if row.status in PATCHED:
        return Outcome.HEALTHY
    if row.status in (HostState.ROLLED_BACK, HostState.ROLLBACK_FAILED):
        return (
            Outcome.INSTALL_FAILED if row.failure == Failure.INSTALL_FAILED else Outcome.ROLLED_BACK
        )
    if row.failure in (Failure.INSTALL_FAILED, Failure.TIMEOUT):
        return Outcome.INSTALL_FAILED
    if row.failure == Failure.HEALTH_FAILED:
        return Outcome.HEALTH_FAILED
    return None
