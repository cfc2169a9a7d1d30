"""The run's and its hosts' state tables: every (state, event) pair either moves to the
state the table says or raises, and the tables hold the moves a run relies on."""

from __future__ import annotations

import itertools

import pytest

from patchpilot.run.states import (
    FINISHED,
    HOST_TRANSITIONS,
    RUN_TRANSITIONS,
    TERMINAL,
    HostEvent,
    HostState,
    IllegalTransition,
    RunEvent,
    RunState,
    host_after,
    run_after,
)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(HostState, HostEvent)))
def test_every_host_state_and_event(state: HostState, event: HostEvent) -> None:
    expected = HOST_TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(IllegalTransition, match=f"host state '{state.value}'"):
            host_after(state, event)
    else:
        assert host_after(state, event) is expected
        assert host_after(state.value, event) is expected  # as the store holds it


@pytest.mark.parametrize(("state", "event"), list(itertools.product(RunState, RunEvent)))
def test_every_run_state_and_event(state: RunState, event: RunEvent) -> None:
    expected = RUN_TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(IllegalTransition, match=f"run state '{state.value}'"):
            run_after(state, event)
    else:
        assert run_after(state, event) is expected


def test_an_unknown_state_string_raises() -> None:
    with pytest.raises(IllegalTransition):
        host_after("ready", HostEvent.SEND)  # a state no code writes
    with pytest.raises(IllegalTransition):
        run_after("done", RunEvent.FAIL)


def test_the_moves_a_run_relies_on() -> None:
    path = [HostEvent.SEND, HostEvent.PATCHED, HostEvent.ACCEPT, HostEvent.ROLLBACK]
    state = HostState.PENDING
    for event in path:
        state = host_after(state, event)
    assert state is HostState.ROLLING_BACK
    assert host_after(state, HostEvent.RESTORED) is HostState.ROLLED_BACK
    assert host_after(HostState.PATCHING, HostEvent.SEND) is HostState.PATCHING  # resumed
    # A finished host is never patched again, and a rolled-back one never "restored" twice.
    for done in (HostState.HEALTHY, HostState.ROLLED_BACK, HostState.SKIPPED):
        with pytest.raises(IllegalTransition):
            host_after(done, HostEvent.SEND)
    # A finished run never moves, but a refused one may be aborted.
    for status in FINISHED - {RunState.REFUSED}:
        assert not any(s is status for s, _ in RUN_TRANSITIONS)
    assert run_after(RunState.REFUSED, RunEvent.ABORT) is RunState.ABORTED


def test_every_state_is_reachable_and_every_end_is_terminal() -> None:
    reached = {HostState.PENDING} | set(HOST_TRANSITIONS.values())
    assert reached == set(HostState)
    assert {HostState.PATCHING, HostState.PATCHED, HostState.ROLLING_BACK}.isdisjoint(TERMINAL)
    assert {RunState.RUNNING} | set(RUN_TRANSITIONS.values()) == set(RunState)
