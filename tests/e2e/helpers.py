"""Helpers for e2e tests: the real CLI, Ansible and HTTP, as a user would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def pp(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would. Each gets its own /dev/null as
    stdin: a shared one is a shared file description, and an ssh running meanwhile (it sets
    its stdin non-blocking) would make Ansible refuse to start in another test process."""
    proc = subprocess.run(
        [sys.executable, "-m", "patchpilot", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"patchpilot {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def ansible(*args: str, inventory: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        [str(BIN / "ansible"), "-i", str(inventory), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def http_get(url: str, timeout: float = 15) -> tuple[int, str]:
    """GET with retries while the service (re)starts; returns (status, body)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@dataclass
class LabFleet:
    inventory: Path
    hosts: dict[str, str]  # name -> address
    groups: dict[str, list[str]]
    # Passwords tests gave patchpilot (sudo, vault): none may be left anywhere after the suite.
    secrets: list[str] = field(default_factory=list)
    # The files a user made to hold them (a vault password file): theirs, not patchpilot's.
    secret_files: list[Path] = field(default_factory=list)

    def ssh(self, host: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return pp("lab", "ssh", host, command, check=check)

    def status(self) -> dict[str, dict[str, object]]:
        return {row["name"]: row for row in json.loads(pp("lab", "status", "--json").stdout)}


def secret_search_roots(basetemp: Path) -> list[Path]:
    """Where patchpilot and Ansible keep or leave files: every e2e store, state folder and log
    (all under pytest's base temp), the default state folder, Ansible's own folder, and the
    gate folders of patch runs."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return [
        basetemp,
        state / "patchpilot",
        Path.home() / ".ansible",
        *Path("/tmp").glob("patchpilot-*"),
    ]


def files_holding(secrets: list[str], roots: list[Path], skip: list[Path]) -> tuple[list[str], int]:
    """The files under `roots` (raw bytes: SQLite pages and WAL files too) that contain one of
    the secrets, and how many files were read."""
    wanted = [s.encode() for s in secrets if s]
    found: list[str] = []
    checked = 0
    for root in roots:
        paths = [root] if root.is_file() else root.rglob("*") if root.is_dir() else []
        for path in paths:
            if path in skip or path.is_symlink() or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            checked += 1
            if any(s in data for s in wanted):
                found.append(str(path))
    return found, checked
