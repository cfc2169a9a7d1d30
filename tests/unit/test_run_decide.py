"""The run's decisions as tables: host answers, controls, rollback items, the budget, how a
run ends and what the risk model learns. No store and no FleetOps: plain rows and answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from patchpilot.errors import ExitCode
from patchpilot.ops.fleetops import HostResult
from patchpilot.plan.expand import expand_plan
from patchpilot.plan.load import parse_plan
from patchpilot.plan.model import ExpandedPlan, PlanHost, PlanUpdate
from patchpilot.run import decide
from patchpilot.run.states import Failure, HostEvent, HostState, Outcome, RunEvent
from patchpilot.store.models import RunHost

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
OK = {"demoweb": "1.1-1"}


def row(status: str = "patching", failure: str | None = None, **kw: Any) -> RunHost:
    values: dict[str, Any] = {
        "run_id": "r-1",
        "host": "web01",
        "stage": 0,
        "batch": 0,
        "order": 0,
        "updates": [{"package": "demoweb", "arch": "all", "from": "1.0-1", "to": "1.1-1"}],
        "status": status,
        "failure": failure,
    }
    values.update(kw)
    return RunHost(**values)


@pytest.mark.parametrize(
    ("answer", "resumed", "check", "refuse", "event", "failure", "words"),
    [
        (HostResult("ok", versions=OK), False, False, True, HostEvent.PATCHED, None, "patched"),
        (HostResult("ok", versions=OK), True, False, True, HostEvent.PATCHED, None, "already on"),
        (
            HostResult("ok", versions={"demoweb": "1.0-1"}),
            False,
            False,
            True,
            HostEvent.FAIL,
            Failure.INSTALL_FAILED,
            "not the planned ones",
        ),
        (
            HostResult("unreachable", "timed out"),
            False,
            False,
            True,
            HostEvent.FAIL,
            Failure.UNREACHABLE,
            "state unknown",
        ),
        (
            HostResult("timeout", "past 5 s"),
            False,
            False,
            True,
            HostEvent.FAIL,
            Failure.TIMEOUT,
            "patchpilot rollback r-1 --hosts web01",
        ),
        (
            HostResult("failed", "held", phase="preflight", held=["demoweb"]),
            False,
            False,
            True,
            HostEvent.HELD,
            Failure.PREFLIGHT,
            "held on the host",
        ),
        (
            HostResult("failed", "no space", phase="preflight"),
            False,
            False,
            True,
            HostEvent.FAIL,
            Failure.PREFLIGHT,
            "no space",
        ),
        # Caught mid-patch before a crash: it was touched, so it is restored.
        (
            HostResult("failed", "dpkg interrupted", phase="preflight"),
            True,
            False,
            True,
            HostEvent.FAIL,
            Failure.INSTALL_FAILED,
            "dpkg interrupted",
        ),
        (
            HostResult("failed", "dpkg error", phase="install"),
            False,
            False,
            True,
            HostEvent.FAIL,
            Failure.INSTALL_FAILED,
            "dpkg error",
        ),
        (HostResult("ok", "would install"), False, True, True, HostEvent.CHECKED, None, None),
        (
            HostResult("ok", rollback_missing=["demoweb=1.0-1"]),
            False,
            True,
            True,
            HostEvent.FAIL,
            Failure.PREFLIGHT,
            "the rollback policy would refuse it",
        ),
        (
            HostResult("ok", rollback_missing=["demoweb=1.0-1"]),
            False,
            True,
            False,
            HostEvent.CHECKED,
            None,
            None,
        ),
        (
            HostResult("failed", None, phase="install"),
            False,
            True,
            True,
            HostEvent.FAIL,
            Failure.INSTALL_FAILED,
            "the simulated install failed",
        ),
    ],
)
def test_classify_patch(
    answer: HostResult,
    resumed: bool,
    check: bool,
    refuse: bool,
    event: HostEvent,
    failure: Failure | None,
    words: str | None,
) -> None:
    change = decide.classify_patch(
        row(), answer, resumed=resumed, check=check, refuse_without_rollback=refuse, run_id="r-1"
    )
    assert (change.event, change.failure) == (event, failure)
    if words:
        assert words in f"{change.message} {change.say}"


PLAN = """
name: t
select: {include: ["*"], unscored: include}
stages:
  - {name: canary, hosts: 1}
  - {name: rest, after: [canary], hosts: rest, parallel: 2}
"""


def plan(groups: dict[str, tuple[str, ...]]) -> ExpandedPlan:
    spec = parse_plan(PLAN, source="t.yml")
    hosts = [PlanHost(name, g, "debian 12 bookworm") for name, g in groups.items()]
    updates = {
        h.name: [
            PlanUpdate("a", "amd64", "1", "2", "a", False, False, False, NOW),
            PlanUpdate("b", "all", "1:3", "1:4", "b", False, False, False, NOW),
        ]
        for h in hosts
    }
    return expand_plan(spec, hosts, updates, {}, now=NOW)


def test_controls_are_later_unpatched_hosts_of_the_same_groups() -> None:
    p = plan({f"h{i}": ("web",) if i % 2 else ("db",) for i in range(1, 8)})
    order = list(p.hosts)
    first = order[0]
    states = dict.fromkeys(order, HostState.PENDING.value)
    states[order[1]] = HostState.HEALTHY  # patched already: no control
    controls = decide.choose_controls(p, states, [first], stage=0, batch=0)
    same = [h for h in order[2:] if p.hosts[h].groups == p.hosts[first].groups]
    assert controls == same[: decide.MAX_CONTROLS]
    assert decide.choose_controls(p, states, [first], stage=0, batch=0, limit=1) == same[:1]
    last = p.stages[-1].batches[-1]
    assert (
        decide.choose_controls(p, states, list(last), stage=1, batch=len(p.stages[1].batches) - 1)
        == []
    )


def test_rollback_items_follow_the_plans_sequence() -> None:
    p = plan({f"h{i}": ("web",) for i in range(1, 6)})
    hosts = list(p.hosts)
    kept = {hosts[0]: {"a": "/var/cache/patchpilot/rollback/r-1/a_0.9_amd64.deb"}}
    snapshots = {hosts[0]: {"a": "0.9", "b": "1:3"}}
    groups = decide.rollback_groups(p, hosts, snapshots=snapshots, artifacts=kept, run_id="r-1")
    flat = [item for g in groups for item in g]
    assert [i.host for i in flat] == [r.host for r in p.rollback]
    assert [len(g) for g in groups] == [len(b) for s in p.stages for b in s.batches][::-1]
    first = next(i for i in flat if i.host == hosts[0])
    # Packages in reverse install order; a kept .deb first, else the path and name=version
    # (the epoch's ':' as apt writes it in file names).
    assert first.items == (
        "/var/cache/patchpilot/rollback/r-1/b_1%3a3_all.deb|b=1:3",
        "/var/cache/patchpilot/rollback/r-1/a_0.9_amd64.deb",
    )
    assert first.expected == {"b": "1:3", "a": "0.9"}  # the host's snapshot wins
    other = next(i for i in flat if i.host == hosts[1])
    assert other.expected == {"b": "1:3", "a": "1"}  # no snapshot: the plan's from-version
    assert decide.rollback_groups(p, [hosts[1]], snapshots={}, artifacts={}, run_id="r") == [
        [
            decide.RestoreItem(
                hosts[1],
                (
                    "/var/cache/patchpilot/rollback/r/b_1%3a3_all.deb|b=1:3",
                    "/var/cache/patchpilot/rollback/r/a_1_amd64.deb|a=1",
                ),
                {"b": "1:3", "a": "1"},
            )
        ]
    ]
    item = first
    assert decide.rollback_wrong(item, HostResult("ok", versions={"a": "0.9", "b": "1:3"})) == {}
    assert decide.rollback_wrong(item, HostResult("ok", versions={"a": "2", "b": "1:3"})) == {
        "a": "2"
    }


@pytest.mark.parametrize(
    ("states", "budget", "halts"),
    [
        ([("healthy", None)] * 4, "{hosts: 0}", False),
        ([("failed", "install_failed")] + [("healthy", None)] * 3, "{hosts: 0}", True),
        ([("failed", "install_failed")] + [("healthy", None)] * 3, "{hosts: 1}", False),
        ([("failed", "unreachable")] + [("healthy", None)] * 3, "{hosts: 0}", True),
        (
            [("failed", "unreachable")] + [("healthy", None)] * 3,
            "{hosts: 0, unreachable_counts: false}",
            False,
        ),
        ([("skipped", "preflight")] + [("healthy", None)] * 3, "{hosts: 0}", False),
        ([("rolled_back", "health_failed")] * 2 + [("healthy", None)] * 2, "{percent: 50}", False),
        ([("rolled_back", "health_failed")] * 3 + [("healthy", None)], "{percent: 50}", True),
    ],
)
def test_budget(states: list[tuple[str, str | None]], budget: str, halts: bool) -> None:
    spec = parse_plan(PLAN + f"failure_budget: {budget}\n", source="t.yml")
    hosts = [PlanHost(f"h{i}", ("web",), "debian 12 bookworm") for i in range(len(states))]
    updates = {
        h.name: [PlanUpdate("a", "all", "1", "2", "a", False, False, False, NOW)] for h in hosts
    }
    p = expand_plan(spec, hosts, updates, {}, now=NOW)
    rows = [row(s, f, host=f"h{i}") for i, (s, f) in enumerate(states)]
    problem = decide.budget_problem(rows, p, "rest")
    assert (problem is not None) == halts
    if problem:
        assert problem.startswith("failure budget exceeded in stage rest")


@pytest.mark.parametrize(
    ("states", "check", "event", "code", "words"),
    [
        (["healthy", "healthy"], False, RunEvent.SUCCEED, ExitCode.OK, "all 2 hosts"),
        (["healthy", "failed"], False, RunEvent.PARTIAL, ExitCode.PARTIAL, "failed within"),
        (["healthy", "skipped"], False, RunEvent.PARTIAL, ExitCode.PARTIAL, "skipped (packages"),
        (["checked", "skipped"], True, RunEvent.CHECKED, ExitCode.OK, "nothing was changed"),
        (["checked", "failed"], True, RunEvent.CHECK_FAILED, ExitCode.FAILED, "would not patch"),
    ],
)
def test_how_a_run_ends(
    states: list[str], check: bool, event: RunEvent, code: ExitCode, words: str
) -> None:
    rows = [row(s, host=f"h{i}", message="why") for i, s in enumerate(states)]
    got, message = decide.run_end(rows, check=check)
    assert got == event and words in message
    assert decide.exit_code(got) == code


@pytest.mark.parametrize(
    ("status", "failure", "outcome"),
    [
        ("healthy", None, Outcome.HEALTHY),
        ("patched", None, Outcome.HEALTHY),
        ("rolled_back", "health_failed", Outcome.ROLLED_BACK),
        ("rolled_back", "install_failed", Outcome.INSTALL_FAILED),
        ("rollback_failed", "health_failed", Outcome.ROLLED_BACK),
        ("failed", "install_failed", Outcome.INSTALL_FAILED),
        ("failed", "timeout", Outcome.INSTALL_FAILED),
        ("failed", "health_failed", Outcome.HEALTH_FAILED),
        ("failed", "preflight", None),  # never changed: nothing learnt
        ("failed", "unreachable", None),
        ("skipped", "preflight", None),
        ("pending", None, None),
    ],
)
def test_what_the_risk_model_learns(
    status: str, failure: str | None, outcome: Outcome | None
) -> None:
    assert decide.outcome_of(row(status, failure)) == outcome


@pytest.mark.parametrize(
    ("status", "failure", "named", "taken"),
    [
        ("healthy", None, False, True),
        ("patched", None, False, True),
        ("rolling_back", None, False, True),
        ("rollback_failed", None, False, True),
        ("rolled_back", None, False, False),
        ("pending", None, False, False),
        ("failed", "unreachable", False, False),
        ("failed", "unreachable", True, True),  # named: its state is unknown
        ("failed", "timeout", True, True),
        ("failed", "preflight", True, False),  # never changed
    ],
)
def test_what_a_manual_rollback_takes(
    status: str, failure: str | None, named: bool, taken: bool
) -> None:
    r = row(status, failure)
    assert (decide.manual_scope([r], ["web01"] if named else None) == [r]) == taken


def test_failed_touched_hosts_are_restored() -> None:
    rows = [
        row("failed", "install_failed", host="a", snapshot={"demoweb": "1.0-1"}),
        row("failed", "health_failed", host="b", snapshot={"demoweb": "1.0-1"}),
        row("failed", "unreachable", host="c", snapshot={"demoweb": "1.0-1"}),
        row("failed", "preflight", host="d", snapshot={"demoweb": "1.0-1"}),
        row("failed", "install_failed", host="e"),  # no snapshot: never touched
        row("healthy", None, host="f", snapshot={"demoweb": "1.0-1"}),
    ]
    assert [r.host for r in decide.to_restore(rows)] == ["a", "b", "c"]
    assert [r.host for r in decide.wave_scope(rows, on_failure="rollback_wave", stage=0)] == ["f"]
    assert decide.wave_scope(rows, on_failure="rollback_wave", stage=1) == []
