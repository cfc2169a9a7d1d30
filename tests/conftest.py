from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that tear the shared lab down must run after every test that uses it.
    items.sort(key=lambda item: item.get_closest_marker("lab_teardown") is not None)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Callable[[], str]]:
    """Makes a new empty PostgreSQL database and gives its URL (one server per session)."""
    from tests.pg import PostgresServer

    # Not under pytest's own temporary folder: that one is closed to the postgres user.
    root = Path(tempfile.mkdtemp(prefix="patchpilot-pg-"))
    server = PostgresServer(root).start()
    try:
        yield server.new_database
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
