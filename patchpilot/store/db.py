"""Opening the store: engine, pragmas, schema migrations."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlmodel import Session, create_engine

from patchpilot.errors import BadInputError, PatchpilotError

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision (a unit test keeps it equal to alembic's head). A store
# already there opens without loading alembic, which costs a third of a second per command.
HEAD = "0006"


def make_engine(url: str) -> Engine:
    """An engine for `url`; for SQLite, the file's folder is created and WAL mode is on so a
    reader never blocks the run that writes, and a crash never leaves half a transaction."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise BadInputError(
            f"invalid database URL {url!r}", hint="use a file path or an SQLAlchemy URL"
        ) from exc
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database and parsed.database != ":memory:":
        _create_owner_only(Path(parsed.database))
    connect_args: dict[str, Any] = {"timeout": 30} if is_sqlite else {}
    engine = create_engine(url, connect_args=connect_args)
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _create_owner_only(path: Path) -> None:
    """The store holds the fleet's packages and its unpatched security updates: a new one,
    and a folder made for it, are readable by their owner only (SQLite gives its -wal and
    -shm files the database file's mode)."""
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # made by another process at the same moment
    except OSError as exc:
        raise BadInputError(
            f"cannot create the store {path}: {exc.strerror}",
            hint="choose another location with --db or PATCHPILOT_DB",
        ) from exc


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    # Every commit reaches the disk before the run goes on: a run resumed after a power loss
    # finds every step it journalled.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA cache_size=-65536")  # 64 MiB: index pages stay cached during ingest
    cur.close()


def _revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    except (OperationalError, DatabaseError):
        return None  # no table yet, or unreadable: the full path below says which
    return None if row is None else str(row[0])


def upgrade_schema(engine: Engine) -> str:
    """Bring the schema to the newest revision; returns that revision."""
    if _revision(engine) == HEAD:
        return HEAD
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    try:
        with engine.begin() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            if current != head:
                if current is not None and current not in _known_revisions(cfg):
                    raise PatchpilotError(
                        f"the store is at schema revision {current}, newer than this patchpilot",
                        hint="upgrade patchpilot, or point --db at another store",
                    )
                log.info("migrating the store from %s to %s", current or "empty", head)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
    except (OperationalError, DatabaseError) as exc:
        raise BadInputError(
            f"cannot open the store {engine.url.render_as_string(hide_password=True)}: "
            f"{exc.orig or exc}",
            hint="check the path and its permissions, or choose another with --db",
        ) from exc
    return head or ""


def _known_revisions(cfg: Any) -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}


def check_integrity(engine: Engine) -> None:
    """SQLite's quick_check: a damaged store is refused before anything is written to it."""
    if engine.url.get_backend_name() != "sqlite":
        return
    try:
        with engine.connect() as conn:
            rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check").fetchall()]
    except (OperationalError, DatabaseError) as exc:
        text = str(exc.orig or exc)
        if "not a database" in text or isinstance(exc, OperationalError):
            return  # not a store at all, or not readable: upgrade_schema says so
        rows = [text]
    if rows != ["ok"]:
        raise PatchpilotError(
            f"the store {engine.url.database} is damaged: {'; '.join(rows[:3])}",
            hint="restore it from a backup, or recover it with `sqlite3 FILE .recover`",
        )


def open_store(url: str) -> Engine:
    engine = make_engine(url)
    check_integrity(engine)
    upgrade_schema(engine)
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed if the block succeeds, rolled back if it raises."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
