"""Faults a lab host can be given on purpose, and their undoing: stop it, cut its network,
hold its dpkg lock; `restore_host` mends all of them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from patchpilot.errors import LabError
from patchpilot.lab import image, network
from patchpilot.lab.hosts import LOCK_UNIT
from patchpilot.lab.procs import _terminate
from patchpilot.lab.system import ensure_kernel_limits, require_lab_prerequisites

if TYPE_CHECKING:
    from patchpilot.lab.fleet import Lab


def stop_host(lab: Lab, name: str, *, wait: float = 30) -> None:
    h = lab.host(name)
    pid = lab._supervisor_pids().get(h.name)
    if pid is None:
        return
    _terminate([pid], wait=wait)


def start_host(lab: Lab, name: str) -> None:
    require_lab_prerequisites()
    h = lab.host(name)
    base = image.ensure_base_image(lab.cache, h.release)
    lab._prepare_host(h, base)
    ensure_kernel_limits()
    if not lab.is_running(h):
        lab._start_supervisor(h)
    if network.link_is_up(h.index):
        lab.wait_for_ssh([h])


def cut_host(lab: Lab, name: str) -> None:
    network.set_link(lab.host(name).index, up=False)


def restore_host(lab: Lab, name: str) -> None:
    """Undo every fault: reconnect the cable, boot the host if stopped, free the dpkg lock."""
    h = lab.host(name)
    network.set_link(h.index, up=True)
    if not lab.is_running(h):
        start_host(lab, name)
    lab.wait_for_ssh([h])
    release_dpkg_lock(lab, name)


def hold_dpkg_lock(lab: Lab, name: str, seconds: int = 600) -> None:
    """Hold dpkg's locks from inside the host, as a stuck apt run would, for `seconds`."""
    h = lab.host(name)
    script = (
        "import fcntl,time\n"
        "fs=[open(p,'a') for p in ('/var/lib/dpkg/lock-frontend','/var/lib/dpkg/lock')]\n"
        "[fcntl.lockf(f,fcntl.LOCK_EX) for f in fs]\n"
        "time.sleep(10**9)\n"
    )
    lab.ssh(
        h,
        f"systemctl stop {LOCK_UNIT} 2>/dev/null; systemd-run --quiet --unit={LOCK_UNIT} "
        f'--property=RuntimeMaxSec={int(seconds)} /usr/bin/python3 -c "{script}"',
    )
    # Wait until the lock is really held, so callers can rely on it at once.
    probe = (
        "python3 -c \"import fcntl;f=open('/var/lib/dpkg/lock-frontend','a');"
        'fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)"'
    )
    deadline = time.monotonic() + 10
    while lab.ssh(h, probe, check=False).returncode == 0:
        if time.monotonic() > deadline:
            raise LabError(f"could not take the dpkg lock on {name}")
        time.sleep(0.2)


def release_dpkg_lock(lab: Lab, name: str) -> None:
    lab.ssh(lab.host(name), f"systemctl stop {LOCK_UNIT} 2>/dev/null || true")
