"""Helpers for e2e tests: the real CLI, Ansible and HTTP, as a user would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
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

    def ssh(self, host: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return pp("lab", "ssh", host, command, check=check)

    def status(self) -> dict[str, dict[str, object]]:
        return {row["name"]: row for row in json.loads(pp("lab", "status", "--json").stdout)}
