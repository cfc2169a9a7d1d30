"""The run state machine on a fake fleet (the engine's one boundary): waves, verdicts,
rollback order, the failure budget, pauses, locks and resume. Real SQLite stores; the real
fleet is exercised by tests/e2e/test_apply.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from patchpilot.errors import BadInputError, ExitCode, PatchpilotError
from patchpilot.health.checks import CheckSpec
from patchpilot.health.types import Direction, Measurement
from patchpilot.ops.fleetops import HostResult, PatchRequest
from patchpilot.plan.expand import PlanHost, PlanUpdate, expand_plan
from patchpilot.plan.frozen import freeze, inventory_snapshot
from patchpilot.plan.load import parse_plan
from patchpilot.run.lifecycle import (
    ApplyOptions,
    RunLocked,
    abort_run,
    resume_run,
    rollback_run,
    start_run,
)
from patchpilot.settings import db_url
from patchpilot.store.db import open_store, session_scope
from patchpilot.store.models import (
    AuditEvent,
    HostLock,
    PatchOutcome,
    Run,
    RunHost,
    RunStep,
    RunVerdict,
)

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


@dataclass
class FakeFleet:
    """Hosts with installed versions; versions in `broken` answer HTTP 500, in `fails` fail
    their install (dpkg left half-configured), hosts in `down` do not answer."""

    installed: dict[str, dict[str, str]]
    broken: set[str] = field(default_factory=set)
    fails: set[str] = field(default_factory=set)
    down: set[str] = field(default_factory=set)
    calls: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    crash_after_patch: bool = False
    # The process dies while dpkg is configuring: the host keeps its snapshot and is left
    # with dpkg interrupted, which fails the next preflight.
    crash_mid_install: bool = False
    interrupted: set[str] = field(default_factory=set)
    broken_hosts: set[str] = field(default_factory=set)  # answer HTTP 500 once patched
    held: set[str] = field(default_factory=set)  # demoweb put on hold there after planning
    crash_in_rollback: int | None = None  # the process dies in this rollback call (1-based)
    hangs: set[str] = field(default_factory=set)  # their patch runs into the stage's timeout
    rollback_error: int | None = None  # this rollback call fails as a whole (1-based)
    restores: list[dict[str, list[str]]] = field(default_factory=list)  # what each put back
    # What patchpilot_patch keeps on each host: {(rollback_dir, host): {pkg: (from, to)}}.
    saved: dict[tuple[str, str], dict[str, tuple[str, str]]] = field(default_factory=dict)
    opened: list[PatchRequest] = field(default_factory=list)

    def open_patch(self, request: PatchRequest) -> FakePatchRun:
        self.opened.append(request)
        return FakePatchRun(self, request, [list(b) for b in request.batches])

    def rollback(
        self,
        restore: Mapping[str, Sequence[str]],
        *,
        restart_units: Sequence[str],
        lock_timeout: int,
        checksums: Mapping[str, Mapping[str, str]] | None = None,
    ) -> dict[str, HostResult]:
        self.calls.append(("rollback", tuple(restore)))
        self.restores.append({h: list(items) for h, items in restore.items()})
        if self.crash_in_rollback == len(_order(self, "rollback")):
            raise KeyboardInterrupt("simulated crash")
        if self.rollback_error == len(_order(self, "rollback")):
            raise PatchpilotError("ansible-playbook could not start")
        out = {}
        for h, items in restore.items():
            if h in self.down:
                out[h] = HostResult("unreachable", "Connection timed out")
                continue
            for item in items:
                item = item.split("|")[-1]  # no .deb kept on the fake: name=version
                name = Path(item).name
                pkg, ver = name.split("_")[:2] if name.endswith(".deb") else item.split("=")
                self.installed[h][pkg] = ver
            out[h] = HostResult("ok", versions=dict(self.installed[h]))
        return out

    def measure(
        self, specs: Sequence[CheckSpec], hosts: Sequence[str], *, since: float | None
    ) -> dict[str, list[Measurement]]:
        self.calls.append(("measure", tuple(hosts)))
        out: dict[str, list[Measurement]] = {}
        for h in hosts:
            if h in self.down:
                out[h] = [
                    Measurement("ssh", "reachable", "bool", (0.0,), Direction.LOWER_IS_WORSE, True)
                ]
                continue
            version = self.installed[h].get("demoweb")
            bad = version in self.broken or (h in self.broken_hosts and version != "1.0-1")
            out[h] = [
                Measurement("http", "error_rate", "%", (100.0 if bad else 0.0,), critical=True),
                Measurement(
                    "http",
                    "latency_ms",
                    "ms",
                    tuple(2.0 + i * 0.1 for i in range(10)),
                    critical=True,
                ),
            ]
        return out


@dataclass
class FakePatchRun:
    """playbooks/patch.yml on the fake fleet: batches in the planned order; a host already on
    its target versions installs nothing; the first snapshot per target is kept on the host."""

    fleet: FakeFleet
    request: PatchRequest
    batches: list[list[str]]
    closed: bool = False
    ansible_settings: dict[str, Any] = field(default_factory=dict)

    def next_hosts(self) -> list[str] | None:
        return None if self.closed or not self.batches else self.batches[0]

    def batch(self, hosts: Sequence[str]) -> dict[str, HostResult]:
        assert list(hosts) == self.next_hosts()
        self.batches.pop(0)
        fleet = self.fleet
        fleet.calls.append(("patch", tuple(hosts)))
        install, rollback_dir = dict(self.request.install), self.request.rollback_dir
        out = {}
        for h in hosts:
            if h in fleet.down:
                out[h] = HostResult("unreachable", "Connection timed out")
                continue
            saved = fleet.saved.setdefault((rollback_dir, h), {})
            if h in fleet.hangs:  # Ansible ended the task: the host unpacked, nothing read
                timeout = dict(self.request.timeouts)[h]
                fleet.installed[h].update(item.split("=") for item in install[h])
                out[h] = HostResult(
                    "timeout", f"the patch did not finish within the stage's timeout ({timeout} s)"
                )
                continue
            if h in fleet.held:
                out[h] = HostResult(
                    "failed", "held on the host: demoweb", phase="preflight", held=["demoweb"]
                )
                continue
            if h in fleet.interrupted:  # as patchpilot_patch reports a touched host
                snapshot = {pkg: frm for pkg, (frm, to) in saved.items()}
                out[h] = HostResult(
                    "failed",
                    "dpkg was interrupted or left packages half-configured",
                    versions=dict(fleet.installed[h]),
                    phase="preflight",
                    snapshot=snapshot,
                    artifacts={p: f"{rollback_dir}/{p}_{v}_all.deb" for p, v in snapshot.items()},
                )
                continue
            snapshot = {}
            for item in install[h]:
                pkg, ver = item.split("=")
                if pkg in saved and saved[pkg][1] == ver:
                    snapshot[pkg] = saved[pkg][0]
                elif pkg in fleet.installed[h]:
                    snapshot[pkg] = fleet.installed[h][pkg]
                    if not self.request.check:
                        saved[pkg] = (snapshot[pkg], ver)
            if fleet.crash_mid_install:
                fleet.interrupted.add(h)
                fleet.installed[h].update(item.split("=") for item in install[h])  # unpacked
                raise KeyboardInterrupt("simulated crash")
            installed, failed = [], False
            for item in install[h]:
                pkg, ver = item.split("=")
                if ver in fleet.fails:
                    failed = True
                if not self.request.check and fleet.installed[h].get(pkg) != ver:
                    fleet.installed[h][pkg] = ver
                    installed.append(item)
                    fleet.calls.append(("install", (h,)))
            out[h] = HostResult(
                "failed" if failed else "ok",
                "apt-get install failed (exit 100): dpkg returned an error code (1)"
                if failed
                else None,
                versions=dict(fleet.installed[h]),
                phase="install" if failed else "done",
                snapshot=snapshot,
                artifacts={p: f"{rollback_dir}/{p}_{v}_all.deb" for p, v in snapshot.items()},
                installed=installed,
            )
        if fleet.crash_after_patch:
            raise KeyboardInterrupt("simulated crash")
        return out

    def close(self) -> None:
        self.closed = True


PLAN = """
name: test
select: {{include: [demoweb], unscored: include}}
stages:
  - name: canary
    hosts: 1
    health:
      - {{check: http, params: {{url: "http://127.0.0.1:8080/"}}, critical: true}}
  - name: rest
    after: [canary]
    hosts: rest
    parallel: 2
    health:
      - {{check: http, params: {{url: "http://127.0.0.1:8080/"}}, critical: true}}
failure_budget: {budget}
"""


def _frozen_text(text: str, n: int = 3, *, to: str = "1.1-1") -> tuple[Any, dict[str, Any]]:
    """A plan (YAML text) frozen over n web hosts, each with demoweb 1.0-1 -> `to` pending."""
    spec = parse_plan(text, source="test.yml")
    hosts = [PlanHost(f"web{i:02d}", ("web",), "debian 12 bookworm") for i in range(1, n + 1)]
    updates = {
        h.name: [PlanUpdate("demoweb", "all", "1.0-1", to, "demoweb", False, False, False, NOW)]
        for h in hosts
    }
    expanded = expand_plan(spec, hosts, updates, {}, now=NOW)
    data = freeze(
        expanded, spec, inventory_snapshot=inventory_snapshot(hosts, expanded), created_at=NOW
    )
    return spec, data


def _frozen(n: int, budget: str = "{hosts: 0}", *, to: str = "1.1-1") -> tuple[Any, dict[str, Any]]:
    return _frozen_text(PLAN.format(budget=budget), n, to=to)


def _fleet(n: int, **kw: Any) -> FakeFleet:
    return FakeFleet({f"web{i:02d}": {"demoweb": "1.0-1"} for i in range(1, n + 1)}, **kw)


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    return open_store(db_url(str(tmp_path / "pp.db")))


def _opts(**kw: Any) -> ApplyOptions:
    return ApplyOptions(now=lambda: NOW, sleep=lambda _s: None, **kw)


def _order(fleet: FakeFleet, kind: str) -> list[tuple[str, ...]]:
    return [hosts for k, hosts in fleet.calls if k == kind]


def test_a_healthy_update_goes_wave_by_wave(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(5)
    fleet = _fleet(5)
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    assert summary.status == "succeeded" and summary.exit_code == ExitCode.OK
    assert all(v == {"demoweb": "1.1-1"} for v in fleet.installed.values())
    patched = _order(fleet, "patch")
    assert len(patched) == 3 and len(patched[0]) == 1  # canary alone, then batches of 2
    assert set(summary.hosts.values()) == {"healthy"}
    with session_scope(engine) as s:
        outcomes = s.exec(select(PatchOutcome)).all()
        assert {o.outcome for o in outcomes} == {"healthy"} and len(outcomes) == 5
        assert s.exec(select(HostLock)).all() == []  # released
        steps = s.exec(select(RunStep).order_by(col(RunStep.id))).all()
        assert all(st.state == "done" and st.finished_at for st in steps)


def test_a_broken_update_stops_at_the_canary_and_is_rolled_back(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(5)
    fleet = _fleet(5, broken={"1.1-1"})
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    assert summary.status == "failed" and summary.exit_code == ExitCode.FAILED
    canary = _order(fleet, "patch")[0][0]
    assert len(_order(fleet, "patch")) == 1  # no later stage touched
    assert fleet.installed[canary] == {"demoweb": "1.0-1"}
    assert summary.hosts[canary] == "rolled_back"
    assert sorted(set(summary.hosts.values())) == ["pending", "rolled_back"]
    assert "failure budget exceeded" in summary.message
    with session_scope(engine) as s:
        outcome = s.exec(select(PatchOutcome)).one()
        assert (outcome.host, outcome.outcome) == (canary, "rolled_back")


def test_a_failing_install_is_restored_and_the_budget_decides(engine) -> None:  # type: ignore[no-untyped-def]
    # Budget 1: the first failure (the canary) is within it and the run goes on; the next
    # batch fails too, the budget is exceeded and the run halts, rolling back its stage.
    spec, data = _frozen(5, "{hosts: 1}")
    fleet = _fleet(5, fails={"1.1-1"})
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    assert summary.status == "failed"
    assert len(_order(fleet, "patch")) == 2
    touched = [h for batch in _order(fleet, "patch") for h in batch]
    assert all(fleet.installed[h] == {"demoweb": "1.0-1"} for h in touched)
    assert all(summary.hosts[h] == "rolled_back" for h in touched)
    assert "3 host(s) counted" in summary.message and "1 allowed" in summary.message


def test_rollback_runs_in_reverse_deploy_order(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(5, "{hosts: 0}")
    fleet = _fleet(5)
    start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    run_id = _only_run(engine)
    deploy = [h for batch in _order(fleet, "patch") for h in batch]
    summary = rollback_run(engine, run_id, hosts=None, ops=fleet, opts=_opts())
    batches = _order(fleet, "rollback")
    assert [h for b in batches for h in b] == list(reversed(deploy))
    assert summary.exit_code == ExitCode.OK
    assert all(v == {"demoweb": "1.0-1"} for v in fleet.installed.values())


def test_an_unreachable_host_counts_as_the_budget_says(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(5, "{hosts: 0, unreachable_counts: false}")
    fleet = _fleet(5, down={"web05"})
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    assert summary.status == "partial" and summary.exit_code == ExitCode.PARTIAL
    assert summary.hosts["web05"] == "failed"
    assert fleet.installed["web05"] == {"demoweb": "1.0-1"}
    with session_scope(engine) as s:
        row = s.exec(select(RunHost).where(RunHost.host == "web05")).one()
        assert row.failure == "unreachable"

    spec, data = _frozen(5, "{hosts: 0, unreachable_counts: true}")
    summary = start_run(
        engine, spec, data, inventory="inv", ops=_fleet(5, down={"web05"}), opts=_opts()
    )
    assert summary.status == "failed"


def test_a_host_silent_during_its_patch_is_unknown_until_rolled_back_by_name(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(3, "{hosts: 0, unreachable_counts: false}")
    fleet = _fleet(3, down={"web03"})
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    run_id = _only_run(engine)
    assert summary.hosts["web03"] == "failed"
    with session_scope(engine) as s:
        row = s.exec(select(RunHost).where(RunHost.host == "web03")).one()
        assert "state unknown" in (row.message or "") and f"rollback {run_id}" in row.message
    assert _order(fleet, "rollback") == []  # nothing to talk to: no rollback attempted
    fleet.down.clear()
    fleet.installed["web03"]["demoweb"] = "1.1-1"  # it did install before it went silent
    summary = rollback_run(engine, run_id, hosts=["web03"], ops=fleet, opts=_opts())
    assert summary.exit_code == ExitCode.OK and summary.hosts["web03"] == "rolled_back"
    assert fleet.installed["web03"] == {"demoweb": "1.0-1"}  # the plan's from version


def _make_stale(engine, run_id: str) -> None:  # type: ignore[no-untyped-def]
    """The run's process died: its pid is gone, so its locks are stale."""
    with session_scope(engine) as s:
        for lock in s.exec(select(HostLock)).all():
            lock.pid = 999_999_999
            s.add(lock)
        run = s.get(Run, run_id)
        assert run is not None
        run.pid = 999_999_999
        s.add(run)


def test_a_crash_after_patching_resumes_without_patching_twice(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(3)
    fleet = _fleet(3, crash_after_patch=True)
    with pytest.raises(KeyboardInterrupt):
        start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    run_id = _only_run(engine)
    canary = _order(fleet, "patch")[0][0]
    with session_scope(engine) as s:
        host = s.exec(select(RunHost).where(RunHost.host == canary)).one()
        # Killed before the results were recorded: the snapshot is only on the host.
        assert host.status == "patching" and host.snapshot == {}
    _make_stale(engine, run_id)
    fleet.crash_after_patch = False
    messages: list[str] = []
    summary = resume_run(engine, run_id, ops=fleet, opts=_opts(progress=messages.append))
    assert summary.status == "succeeded"
    installs = [h for batch in _order(fleet, "install") for h in batch]
    assert installs.count(canary) == 1, "the canary was installed again after the crash"
    assert sorted(installs) == ["web01", "web02", "web03"]
    assert any("interrupted process (pid 999999999 is gone)" in m for m in messages)
    assert any(f"{canary}: already on the target versions" in m for m in messages)
    with session_scope(engine) as s:
        host = s.exec(select(RunHost).where(RunHost.host == canary)).one()
        assert host.snapshot == {"demoweb": "1.0-1"}  # the host's own snapshot, recovered


def test_a_crash_mid_install_resumes_by_rolling_the_host_back(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(3)
    fleet = _fleet(3, crash_mid_install=True)
    with pytest.raises(KeyboardInterrupt):
        start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    run_id = _only_run(engine)
    (canary,) = fleet.interrupted
    _make_stale(engine, run_id)
    fleet.crash_mid_install = False
    summary = resume_run(engine, run_id, ops=fleet, opts=_opts())
    # Its dpkg is broken, so it cannot be patched: it is put back from what the host kept,
    # although the store never heard of its snapshot, and the budget (0) stops the run.
    assert summary.status == "failed" and summary.exit_code == ExitCode.FAILED
    assert fleet.installed[canary]["demoweb"] == "1.0-1"
    assert ("rollback", (canary,)) in fleet.calls
    with session_scope(engine) as s:
        host = s.exec(select(RunHost).where(RunHost.host == canary)).one()
        assert host.status == "rolled_back" and host.failure == "install_failed"
        assert host.snapshot == {"demoweb": "1.0-1"}
    assert not [h for batch in _order(fleet, "install") for h in batch]
    assert all(fleet.installed[h]["demoweb"] == "1.0-1" for h in fleet.installed)


def test_a_patch_process_started_before_the_run_is_adopted_only_when_identical(engine) -> None:  # type: ignore[no-untyped-def]
    from patchpilot.ops.fleetops import plan_request

    spec, data = _frozen(5)
    fleet = _fleet(5)
    warm = fleet.open_patch(plan_request(data, run_id="r-warm", check=False))
    summary = start_run(
        engine, spec, data, inventory="inv", ops=fleet, opts=_opts(), run_id="r-warm", patching=warm
    )
    assert summary.status == "succeeded" and summary.run_id == "r-warm"
    assert len(fleet.opened) == 1 and warm.closed  # the engine used it, then ended it
    assert len(_order(fleet, "patch")) == 3

    # Started for check mode, but the run is real: the engine starts its own.
    fleet = _fleet(5)
    warm = fleet.open_patch(plan_request(data, run_id="r-warm2", check=True))
    summary = start_run(
        engine,
        spec,
        data,
        inventory="inv",
        ops=fleet,
        opts=_opts(),
        run_id="r-warm2",
        patching=warm,
    )
    assert summary.status == "succeeded"
    assert len(fleet.opened) == 2 and not fleet.opened[1].check and warm.closed


def test_a_second_run_on_the_same_hosts_is_refused(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(3)
    with session_scope(engine) as s:
        s.add(HostLock(host="web02", run_id="r-other", pid=1, controller="elsewhere"))
    with pytest.raises(RunLocked) as exc:
        start_run(engine, spec, data, inventory="inv", ops=_fleet(3), opts=_opts())
    assert exc.value.exit_code == ExitCode.LOCKED
    assert "web02 is locked by run r-other" in exc.value.message


def test_a_stale_lock_of_a_dead_process_is_reclaimed_with_a_message(engine) -> None:  # type: ignore[no-untyped-def]
    import socket

    spec, data = _frozen(3)
    with session_scope(engine) as s:
        s.add(
            HostLock(
                host="web02", run_id="r-dead", pid=999_999_999, controller=socket.gethostname()
            )
        )
    messages: list[str] = []
    summary = start_run(
        engine, spec, data, inventory="inv", ops=_fleet(3), opts=_opts(progress=messages.append)
    )
    assert summary.status == "succeeded"
    assert any("reclaimed the stale lock on web02 of run r-dead" in m for m in messages)


def test_unclear_health_pauses_and_approve_continues(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(3)

    class Flaky(FakeFleet):
        def measure(self, specs, hosts, *, since):  # type: ignore[no-untyped-def]
            out = super().measure(specs, hosts, since=since)
            # Latency has too few samples to judge: inconclusive, never silently healthy.
            return {
                h: [
                    Measurement(m.check, m.metric, m.unit, m.samples[:2], m.direction, m.critical)
                    if m.metric == "latency_ms"
                    else m
                    for m in ms
                ]
                for h, ms in out.items()
            }

    fleet = Flaky({f"web{i:02d}": {"demoweb": "1.0-1"} for i in range(1, 4)})
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    assert summary.status == "paused" and summary.exit_code == ExitCode.PAUSED
    run_id = summary.run_id
    with session_scope(engine) as s:
        assert {lk.pid for lk in s.exec(select(HostLock)).all()} == {0}  # held while paused
    with pytest.raises(RunLocked):
        start_run(engine, spec, data, inventory="inv", ops=_fleet(3), opts=_opts())
    # `apply --resume` does not get past a pause: only approve (or abort) does.
    with pytest.raises(BadInputError) as exc:
        resume_run(engine, run_id, ops=fleet, opts=_opts())
    assert "is paused" in exc.value.message and "approve" in (exc.value.hint or "")
    canary = _order(fleet, "patch")[0][0]
    assert len(_order(fleet, "patch")) == 1
    after = _fleet(3)
    after.installed[canary]["demoweb"] = "1.1-1"
    summary = resume_run(engine, run_id, ops=after, opts=_opts(), approve=True)
    assert summary.status == "succeeded", summary.message
    assert summary.hosts == {"web01": "healthy", "web02": "healthy", "web03": "healthy"}
    assert sorted(h for b in _order(after, "patch") for h in b) == sorted(
        {"web01", "web02", "web03"} - {canary}
    )
    with session_scope(engine) as s:
        actions = [a.action for a in s.exec(select(AuditEvent).where(AuditEvent.run_id == run_id))]
        host = s.exec(select(RunHost).where(RunHost.run_id == run_id, RunHost.host == canary)).one()
    assert "approve" in actions
    assert host.message is not None and host.message.startswith("approved:")


def test_abort_stops_a_paused_run_and_frees_its_hosts(engine) -> None:  # type: ignore[no-untyped-def]
    spec2, data2 = _frozen_text(
        PLAN.format(budget="{hosts: 0}").replace(
            "after: [canary]", "after: [canary]\n    approval: true"
        )
    )
    summary = start_run(engine, spec2, data2, inventory="inv", ops=_fleet(3), opts=_opts())
    assert summary.status == "paused" and "needs approval" in summary.message
    done = abort_run(engine, summary.run_id, reason="change freeze")
    assert done.status == "aborted"
    with session_scope(engine) as s:
        assert s.exec(select(HostLock)).all() == []
    with pytest.raises(BadInputError, match="already aborted"):
        abort_run(engine, summary.run_id)


def test_check_mode_changes_nothing(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(3)
    fleet = _fleet(3)
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts(check=True))
    assert summary.status == "check" and summary.exit_code == ExitCode.OK
    assert all(v == {"demoweb": "1.0-1"} for v in fleet.installed.values())
    assert not _order(fleet, "rollback")


def test_check_mode_fails_when_a_host_would_not_patch(engine) -> None:  # type: ignore[no-untyped-def]
    # A CI dry run must not pass when the real run would fail: every batch is checked.
    spec, data = _frozen(3, to="1.3-1")
    fleet = _fleet(3, fails={"1.3-1"})
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts(check=True))
    assert summary.status == "check_failed" and summary.exit_code == ExitCode.FAILED
    assert "nothing was changed; would not patch: " in summary.message
    assert all(h in summary.message for h in ("web01", "web02", "web03"))
    # Every batch was checked: a failure stops nothing in a dry run.
    assert sorted(h for b in _order(fleet, "patch") for h in b) == ["web01", "web02", "web03"]
    assert all(v == {"demoweb": "1.0-1"} for v in fleet.installed.values())
    assert not _order(fleet, "rollback")


def _only_run(engine) -> str:  # type: ignore[no-untyped-def]
    with session_scope(engine) as s:
        return s.exec(select(Run)).one().id


def test_shadow_mode_records_what_it_would_do_and_goes_on(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen_text(PLAN.format(budget="{hosts: 0}") + "health_policy: {shadow: true}\n")
    fleet = _fleet(3, broken={"1.1-1"})
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    assert summary.status == "succeeded"  # nothing acted on
    assert all(v == {"demoweb": "1.1-1"} for v in fleet.installed.values())
    assert not _order(fleet, "rollback")
    with session_scope(engine) as s:
        verdicts = s.exec(select(RunVerdict)).all()
        assert verdicts and all(v.shadow and v.verdict == "unhealthy" for v in verdicts)
        assert all(v.action == "would rollback failed hosts" for v in verdicts)
        assert s.exec(select(Run)).one().shadow


def test_a_rollback_is_verified_against_the_baseline(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(3)
    fleet = _fleet(3, broken={"1.1-1"})
    start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    with session_scope(engine) as s:
        (verify,) = s.exec(select(RunStep).where(RunStep.kind == "verify")).all()
        (host,) = verify.hosts
        assert verify.detail["verdicts"][host]["verdict"] == "healthy"


def test_a_stage_without_checks_is_judged_by_its_installs(engine) -> None:  # type: ignore[no-untyped-def]
    text = PLAN.format(budget="{hosts: 0}")
    check = '      - {check: http, params: {url: "http://127.0.0.1:8080/"}, critical: true}\n'
    text = text.replace("    health:\n" + check, "")
    assert "health" not in text
    spec, data = _frozen_text(text)
    fleet = _fleet(3)
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    assert summary.status == "succeeded"
    assert not _order(fleet, "measure")


WINDOW = "window: {{cron: '{cron}', duration: 1h, timezone: UTC}}\n"


def test_no_run_starts_outside_the_maintenance_window(engine) -> None:  # type: ignore[no-untyped-def]
    # NOW is 03:00 UTC; the window opens at 04:00.
    spec, data = _frozen_text(PLAN.format(budget="{hosts: 0}") + WINDOW.format(cron="0 4 * * *"))
    fleet = _fleet(3)
    with pytest.raises(BadInputError) as exc:
        start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    assert "outside the maintenance window" in exc.value.message
    assert "04:00" in (exc.value.hint or "")
    assert not fleet.calls
    with session_scope(engine) as s:
        assert s.exec(select(Run)).all() == []


def test_no_new_stage_starts_after_the_window_ends(engine) -> None:  # type: ignore[no-untyped-def]
    # The window 02:30-03:30 is open at the start; the clock then jumps past its end.
    spec, data = _frozen_text(PLAN.format(budget="{hosts: 0}") + WINDOW.format(cron="30 2 * * *"))
    fleet = _fleet(3)

    def clock() -> datetime:
        return NOW.replace(hour=4) if _order(fleet, "patch") else NOW

    asked: list[str] = []

    def yes(question: str) -> bool:
        asked.append(question)
        return True

    summary = start_run(
        engine,
        spec,
        data,
        inventory="inv",
        ops=fleet,
        # Even a yes at a terminal does not start a stage outside the window.
        opts=ApplyOptions(now=clock, sleep=lambda _s: None, confirm=yes),
    )
    assert summary.status == "paused" and "maintenance window has ended" in summary.message
    assert "next window, 2026-11-23T02:30:00+00:00 to 2026-11-23T03:30:00+00:00" in (
        summary.message
    )
    assert not asked
    assert len(_order(fleet, "patch")) == 1  # the canary stage ran, the next did not start
    # Approved outside a window: it pauses again, nothing is patched.
    late = ApplyOptions(now=lambda: NOW.replace(hour=5), sleep=lambda _s: None)
    again = resume_run(engine, summary.run_id, ops=fleet, opts=late, approve=True)
    assert again.status == "paused" and len(_order(fleet, "patch")) == 1
    # Approved within the next window: the rest goes on.
    inside = ApplyOptions(now=lambda: NOW.replace(day=23, hour=2, minute=45), sleep=lambda _s: None)
    done = resume_run(engine, summary.run_id, ops=fleet, opts=inside, approve=True)
    assert done.status == "succeeded" and len(_order(fleet, "patch")) == 2


def test_a_patch_past_its_stage_timeout_fails_the_host_and_leaves_it_for_a_human(engine) -> None:  # type: ignore[no-untyped-def]
    text = PLAN.format(budget="{hosts: 0}").replace("parallel: 2", "parallel: 2\n    timeout: 10m")
    spec, data = _frozen_text(text, 5)
    (canary,) = data["expansion"]["stages"][0]["batches"][0]
    stuck = data["expansion"]["stages"][1]["batches"][0][0]
    fleet = _fleet(5, hangs={stuck})
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    # Each host's patch is limited by its own stage's timeout (30m is the default).
    assert dict(fleet.opened[0].timeouts) == {
        h["name"]: 1800 if h["name"] == canary else 600 for h in data["expansion"]["hosts"]
    }
    assert summary.status == "failed" and "failure budget exceeded" in summary.message
    with session_scope(engine) as s:
        row = s.exec(select(RunHost).where(RunHost.host == stuck)).one()
    assert row.status == "failed" and row.failure == "timeout"
    assert "timeout (600 s)" in (row.message or "")
    assert f"patchpilot rollback {summary.run_id} --hosts {stuck}" in (row.message or "")
    # Its state is unknown: not touched unasked; the rest of its stage is rolled back.
    assert all(stuck not in hosts for hosts in _order(fleet, "rollback"))
    with session_scope(engine) as s:  # evidence for the risk model all the same
        outcome = s.exec(select(PatchOutcome).where(PatchOutcome.host == stuck)).one()
    assert outcome.outcome == "install_failed"
    assert fleet.installed[stuck]["demoweb"] == "1.1-1"
    assert summary.hosts[canary] == "healthy"
    # Named by the operator, it is rolled back to the versions from before the run.
    done = rollback_run(engine, summary.run_id, hosts=[stuck], ops=fleet, opts=_opts())
    assert done.exit_code == ExitCode.OK and fleet.installed[stuck]["demoweb"] == "1.0-1"
    # Nothing was read back, so the .deb the host may have kept is tried before its repositories.
    kept = f"/var/cache/patchpilot/rollback/{summary.run_id}/demoweb_1.0-1_all.deb"
    assert fleet.restores[-1] == {stuck: [f"{kept}|demoweb=1.0-1"]}


def test_a_rollback_that_fails_for_one_batch_goes_on_with_the_others(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(5)
    rest = data["expansion"]["stages"][1]["batches"]
    # Rollbacks: the failed host (1), the rest of its batch (2, Ansible fails), batch one (3).
    fleet = _fleet(5, broken_hosts={rest[1][0]}, rollback_error=2)
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    assert summary.status == "failed"
    assert len(_order(fleet, "rollback")) == 3
    assert {summary.hosts[h] for h in rest[0]} == {"rolled_back"}
    assert {fleet.installed[h]["demoweb"] for h in rest[0]} == {"1.0-1"}
    (other,) = rest[1][1:]
    assert summary.hosts[other] == "rollback_failed"
    with session_scope(engine) as s:
        row = s.exec(select(RunHost).where(RunHost.host == other)).one()
    assert "ansible-playbook could not start" in (row.message or "")


def test_a_dry_run_stays_a_dry_run_and_has_nothing_to_roll_back(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(3)
    fleet = _fleet(3, crash_after_patch=True)
    with pytest.raises(KeyboardInterrupt):
        start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts(check=True))
    run_id = _only_run(engine)
    _make_stale(engine, run_id)
    fleet.crash_after_patch = False
    # Resumed without --check, it is still the dry run it was started as.
    summary = resume_run(engine, run_id, ops=fleet, opts=_opts())
    assert summary.status == "check"
    assert all(v == {"demoweb": "1.0-1"} for v in fleet.installed.values())
    assert all(request.check for request in fleet.opened)
    with pytest.raises(BadInputError) as exc:
        rollback_run(engine, run_id, hosts=["web01"], ops=fleet, opts=_opts())
    assert "was a --check run" in exc.value.message
    assert not _order(fleet, "rollback")


def test_check_mode_fails_a_host_the_rollback_policy_would_refuse(engine) -> None:  # type: ignore[no-untyped-def]
    class Unkept(FakePatchRun):
        def batch(self, hosts: Sequence[str]) -> dict[str, HostResult]:
            out = super().batch(hosts)
            for h in hosts:  # the previous version is in no repository or cache
                out[h].rollback_missing = ["demoweb=1.0-1"]
            return out

    class Fleet(FakeFleet):
        def open_patch(self, request: PatchRequest) -> FakePatchRun:
            self.opened.append(request)
            return Unkept(self, request, [list(b) for b in request.batches])

    spec, data = _frozen(3)
    fleet = Fleet({f"web{i:02d}": {"demoweb": "1.0-1"} for i in range(1, 4)})
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts(check=True))
    assert summary.status == "check_failed" and summary.exit_code == ExitCode.FAILED
    assert "rollback impossible (previous version not available: demoweb=1.0-1)" in (
        summary.message
    )


def test_a_host_with_a_held_package_is_skipped_not_failed(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(3)  # failure budget 0
    fleet = _fleet(3, held={"web02"})
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    assert summary.status == "partial" and summary.exit_code == ExitCode.PARTIAL
    assert summary.hosts == {"web01": "healthy", "web02": "skipped", "web03": "healthy"}
    assert "skipped (packages held on the host): web02" in summary.message
    assert not _order(fleet, "rollback")
    assert fleet.installed["web02"]["demoweb"] == "1.0-1"


@pytest.mark.parametrize("then", ["resume", "manual rollback"])
def test_a_crash_in_a_stage_wide_rollback_is_finished_later(engine, then: str) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen(5)  # canary 1, then the rest in batches of 2; budget 0
    rest = data["expansion"]["stages"][1]["batches"]
    bad = rest[1][0]  # fails in the second batch of the rest: the first batch is healthy
    # Rollbacks: the failed host (1), the rest of its batch (2), the first batch (3, crash).
    fleet = _fleet(5, broken_hosts={bad}, crash_in_rollback=3)
    with pytest.raises(KeyboardInterrupt):
        start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    run_id = _only_run(engine)
    with session_scope(engine) as s:
        states = {r.host: r.status for r in s.exec(select(RunHost))}
    assert {states[h] for h in rest[0]} == {"rolling_back"}
    _make_stale(engine, run_id)
    fleet.crash_in_rollback = None
    if then == "resume":
        summary = resume_run(engine, run_id, ops=fleet, opts=_opts())
        assert summary.status == "failed" and "failure budget exceeded" in summary.message
    else:
        summary = rollback_run(
            engine, run_id, hosts=None, ops=fleet, opts=_opts(), reason="after the crash"
        )
        assert summary.exit_code == ExitCode.OK
        with session_scope(engine) as s:
            (event,) = s.exec(select(AuditEvent).where(AuditEvent.action == "manual rollback"))
        assert event.detail["reason"] == "after the crash" and event.user
    for h in (h for b in rest for h in b):
        assert fleet.installed[h]["demoweb"] == "1.0-1", h
    with session_scope(engine) as s:
        states = {r.host: r.status for r in s.exec(select(RunHost))}
    assert {states[h] for b in rest for h in b} == {"rolled_back"}
    if then == "resume":  # rollback_wave: the canary stage stays patched
        (canary,) = data["expansion"]["stages"][0]["batches"][0]
        assert states[canary] == "healthy" and fleet.installed[canary]["demoweb"] == "1.1-1"


def test_an_emergency_plan_is_audited_as_such(engine) -> None:  # type: ignore[no-untyped-def]
    spec, data = _frozen_text(PLAN.format(budget="{hosts: 0}") + "emergency: true\n")
    messages: list[str] = []
    start_run(
        engine, spec, data, inventory="inv", ops=_fleet(3), opts=_opts(progress=messages.append)
    )
    with session_scope(engine) as s:
        (first, *_rest) = s.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
        assert first.action == "apply emergency plan" and first.detail["emergency"] is True
        assert s.exec(select(Run)).one().emergency
    assert any("EMERGENCY" in m for m in messages)


def test_runs_show_prints_what_hosts_and_operators_wrote_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from patchpilot.cli import main

    db = tmp_path / "pp.db"
    engine = open_store(db_url(str(db)))
    spec, data = _frozen(3)
    fleet = _fleet(3)
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    rollback_run(
        engine, summary.run_id, hosts=None, ops=fleet, opts=_opts(), reason="see [/etc/apt]"
    )
    with session_scope(engine) as s:
        host = s.exec(select(RunHost).where(RunHost.host == "web01")).one()
        host.message = "E: [/x]"
        s.add(host)
    capsys.readouterr()
    assert main(["--db", str(db), "runs", "show", "last"]) == ExitCode.OK
    out = " ".join(capsys.readouterr().out.split())  # Rich may wrap long cells
    assert "E: [/x]" in out
    assert "reason=see [/etc/apt]" in out


THREE_STAGES = """
name: three
select: {include: [demoweb, libdemo], unscored: include}
stages:
  - name: canary
    hosts: 1
    health:
      - {check: http, params: {url: "http://127.0.0.1:8080/"}, critical: true}
  - name: wave1
    after: [canary]
    hosts: 3
    parallel: 2
    health:
      - {check: http, params: {url: "http://127.0.0.1:8080/"}, critical: true}
  - name: wave2
    after: [wave1]
    hosts: rest
    parallel: 2
    on_failure: rollback_all
    health:
      - {check: http, params: {url: "http://127.0.0.1:8080/"}, critical: true}
failure_budget: {hosts: 0}
"""


def _two_package_plan(n: int) -> tuple[Any, dict[str, Any]]:
    spec = parse_plan(THREE_STAGES, source="three.yml")
    hosts = [PlanHost(f"web{i:02d}", ("web",), "debian 12 bookworm") for i in range(1, n + 1)]
    updates = {
        h.name: [
            PlanUpdate("demoweb", "all", "1.0-1", "1.1-1", "demoweb", False, False, False, NOW),
            PlanUpdate("libdemo", "all", "2.0-1", "2.1-1", "libdemo", False, False, False, NOW),
        ]
        for h in hosts
    }
    expanded = expand_plan(spec, hosts, updates, {}, now=NOW)
    data = freeze(
        expanded, spec, inventory_snapshot=inventory_snapshot(hosts, expanded), created_at=NOW
    )
    return spec, data


def _restored(fleet: FakeFleet) -> list[tuple[str, list[str]]]:
    """(host, packages in the order sent) of every rollback call, in order."""
    out = []
    for restore in fleet.restores:
        for host, items in restore.items():
            names = []
            for item in items:
                item = item.split("|")[-1]
                name = Path(item).name
                names.append(name.split("_")[0] if name.endswith(".deb") else item.split("=")[0])
            out.append((host, names))
    return out


def test_a_rollback_does_what_the_plan_view_showed(engine) -> None:  # type: ignore[no-untyped-def]
    """The undo order a user reviewed in `plan` (ExpandedPlan.rollback: last batch first,
    last host of a batch first, each host's packages in reverse install order) is the order
    the run rolls back in: across stages and batches, manual or after a failure."""
    from patchpilot.plan.model import ExpandedPlan

    spec, data = _two_package_plan(7)
    reviewed = [
        (r.host, [u.package for u in r.packages])
        for r in ExpandedPlan.from_dict(data["expansion"]).rollback
    ]
    assert len({(h["stage"], h["batch"]) for h in data["expansion"]["hosts"]}) >= 4
    fleet = FakeFleet(
        {f"web{i:02d}": {"demoweb": "1.0-1", "libdemo": "2.0-1"} for i in range(1, 8)}
    )
    summary = start_run(engine, spec, data, inventory="inv", ops=fleet, opts=_opts())
    assert summary.status == "succeeded", summary.message
    rollback_run(engine, summary.run_id, hosts=None, ops=fleet, opts=_opts())
    assert _restored(fleet) == reviewed
    assert [r["host"] for r in data["expansion"]["rollback"]] == [h for h, _ in reviewed]

    # The last wave breaks: rollback_all undoes every stage, in the same reviewed order.
    spec, data = _two_package_plan(7)
    last = data["expansion"]["stages"][-1]["batches"][-1]
    broken = FakeFleet(
        {f"web{i:02d}": {"demoweb": "1.0-1", "libdemo": "2.0-1"} for i in range(1, 8)},
        broken_hosts=set(last),
    )
    summary = start_run(engine, spec, data, inventory="inv", ops=broken, opts=_opts())
    assert summary.status == "failed"
    # The failed batch is restored first, then every stage's patched hosts.
    failed_first = [(h, p) for h, p in reviewed if h in last]
    rest = [(h, p) for h, p in reviewed if h not in last]
    assert _restored(broken) == failed_first + rest
    assert all(v == {"demoweb": "1.0-1", "libdemo": "2.0-1"} for v in broken.installed.values())
