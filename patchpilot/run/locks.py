"""Host locks: taken atomically, held with a lease that a heartbeat renews, so a run on
another controller sharing the store stays live until its lease expires; and who did what
(the audit log's user and controller). docs/security.md says why."""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from patchpilot.errors import BadInputError, ExitCode, PatchpilotError
from patchpilot.run.states import LockState, RunState
from patchpilot.store.db import session_scope
from patchpilot.store.models import AuditEvent, HostLock, Run

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
                    holder = (
                        LockState.PAUSED.value
                        if lock.pid == 0
                        else f"pid {lock.pid} on {lock.controller}"
                    )
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
                "state": LockState.PAUSED
                if lk.pid == 0
                else LockState.LIVE
                if lock_live(lk, now=now)
                else LockState.STALE,
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
