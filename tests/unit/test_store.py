from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlmodel import select

from patchpilot.errors import BadInputError, PatchpilotError
from patchpilot.settings import db_url
from patchpilot.store.db import (
    HEAD,
    MIGRATIONS,
    make_engine,
    open_store,
    session_scope,
    upgrade_schema,
)
from patchpilot.store.models import Host, InstalledPackage, PendingUpdate


def test_new_sqlite_store_is_created_migrated_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "pp.db"
    engine = open_store(db_url(str(path)))
    assert path.exists()
    tables = set(inspect(engine).get_table_names())
    assert {
        "host",
        "installedpackage",
        "service",
        "pendingupdate",
        "gatherrun",
        "alembic_version",
    } <= tables
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0006"


def test_the_fast_open_path_knows_the_newest_migration() -> None:
    # A store at HEAD opens without alembic; a HEAD behind the migrations would skip one.
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD


def test_upgrading_twice_keeps_the_data(tmp_path: Path) -> None:
    url = db_url(str(tmp_path / "pp.db"))
    engine = open_store(url)
    with session_scope(engine) as s:
        s.add(Host(name="web01", groups=["web"]))
    engine2 = open_store(url)
    with session_scope(engine2) as s:
        host = s.exec(select(Host)).one()
        assert host.name == "web01" and host.groups == ["web"]


def test_deleting_a_host_deletes_its_packages_and_updates(tmp_path: Path) -> None:
    engine = open_store(db_url(str(tmp_path / "pp.db")))
    with session_scope(engine) as s:
        host = Host(name="db01")
        s.add(host)
        s.flush()
        assert host.id is not None
        s.add(InstalledPackage(host_id=host.id, name="libssl3", version="3.0.15-1~deb12u1"))
        s.add(
            PendingUpdate(
                host_id=host.id,
                package="libssl3",
                installed_version="3.0.15-1~deb12u1",
                candidate_version="3.0.17-1~deb12u2",
                cve_ids=["CVE-2025-9230"],
            )
        )
    with session_scope(engine) as s:
        s.delete(s.exec(select(Host)).one())
    with session_scope(engine) as s:
        assert s.exec(select(InstalledPackage)).all() == []
        assert s.exec(select(PendingUpdate)).all() == []


def test_a_failed_block_writes_nothing(tmp_path: Path) -> None:
    engine = open_store(db_url(str(tmp_path / "pp.db")))
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        s.add(Host(name="web01"))
        s.flush()
        raise RuntimeError("crash mid-transaction")
    with session_scope(engine) as s:
        assert s.exec(select(Host)).all() == []


def test_a_file_that_is_not_a_database_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BadInputError) as info:
        open_store(db_url(str(path)))
    assert "cannot open the store" in info.value.message
    assert path.read_bytes() == b"this is not sqlite" * 100  # untouched


def test_a_store_from_a_newer_patchpilot_is_refused(tmp_path: Path) -> None:
    url = db_url(str(tmp_path / "pp.db"))
    open_store(url)
    with sqlite3.connect(tmp_path / "pp.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(PatchpilotError) as info:
        upgrade_schema(make_engine(url))
    assert "newer than this patchpilot" in info.value.message


def test_invalid_url_is_bad_input() -> None:
    with pytest.raises(BadInputError):
        make_engine("not a url://x")


def test_the_migrations_build_exactly_the_models(tmp_path: Path) -> None:
    """A model change without its migration would leave users' stores behind."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    engine = open_store(db_url(str(tmp_path / "pp.db")))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_runs_stored_before_run_updates_existed_get_their_rows_on_upgrade(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from patchpilot.store.models import Run, RunUpdate

    url = db_url(str(tmp_path / "pp.db"))
    engine = open_store(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    hosts = [
        {
            "name": "web01",
            "updates": [
                {"package": "libssl3", "security": True, "probability": 0.12},
                {"package": "demoweb", "security": False, "probability": None},
            ],
        },
        {"name": "web02", "updates": []},
    ]
    with sqlite3.connect(tmp_path / "pp.db") as conn:  # a run as 0004 wrote it
        conn.execute(
            "INSERT INTO run (id, plan_name, plan_sha256, plan, inventory, status, check_mode,"
            " emergency, shadow, stage_index, batch_index, started_at, updated_at)"
            " VALUES ('r-1', 'p', 'x', ?, 'inv', 'succeeded', 0, 0, 0, 0, 0,"
            " '2026-12-01 10:00:00', '2026-12-01 10:00:00')",
            (json.dumps({"expansion": {"hosts": hosts}}),),
        )
    engine = open_store(url)
    with session_scope(engine) as s:
        assert s.get(Run, "r-1") is not None
        rows = {(u.host, u.package, u.security, u.probability) for u in s.exec(select(RunUpdate))}
    assert rows == {("web01", "libssl3", True, 0.12), ("web01", "demoweb", False, None)}
