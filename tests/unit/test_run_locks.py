"""Host locks and the store's durability: atomic reclaim under a real race between two
processes, leases that keep a run on another controller live, operators' lock commands,
one outcome per run/host/package, a run's end and its locks in one transaction, and a store
that is owner-only, fully synced and checked when opened."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from patchpilot.errors import BadInputError, PatchpilotError
from patchpilot.run import journal, locks
from patchpilot.run.locks import (
    RunLocked,
    acquire_locks,
    list_locks,
    lock_live,
    release_locks_by_hand,
    renew_leases,
    run_live,
    who,
)
from patchpilot.settings import db_url
from patchpilot.store.db import open_store, session_scope
from patchpilot.store.models import AuditEvent, HostLock, Run

DEAD_PID = 999_999_999


def _stale_lock(url: str, host: str = "web01") -> None:
    _, controller = who()
    engine = open_store(url)
    with session_scope(engine) as s:
        s.add(HostLock(host=host, run_id="r-dead", pid=DEAD_PID, controller=controller))


def _contend(url: str, run_id: str, barrier: Any, done: Any, results: Any) -> None:
    engine = open_store(url)
    barrier.wait()
    try:
        acquire_locks(engine, run_id, ["web01"], progress=lambda _m: None)
        results.put((run_id, True))
    except RunLocked:
        results.put((run_id, False))
    # Stay alive until both have tried: a winner that exited would be a dead holder, whose
    # lock the other may then rightly reclaim.
    done.wait()


def test_two_processes_racing_for_one_stale_lock_never_both_get_it(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    doubles, winners = 0, 0
    for i in range(50):
        url = db_url(str(tmp_path / f"race{i}.db"))
        _stale_lock(url)
        barrier, done, results = ctx.Barrier(2), ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=_contend, args=(url, f"r-{i}-{n}", barrier, done, results))
            for n in (1, 2)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        got = dict(results.get(timeout=5) for _ in procs)
        held = [run for run, ok in got.items() if ok]
        doubles += len(held) > 1
        winners += len(held) == 1
        with session_scope(open_store(url)) as s:
            (lock,) = s.exec(select(HostLock)).all()
        assert [lock.run_id] == held or not held
    assert doubles == 0
    assert winners >= 45  # a try may end with neither (both saw the other), never with both


def _lock(**kw: Any) -> HostLock:
    values: dict[str, Any] = {
        "host": "web01",
        "run_id": "r-other",
        "pid": 4242,
        "controller": "bastion-2.example",
    }
    values.update(kw)
    return HostLock(**values)


def test_a_lease_keeps_a_run_on_another_controller_live_until_it_expires() -> None:
    now = datetime.now(UTC)
    assert lock_live(_lock(expires_at=now + timedelta(seconds=60)), now=now)
    assert not lock_live(_lock(expires_at=now - timedelta(seconds=1)), now=now)
    assert lock_live(_lock(expires_at=None), now=now)  # no lease: never presumed dead
    assert lock_live(_lock(pid=0), now=now)  # paused
    _, here = who()
    assert not lock_live(_lock(controller=here, pid=DEAD_PID, expires_at=now + timedelta(60)))
    assert lock_live(_lock(controller=here, pid=os.getpid(), expires_at=now + timedelta(60)))
    # Alive here but its lease ran out (hung, or the pid was reused): stale.
    assert not lock_live(_lock(controller=here, pid=os.getpid(), expires_at=now - timedelta(1)))


def test_a_run_live_elsewhere_is_not_taken_over_and_an_expired_one_is(tmp_path: Path) -> None:
    engine = open_store(db_url(str(tmp_path / "pp.db")))
    soon = datetime.now(UTC) + timedelta(seconds=100)
    with session_scope(engine) as s:
        s.add(
            Run(
                id="r-other",
                plan_name="p",
                plan_sha256="x",
                inventory="i",
                pid=4242,
                controller="bastion-2.example",
            )
        )
        s.add(_lock(expires_at=soon))
    with session_scope(engine) as s:
        run = s.get(Run, "r-other")
        assert run is not None
        s.expunge(run)
    assert run_live(engine, run)
    with pytest.raises(RunLocked, match="locked by run r-other"):
        acquire_locks(engine, "r-new", ["web01"], progress=lambda _m: None)
    with session_scope(engine) as s:
        lock = s.get(HostLock, "web01")
        assert lock is not None
        lock.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        s.add(lock)
    assert not run_live(engine, run)
    messages: list[str] = []
    acquire_locks(engine, "r-new", ["web01"], progress=messages.append)
    assert any("lease of pid 4242 on bastion-2.example expired" in m for m in messages)


def test_the_heartbeat_renews_this_processes_leases(tmp_path: Path) -> None:
    engine = open_store(db_url(str(tmp_path / "pp.db")))
    acquire_locks(engine, "r-1", ["a", "b"], progress=lambda _m: None)
    with session_scope(engine) as s:
        before = {lk.host: lk.expires_at for lk in s.exec(select(HostLock))}
    assert renew_leases(engine, "r-1") == 2
    with session_scope(engine) as s:
        after = {lk.host: lk.expires_at for lk in s.exec(select(HostLock))}
    assert all(after[h] is not None and after[h] >= before[h] for h in before)  # type: ignore[operator]
    with locks.Heartbeat(engine, "r-1", every=0.05):
        import time

        time.sleep(0.3)


def test_operators_list_and_release_locks(tmp_path: Path) -> None:
    engine = open_store(db_url(str(tmp_path / "pp.db")))
    soon = datetime.now(UTC) + timedelta(seconds=100)
    with session_scope(engine) as s:
        s.add(_lock(expires_at=soon))
        s.add(_lock(host="web02", run_id="r-paused", pid=0))
    rows = {r["host"]: r for r in list_locks(engine)}
    assert rows["web01"]["state"] == "live" and rows["web02"]["state"] == "paused"
    with pytest.raises(RunLocked, match="looks alive"):
        release_locks_by_hand(engine, hosts=["web01"])
    assert release_locks_by_hand(engine, hosts=["web01"], force=True) == ["web01"]
    assert release_locks_by_hand(engine, run_id="r-paused") == ["web02"]
    assert list_locks(engine) == []
    with pytest.raises(BadInputError):
        release_locks_by_hand(engine, hosts=["web01"])
    with session_scope(engine) as s:
        actions = [a.action for a in s.exec(select(AuditEvent))]
    assert actions.count("locks released") == 2


def test_a_store_is_owner_only_fully_synced_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "new" / "pp.db"
    engine = open_store(db_url(str(path)))
    with session_scope(engine) as s:
        s.add(_lock())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for extra in (path.with_name("pp.db-wal"), path.with_name("pp.db-shm")):
        if extra.exists():
            assert stat.S_IMODE(extra.stat().st_mode) & 0o077 == 0, extra
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_a_damaged_store_is_refused_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "pp.db"
    engine = open_store(db_url(str(path)))
    with session_scope(engine) as s:
        for i in range(3000):
            s.add(AuditEvent(user="u", controller="c", action=f"a{i}", detail={"n": "x" * 50}))
    engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    pages = len(data) // page
    assert pages > 10
    for n in range(pages - 6, pages - 1):  # the b-tree headers of some of the newest pages
        data[n * page : n * page + 16] = b"\x5a" * 16
    path.write_bytes(bytes(data))
    with pytest.raises(PatchpilotError, match="is damaged"):
        open_store(db_url(str(path)))


def test_a_runs_end_and_its_locks_change_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from patchpilot.errors import ExitCode
    from patchpilot.run.states import RunEvent

    engine = open_store(db_url(str(tmp_path / "pp.db")))
    with session_scope(engine) as s:
        s.add(Run(id="r-1", plan_name="p", plan_sha256="x", inventory="i", plan={}))
    acquire_locks(engine, "r-1", ["a"], progress=lambda _m: None)
    j = journal.Journal(engine, "r-1")

    def broken_audit(*_a: Any, **_k: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(journal, "audit", broken_audit)
    with pytest.raises(OSError):
        j.end(RunEvent.SUCCEED, message="done", exit_code=ExitCode.OK)
    with session_scope(engine) as s:
        run = s.get(Run, "r-1")
        assert run is not None and run.status == "running"
        assert [lk.host for lk in s.exec(select(HostLock))] == ["a"]  # nothing half-done
    monkeypatch.undo()
    journal.Journal(engine, "r-1").end(RunEvent.SUCCEED, message="done", exit_code=ExitCode.OK)
    with session_scope(engine) as s:
        run = s.get(Run, "r-1")
        assert run is not None and run.status == "succeeded"
        assert s.exec(select(HostLock)).all() == []


def test_a_batch_walked_again_records_no_outcome_twice(tmp_path: Path) -> None:
    """After a crash, resume walks the batch again (a wave rollback's included): its outcomes
    are recorded once, and the table's unique key refuses a second row anyway."""
    from sqlalchemy.exc import IntegrityError

    from patchpilot.store.models import PatchOutcome
    from tests.unit.test_report import fill_store

    engine, healthy, _broken = fill_store(tmp_path / "pp.db")

    def rows() -> list[tuple[str, str, str]]:
        with session_scope(engine) as s:
            stmt = select(PatchOutcome).where(PatchOutcome.run_id == healthy)
            return sorted((o.host, o.package, o.outcome) for o in s.exec(stmt))

    before = rows()
    assert len(before) == 5  # five hosts, one update each
    again = journal.Journal(engine, healthy)
    again.outcomes({h: o for h, _p, o in before})
    assert rows() == before
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        first = s.exec(select(PatchOutcome).where(PatchOutcome.run_id == healthy)).first()
        assert first is not None
        copy = first.model_dump(exclude={"id"})
        s.add(PatchOutcome(**copy))
