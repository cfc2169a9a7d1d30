"""Processes, mounts and cgroups of the lab on this machine: finding, ending and cleaning
them, and running work for many hosts at once."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from patchpilot.lab.supervisor import CGROUP_PARENT, cgroup_hierarchies
from patchpilot.lab.system import run

if TYPE_CHECKING:
    from patchpilot.lab.hosts import LabHost

log = logging.getLogger(__name__)
T = TypeVar("T")


def _ssh_keygen(path: Path, comment: str) -> None:
    run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        what=f"generating the SSH key {path.name} ({comment})",
    )


def _remove_cgroups() -> None:
    """Remove the hosts' cgroups (empty once their processes are gone), deepest first."""
    for mount in cgroup_hierarchies():
        top = mount / CGROUP_PARENT
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
        for d in [*reversed(dirs), top]:
            with contextlib.suppress(OSError):
                d.rmdir()


def _host_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return ""


def _processes() -> list[tuple[int, list[str]]]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            out.append((int(entry.name), raw.rstrip(b"\0").decode(errors="replace").split("\0")))
    return out


def _mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces etc. octal-escaped.
        points.append(line.split()[4].encode().decode("unicode_escape"))
    return points


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _terminate(pids: list[int], wait: float = 30) -> None:
    """SIGTERM, wait for a clean exit, then SIGKILL what is left."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            log.warning("process %s did not stop in %.0fs; killing it", pid, wait)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _parallel(fn: Callable[[LabHost], T], hosts: list[LabHost]) -> list[T]:
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        return list(pool.map(fn, hosts))
