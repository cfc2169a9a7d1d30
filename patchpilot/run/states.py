"""The states of a run and of each host in it, and the only moves between them.

Every change of state goes through `host_after` or `run_after`: a move the tables below do
not list is a bug in patchpilot, and raises instead of recording a state nobody planned for.
The tables are what `docs/architecture.md` draws; a unit test walks every (state, event)
pair against them.
"""

from __future__ import annotations

from enum import StrEnum


class HostState(StrEnum):
    PENDING = "pending"  # planned, not touched yet
    PATCHING = "patching"  # its patch was sent (after a crash: maybe half done)
    PATCHED = "patched"  # on the target versions, health not judged yet
    HEALTHY = "healthy"  # patched and judged healthy (or approved)
    CHECKED = "checked"  # check mode: the patch would go through
    SKIPPED = "skipped"  # a package was held on the host since the plan was made
    FAILED = "failed"  # see the host's `failure` for why
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


class Failure(StrEnum):
    """Why a host failed (RunHost.failure)."""

    PREFLIGHT = "preflight"  # refused before anything changed
    INSTALL_FAILED = "install_failed"
    HEALTH_FAILED = "health_failed"
    UNREACHABLE = "unreachable"  # no answer during the patch: state unknown
    TIMEOUT = "timeout"  # past the stage's timeout: state unknown


class HostEvent(StrEnum):
    SEND = "send"  # the patch is sent to the host
    PATCHED = "patched"  # it answered on the target versions
    CHECKED = "checked"  # check mode: it would patch
    HELD = "held"  # it holds a planned package
    FAIL = "fail"  # its patch, preflight or health failed
    ACCEPT = "accept"  # judged healthy, or approved by a human
    ROLLBACK = "rollback"  # its rollback starts
    RESTORED = "restored"  # its rollback put every package back
    NOT_RESTORED = "not_restored"  # its rollback failed


H = HostState
HOST_TRANSITIONS: dict[tuple[HostState, HostEvent], HostState] = {
    (H.PENDING, HostEvent.SEND): H.PATCHING,
    (H.PATCHING, HostEvent.SEND): H.PATCHING,  # sent again after a crash
    (H.PATCHING, HostEvent.PATCHED): H.PATCHED,
    (H.PATCHING, HostEvent.CHECKED): H.CHECKED,
    (H.PATCHING, HostEvent.HELD): H.SKIPPED,
    (H.PATCHING, HostEvent.FAIL): H.FAILED,
    (H.PATCHED, HostEvent.FAIL): H.FAILED,  # unhealthy
    (H.PATCHED, HostEvent.ACCEPT): H.HEALTHY,
    (H.PATCHED, HostEvent.ROLLBACK): H.ROLLING_BACK,
    (H.HEALTHY, HostEvent.ROLLBACK): H.ROLLING_BACK,
    (H.FAILED, HostEvent.ROLLBACK): H.ROLLING_BACK,
    (H.ROLLING_BACK, HostEvent.ROLLBACK): H.ROLLING_BACK,  # finished after a crash
    (H.ROLLBACK_FAILED, HostEvent.ROLLBACK): H.ROLLING_BACK,
    (H.ROLLING_BACK, HostEvent.RESTORED): H.ROLLED_BACK,
    (H.ROLLING_BACK, HostEvent.NOT_RESTORED): H.ROLLBACK_FAILED,
}
del H

# A batch still has to patch these; a manual rollback takes these (and, named, failed hosts
# whose patch stopped answering or timed out).
TODO = frozenset({HostState.PENDING, HostState.PATCHING})
PATCHED = frozenset({HostState.PATCHED, HostState.HEALTHY})
RESTORABLE = PATCHED | {HostState.ROLLING_BACK, HostState.ROLLBACK_FAILED}
# States a host may end a run in (a run that ends leaves none PATCHING or ROLLING_BACK).
TERMINAL = frozenset(
    {
        HostState.PENDING,
        HostState.HEALTHY,
        HostState.CHECKED,
        HostState.SKIPPED,
        HostState.FAILED,
        HostState.ROLLED_BACK,
        HostState.ROLLBACK_FAILED,
    }
)
# Failures whose host was touched, so a failed batch restores it.
TOUCHED = frozenset({Failure.INSTALL_FAILED, Failure.HEALTH_FAILED, Failure.UNREACHABLE})
UNKNOWN_STATE = frozenset({Failure.UNREACHABLE, Failure.TIMEOUT})


class RunState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # some hosts failed within the budget, or were skipped
    FAILED = "failed"
    ABORTED = "aborted"
    CHECK = "check"  # a dry run that found nothing in the way
    CHECK_FAILED = "check_failed"  # a dry run in which some host would not patch
    REFUSED = "refused"  # never started: its hosts were locked by another run


class RunEvent(StrEnum):
    PAUSE = "pause"
    CONTINUE = "continue"  # resumed after a crash, or approved
    SUCCEED = "succeed"
    PARTIAL = "partial"
    FAIL = "fail"
    ABORT = "abort"
    CHECKED = "checked"
    CHECK_FAILED = "check_failed"
    REFUSE = "refuse"


R = RunState
RUN_TRANSITIONS: dict[tuple[RunState, RunEvent], RunState] = {
    (R.RUNNING, RunEvent.PAUSE): R.PAUSED,
    (R.RUNNING, RunEvent.CONTINUE): R.RUNNING,
    (R.PAUSED, RunEvent.CONTINUE): R.RUNNING,
    (R.RUNNING, RunEvent.SUCCEED): R.SUCCEEDED,
    (R.RUNNING, RunEvent.PARTIAL): R.PARTIAL,
    (R.RUNNING, RunEvent.FAIL): R.FAILED,
    (R.RUNNING, RunEvent.CHECKED): R.CHECK,
    (R.RUNNING, RunEvent.CHECK_FAILED): R.CHECK_FAILED,
    (R.RUNNING, RunEvent.REFUSE): R.REFUSED,
    (R.RUNNING, RunEvent.ABORT): R.ABORTED,  # crashed, never resumed
    (R.PAUSED, RunEvent.ABORT): R.ABORTED,
    (R.REFUSED, RunEvent.ABORT): R.ABORTED,
}
del R

FINISHED = frozenset(
    {
        RunState.SUCCEEDED,
        RunState.PARTIAL,
        RunState.FAILED,
        RunState.ABORTED,
        RunState.CHECK,
        RunState.CHECK_FAILED,
        RunState.REFUSED,
    }
)


class LockState(StrEnum):
    """A host lock as `locks list` shows it."""

    LIVE = "live"
    STALE = "stale"
    PAUSED = "paused"  # held for a paused run until approve or abort


class StepState(StrEnum):
    """A journal step (RunStep.state): written STARTED before it runs, then DONE or FAILED."""

    STARTED = "started"
    DONE = "done"
    FAILED = "failed"


class Outcome(StrEnum):
    """What a patch did on a host, as the risk model learns it (PatchOutcome.outcome)."""

    HEALTHY = "healthy"
    HEALTH_FAILED = "health_failed"
    INSTALL_FAILED = "install_failed"
    ROLLED_BACK = "rolled_back"


class IllegalTransition(RuntimeError):
    """A move the state tables do not allow: a bug, never a user's mistake."""


def host_after(state: HostState | str, event: HostEvent) -> HostState:
    try:
        return HOST_TRANSITIONS[(HostState(state), event)]
    except (KeyError, ValueError):
        raise IllegalTransition(
            f"host state {str(state)!r} has no move on {str(event)!r}"
        ) from None


def run_after(state: RunState | str, event: RunEvent) -> RunState:
    try:
        return RUN_TRANSITIONS[(RunState(state), event)]
    except (KeyError, ValueError):
        raise IllegalTransition(f"run state {str(state)!r} has no move on {str(event)!r}") from None
