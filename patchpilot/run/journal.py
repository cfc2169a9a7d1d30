"""Every store session of a run: its row and its hosts' rows, the step journal, verdicts,
incidents, audit events, risk outcomes and host locks.

A run's hosts are read once, when the journal opens, and kept: the process that holds the
run's locks is the only writer of its host rows, so each change is written to the store
(one transaction, committed before the run goes on) and to the kept row at the same time,
and no step reads the rows back. Host and run states change only through the tables of
`run.states`.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from patchpilot.errors import BadInputError, ExitCode, PatchpilotError
from patchpilot.health.types import Measurement
from patchpilot.run.states import (
    HostEvent,
    HostState,
    RunEvent,
    RunState,
    StepState,
    host_after,
    run_after,
)
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

log = logging.getLogger(__name__)


class RunLocked(PatchpilotError):
    exit_code = ExitCode.LOCKED


def who() -> tuple[str, str]:
    """(user, controller) for the audit log and locks."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return user, socket.gethostname()


def audit(session: Session, action: str, *, run_id: str | None, **detail: Any) -> None:
    user, controller = who()
    session.add(
        AuditEvent(user=user, controller=controller, run_id=run_id, action=action, detail=detail)
    )


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_run(engine: Engine, run_id: str) -> Run:
    with session_scope(engine) as s:
        run = s.get(Run, run_id)
        if run is None:
            raise BadInputError(
                f"no run {run_id!r} in this store", hint="`patchpilot runs list` shows the runs"
            )
        s.expunge(run)
        return run


def create_run(
    engine: Engine, run: Run, rows: Sequence[RunHost], action: str, **detail: Any
) -> None:
    """The run's row, its hosts' rows and the audit of its start, in one transaction."""
    with session_scope(engine) as s:
        s.add(run)
        for h in rows:
            s.add(h)
        audit(s, action, run_id=run.id, **detail)


# --- locks -----------------------------------------------------------------------------------

LEASE_SECONDS = 120  # a lock's lease; its run renews it every HEARTBEAT_SECONDS
HEARTBEAT_SECONDS = 20


def _aware(d: datetime | None) -> datetime | None:
    return None if d is None else d if d.tzinfo else d.replace(tzinfo=UTC)


def lock_live(lock: HostLock, *, now: datetime | None = None) -> bool:
    """A lock holds while its run may still act: paused (pid 0) until approve or abort; on
    this controller while its process lives and its lease has not expired; taken on another
    controller, until its lease expires (its process cannot be seen from here)."""
    if lock.pid == 0:
        return True
    now = now or datetime.now(UTC)
    expires = _aware(lock.expires_at)
    expired = expires is not None and expires < now
    _, controller = who()
    if lock.controller == controller:
        return pid_alive(lock.pid) and not expired
    return not expired if expires is not None else True  # no lease: never presumed dead


def run_live(engine: Engine, run: Run) -> bool:
    """A running run whose process may still act: alive here, or holding a live lease."""
    if run.status != RunState.RUNNING:
        return False
    if run.pid == os.getpid():
        return False
    with session_scope(engine) as s:
        locks = s.exec(select(HostLock).where(HostLock.run_id == run.id)).all()
    if any(lock.pid != 0 and lock.pid != os.getpid() and lock_live(lock) for lock in locks):
        return True
    _, controller = who()
    return run.controller == controller and pid_alive(run.pid or 0)


def _why_stale(lock: HostLock) -> str:
    _, controller = who()
    if lock.controller == controller and not pid_alive(lock.pid):
        return f"pid {lock.pid} is gone"
    return f"the lease of pid {lock.pid} on {lock.controller} expired"


def _lease(now: datetime) -> dict[str, datetime]:
    return {"heartbeat_at": now, "expires_at": now + timedelta(seconds=LEASE_SECONDS)}


def acquire_locks(
    engine: Engine, run_id: str, hosts: Sequence[str], *, progress: Callable[[str], None]
) -> None:
    """Take every host for this run, or none, atomically: a stale lock is removed only if
    it is still exactly the stale lock that was read (a conditional delete whose row count
    is checked), and the new locks are inserted in the same transaction, so two processes
    racing for the same stale lock cannot both get it."""
    _, controller = who()
    now = datetime.now(UTC)
    try:
        with session_scope(engine) as s:
            held = s.exec(select(HostLock).where(col(HostLock.host).in_(list(hosts)))).all()
            for lock in held:
                own = lock.run_id == run_id
                if own:
                    if lock.pid > 0 and lock.pid != os.getpid() and lock_live(lock):
                        raise RunLocked(
                            f"run {run_id} is still running (pid {lock.pid} on {lock.controller})",
                            hint="wait for it, or stop that process first",
                        )
                    if lock.pid > 0 and lock.pid != os.getpid():
                        progress(
                            f"taking over {lock.host} from this run's interrupted process "
                            f"({_why_stale(lock)})"
                        )
                elif lock_live(lock, now=now):
                    holder = "paused" if lock.pid == 0 else f"pid {lock.pid} on {lock.controller}"
                    raise RunLocked(
                        f"host {lock.host} is locked by run {lock.run_id} ({holder})",
                        hint=f"wait for it, or `patchpilot abort {lock.run_id}` if it must stop; "
                        "`patchpilot locks list` shows every lock",
                    )
                else:
                    progress(
                        f"reclaimed the stale lock on {lock.host} of run {lock.run_id} "
                        f"({_why_stale(lock)})"
                    )
                    audit(s, "lock reclaimed", run_id=run_id, host=lock.host, stale_run=lock.run_id)
                gone = s.execute(
                    delete(HostLock).where(
                        col(HostLock.host) == lock.host,
                        col(HostLock.run_id) == lock.run_id,
                        col(HostLock.pid) == lock.pid,
                        col(HostLock.controller) == lock.controller,
                    )
                )
                if getattr(gone, "rowcount", 1) != 1:
                    raise RunLocked(
                        f"another run took {lock.host} at the same moment",
                        hint="`patchpilot locks list` shows who holds it",
                    )
            s.flush()
            for h in hosts:
                s.add(
                    HostLock(
                        host=h, run_id=run_id, pid=os.getpid(), controller=controller, **_lease(now)
                    )
                )
            s.flush()
    except IntegrityError as exc:
        raise RunLocked(
            "another run took some of these hosts at the same moment",
            hint="`patchpilot locks list` shows who holds them",
        ) from exc
    except OperationalError as exc:  # SQLite: another writer won the race for the store
        raise RunLocked(
            "another run took some of these hosts at the same moment",
            hint="`patchpilot locks list` shows who holds them",
        ) from exc


def renew_leases(engine: Engine, run_id: str) -> int:
    """This process's locks for the run, their lease renewed; how many."""
    now = datetime.now(UTC)
    with session_scope(engine) as s:
        result = s.execute(
            update(HostLock)
            .where(col(HostLock.run_id) == run_id, col(HostLock.pid) == os.getpid())
            .values(**_lease(now))
        )
        return int(getattr(result, "rowcount", 0) or 0)


class Heartbeat:
    """Renews a run's leases every HEARTBEAT_SECONDS while the run is driven, so another
    controller sharing the store sees the run as live."""

    def __init__(self, engine: Engine, run_id: str, every: float = HEARTBEAT_SECONDS) -> None:
        self._engine, self._run_id, self._every = engine, run_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="patchpilot-lease", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            try:
                renew_leases(self._engine, self._run_id)
            except Exception:  # a busy store: the next beat tries again, well within the lease
                log.debug("renewing the leases of %s failed", self._run_id, exc_info=True)


def list_locks(engine: Engine) -> list[dict[str, Any]]:
    """Every host lock, with whether it is live."""
    now = datetime.now(UTC)
    with session_scope(engine) as s:
        locks = s.exec(select(HostLock).order_by(col(HostLock.run_id), col(HostLock.host))).all()
        return [
            {
                "host": lk.host,
                "run": lk.run_id,
                "pid": lk.pid,
                "controller": lk.controller,
                "acquired_at": _aware(lk.acquired_at),
                "expires_at": _aware(lk.expires_at),
                "state": "paused" if lk.pid == 0 else "live" if lock_live(lk, now=now) else "stale",
            }
            for lk in locks
        ]


def release_locks_by_hand(
    engine: Engine, *, hosts: Sequence[str] = (), run_id: str | None = None, force: bool = False
) -> list[str]:
    """An operator's release of host locks (by host, or every lock of a run). A live lock is
    released only with `force`; each release is audited. Returns the hosts released."""
    if not hosts and run_id is None:
        raise BadInputError("name the hosts or give --run RUN_ID", hint="`patchpilot locks list`")
    with session_scope(engine) as s:
        stmt = select(HostLock)
        if run_id is not None:
            stmt = stmt.where(HostLock.run_id == run_id)
        if hosts:
            stmt = stmt.where(col(HostLock.host).in_(list(hosts)))
        locks = s.exec(stmt).all()
        if not locks:
            raise BadInputError("no such lock", hint="`patchpilot locks list` shows every lock")
        live = [lk for lk in locks if lk.pid != 0 and lock_live(lk)]
        if live and not force:
            lk = live[0]
            raise RunLocked(
                f"host {lk.host} is held by run {lk.run_id} (pid {lk.pid} on {lk.controller}), "
                "which looks alive",
                hint="stop that run first, or add --force if you are sure it is gone",
            )
        released = sorted(lk.host for lk in locks)
        for lk in locks:
            s.delete(lk)
        audit(
            s,
            "locks released",
            run_id=run_id,
            hosts=released,
            forced=bool(live),
            runs=sorted({lk.run_id for lk in locks}),
        )
        return released


def _release(s: Session, run_id: str, *, keep_paused: bool) -> None:
    """Free a run's locks, or keep them for its approval (pid 0, no lease to expire)."""
    if keep_paused:
        for lock in s.exec(select(HostLock).where(HostLock.run_id == run_id)).all():
            lock.pid = 0
            lock.expires_at = None
            s.add(lock)
    else:
        s.execute(delete(HostLock).where(col(HostLock.run_id) == run_id))


def release_locks(engine: Engine, run_id: str, *, keep_paused: bool = False) -> None:
    with session_scope(engine) as s:
        _release(s, run_id, keep_paused=keep_paused)


# --- one run ---------------------------------------------------------------------------------


def measurements_to_json(data: Mapping[str, Sequence[Measurement]]) -> dict[str, Any]:
    return {h: [m.to_dict() for m in ms] for h, ms in data.items()}


def measurements_from_json(data: Mapping[str, Any]) -> dict[str, list[Measurement]]:
    return {h: [Measurement.from_dict(m) for m in ms] for h, ms in data.items()}


class Journal:
    """One run's rows, read once, and every write of the run."""

    def __init__(
        self,
        engine: Engine,
        run_id: str,
        *,
        on_step: Callable[[int | None, int | None, str, Sequence[str]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.run_id = run_id
        self._on_step = on_step or (lambda _s, _b, _k, _h: None)
        with session_scope(engine) as s:
            run = s.get(Run, run_id)
            if run is None:
                raise BadInputError(f"no run {run_id!r} in this store")
            rows = s.exec(
                select(RunHost).where(RunHost.run_id == run_id).order_by(col(RunHost.order))
            ).all()
            for r in (run, *rows):
                s.expunge(r)
        self.run: Run = run
        self.hosts: dict[str, RunHost] = {r.host: r for r in rows}

    # -- reading (from what was read once) --

    def rows(self, *, stage: int | None = None, batch: int | None = None) -> list[RunHost]:
        return [
            r
            for r in self.hosts.values()
            if (stage is None or r.stage == stage) and (batch is None or r.batch == batch)
        ]

    def states(self) -> dict[str, str]:
        return {h: r.status for h, r in self.hosts.items()}

    # -- host and run rows --

    def move(self, host: str, event: HostEvent, **values: Any) -> HostState:
        """The host's next state by the table, written with `values` in one transaction."""
        state = host_after(self.hosts[host].status, event)
        self.note(host, status=state, **values)
        return state

    def note(self, host: str, **values: Any) -> None:
        """Fields of a host's row other than its state (message, snapshot)."""
        row = self.hosts[host]
        now = datetime.now(UTC)
        with session_scope(self.engine) as s:
            stored = s.get(RunHost, row.id)
            assert stored is not None
            for k, v in values.items():
                setattr(stored, k, v)
                setattr(row, k, v)
            stored.updated_at = row.updated_at = now
            s.add(stored)

    def set_run(self, *, event: RunEvent | None = None, **values: Any) -> None:
        """The run's row; with `event`, its next state by the table."""
        if event is not None:
            values["status"] = run_after(self.run.status, event)
        with session_scope(self.engine) as s:
            self._write_run(s, values)

    def _write_run(self, s: Session, values: Mapping[str, Any]) -> None:
        stored = s.get(Run, self.run_id)
        assert stored is not None
        now = datetime.now(UTC)
        for k, v in values.items():
            setattr(stored, k, v)
            setattr(self.run, k, v)
        stored.updated_at = self.run.updated_at = now
        s.add(stored)

    def end(self, event: RunEvent, *, message: str, exit_code: ExitCode) -> RunState:
        """The run's last state, its locks freed and the audit of its end: one transaction."""
        status = run_after(self.run.status, event)
        with session_scope(self.engine) as s:
            self._write_run(
                s,
                {
                    "status": status,
                    "message": message,
                    "exit_code": int(exit_code),
                    "finished_at": datetime.now(UTC),
                },
            )
            _release(s, self.run_id, keep_paused=False)
            audit(s, f"run {status}", run_id=self.run_id, message=message)
        return status

    def pause(self, reason: str, *, stage: int, batch: int) -> None:
        """Paused for `approve`: the run's state and its locks held for it, in one go."""
        status = run_after(self.run.status, RunEvent.PAUSE)
        with session_scope(self.engine) as s:
            self._write_run(
                s,
                {
                    "status": status,
                    "pause_reason": reason,
                    "stage_index": stage,
                    "batch_index": batch,
                },
            )
            _release(s, self.run_id, keep_paused=True)

    # -- the step journal --

    @contextmanager
    def step(
        self,
        kind: str,
        *,
        stage: int | None,
        batch: int | None,
        hosts: Sequence[str] = (),
        **detail: Any,
    ) -> Iterator[dict[str, Any]]:
        """A journal entry: written (committed) before the step, then again after it."""
        self._on_step(stage, batch, kind, list(hosts))
        with session_scope(self.engine) as s:
            row = RunStep(
                run_id=self.run_id,
                stage=stage,
                batch=batch,
                kind=kind,
                hosts=list(hosts),
                detail=detail,
            )
            s.add(row)
            s.flush()
            step_id = row.id
        out: dict[str, Any] = dict(detail)
        state = StepState.FAILED
        try:
            yield out
            state = StepState.DONE
        finally:
            with session_scope(self.engine) as s:
                done = s.get(RunStep, step_id)
                if done is not None:
                    done.state = state
                    done.detail = out
                    done.finished_at = datetime.now(UTC)
                    s.add(done)

    def record(
        self, kind: str, *, stage: int, batch: int, hosts: Sequence[str], **detail: Any
    ) -> None:
        """A step that is over as it is written (a host's snapshot)."""
        with session_scope(self.engine) as s:
            s.add(
                RunStep(
                    run_id=self.run_id,
                    stage=stage,
                    batch=batch,
                    kind=kind,
                    state=StepState.DONE,
                    hosts=list(hosts),
                    detail=detail,
                    finished_at=datetime.now(UTC),
                )
            )

    def _done_steps(self, kind: str, **where: Any) -> list[RunStep]:
        with session_scope(self.engine) as s:
            stmt = select(RunStep).where(
                RunStep.run_id == self.run_id, RunStep.kind == kind, RunStep.state == StepState.DONE
            )
            for k, v in where.items():
                stmt = stmt.where(getattr(RunStep, k) == v)
            rows = s.exec(stmt.order_by(col(RunStep.id))).all()
            for r in rows:
                s.expunge(r)
            return list(rows)

    def approved(self, stage: int) -> bool:
        return bool(self._done_steps("approve", stage=stage))

    def saved_baseline(self, stage: int, batch: int) -> dict[str, Any] | None:
        """The batch's baseline as recorded (the newest, after a crash)."""
        rows = self._done_steps("baseline", stage=stage, batch=batch)
        return dict(rows[-1].detail) if rows else None

    def baseline_of(self, row: RunHost) -> list[Measurement]:
        """The host's own measurements from before its patch."""
        saved = self.saved_baseline(row.stage, row.batch) or {}
        return measurements_from_json(saved.get("measurements", {})).get(row.host, [])

    def artifacts(self) -> dict[str, dict[str, str]]:
        """Per host, the .debs kept at its first preflight in this run."""
        out: dict[str, dict[str, str]] = {}
        for row in self._done_steps("snapshot"):
            for host in row.hosts:
                out.setdefault(host, dict((row.detail or {}).get("artifacts", {})))
        return out

    # -- evidence --

    def verdict(self, *, stage: int, batch: int, **values: Any) -> None:
        with session_scope(self.engine) as s:
            s.add(RunVerdict(run_id=self.run_id, stage=stage, batch=batch, **values))

    def incident(
        self,
        *,
        stage: int | None,
        batch: int | None,
        hosts: Sequence[str],
        reason: str,
        evidence: Mapping[str, Any],
        audited: tuple[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """An incident, and (`audited`: action, detail) its audit event, in one transaction."""
        with session_scope(self.engine) as s:
            s.add(
                Incident(
                    run_id=self.run_id,
                    stage=stage,
                    batch=batch,
                    hosts=list(hosts),
                    reason=reason,
                    evidence=dict(evidence),
                )
            )
            if audited is not None:
                audit(s, audited[0], run_id=self.run_id, **audited[1])

    def audit(self, action: str, **detail: Any) -> None:
        with session_scope(self.engine) as s:
            audit(s, action, run_id=self.run_id, **detail)

    def outcomes(self, outcomes: Mapping[str, str]) -> None:
        """The fleet's evidence for `risk train`: one outcome per host and package, with
        the changelog facts gathered for each (package, version), through the risk model's
        own `record_outcome`."""
        from patchpilot.risk.score import record_outcome

        rows = [self.hosts[h] for h in outcomes]
        with session_scope(self.engine) as s:
            packages = sorted({u["package"] for r in rows for u in r.updates})
            facts_of: dict[tuple[str, str], PendingUpdate] = {}
            for pu in s.exec(select(PendingUpdate).where(col(PendingUpdate.package).in_(packages))):
                facts_of.setdefault((pu.package, pu.candidate_version), pu)
            # A batch walked again after a crash records nothing twice (one row per run,
            # host and package, as the table's unique key also holds).
            recorded = {
                (o.host, o.package, o.arch)
                for o in s.exec(
                    select(PatchOutcome).where(
                        PatchOutcome.run_id == self.run_id,
                        col(PatchOutcome.host).in_([r.host for r in rows]),
                    )
                )
            }
            for r in rows:
                for u in r.updates:
                    if (r.host, u["package"], u.get("arch", "")) in recorded:
                        continue
                    facts = facts_of.get((u["package"], u["to"]))
                    # The plan's own update, with the facts gathered for its version.
                    update = PendingUpdate(
                        host_id=0,
                        package=u["package"],
                        source=u.get("source"),
                        arch=u.get("arch", ""),
                        installed_version=u["from"],
                        candidate_version=u["to"],
                        cve_ids=list(facts.cve_ids) if facts else [],
                        urgency=facts.urgency if facts else None,
                        changelog_entries=facts.changelog_entries if facts else None,
                        upstream_changed=facts.upstream_changed if facts else None,
                        reboot_needed=bool(u.get("reboot_needed")),
                    )
                    record_outcome(
                        s, run_id=self.run_id, host=r.host, update=update, outcome=outcomes[r.host]
                    )
