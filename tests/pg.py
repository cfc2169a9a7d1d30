"""A throwaway PostgreSQL server for the tests that hold the store to PostgreSQL too: Debian's
own server binaries (`.ci/setup` installs `postgresql`), a cluster in a temporary folder,
reached only through its Unix socket, stopped at the end of the session."""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
from pathlib import Path


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL's server is missing: .ci/setup installs Debian's postgresql")
    return found[-1].parent


class PostgresServer:
    def __init__(self, root: Path) -> None:
        self.bindir = _bindir()
        self.root = root
        self.data = root / "data"
        self.socket = root / "sock"
        self.socket.mkdir(parents=True, exist_ok=True)
        # The server refuses to run as root: as root, it runs as Debian's postgres user.
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            shutil.chown(root, self.user)
            shutil.chown(self.socket, self.user)
        self._names = itertools.count(1)

    def _as_owner(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *cmd], check=True, capture_output=True, text=True, cwd=self.root, timeout=120
        )

    def start(self) -> PostgresServer:
        self._as_owner(
            str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"
        )
        options = f"-k {self.socket} -c listen_addresses='' -c fsync=off"
        # -l: the server's output goes to a file, not to the pipe this process reads.
        log = str(self.root / "server.log")
        self._as_owner(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            log,
            "-o",
            options,
            "-w",
            "start",
        )
        return self

    def stop(self) -> None:
        self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")

    def new_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"pp_{next(self._names)}"
        with psycopg.connect(
            host=str(self.socket), user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@/{name}?host={self.socket}"
