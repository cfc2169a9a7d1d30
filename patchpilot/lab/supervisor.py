"""Keeps one lab host running: starts systemd-nspawn, and starts it again when the host reboots.

`systemctl reboot` inside a host makes systemd-nspawn exit with 133; any other exit, or SIGTERM
to this process, ends the loop. SIGTERM is passed on to systemd-nspawn, which shuts the host's
systemd down cleanly. Run as ``python -m patchpilot.lab.supervisor --name H --root DIR --netns NS``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

REBOOT_EXIT = 133
MARKER = "patchpilot.lab.supervisor"
CGROUP_PARENT = "patchpilot-lab"


def cgroup_hierarchies() -> list[Path]:
    """Mount points of the hierarchies systemd uses: cgroup2 and the v1 name=systemd one."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _source, options = [*post.split(), "", "", ""][:3]
        point = pre.split()[4]
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
            found.append(Path(point))
    return found


def join_own_cgroup(name: str) -> None:
    """Move this process (and so its systemd-nspawn) into a cgroup of the host's own.

    systemd-nspawn makes `payload` and `supervisor` cgroups where it starts; hosts started
    from one shared cgroup would share them, and their systemds would remove each other's
    unit cgroups at boot (seen as units failing with "Failed to attach to cgroup").
    """
    for mount in cgroup_hierarchies():
        group = mount / CGROUP_PARENT / name
        try:
            group.mkdir(parents=True, exist_ok=True)
            (group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            _say(f"{name}: could not use cgroup {group}: {exc}")


def nspawn_command(name: str, root: str, netns: str) -> list[str]:
    return [
        "systemd-nspawn",
        "--quiet",
        "--directory",
        root,
        "--boot",
        f"--machine={name}",
        "--register=no",
        "--keep-unit",
        f"--network-namespace-path=/run/netns/{netns}",
        "--console=read-only",
    ]


def supervise(name: str, root: str, netns: str) -> int:
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    join_own_cgroup(name)
    boots = 0
    while True:
        boots += 1
        _say(f"{name}: boot {boots}")
        child = subprocess.Popen(nspawn_command(name, root, netns), stdin=subprocess.DEVNULL)
        rc = child.wait()
        _say(f"{name}: systemd-nspawn exited with {rc}")
        if stopping or rc != REBOOT_EXIT:
            return 0 if stopping else rc
        time.sleep(0.2)


def _say(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=MARKER)
    parser.add_argument("--name", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--netns", required=True)
    args = parser.parse_args(argv)
    return supervise(args.name, args.root, args.netns)


if __name__ == "__main__":
    sys.exit(main())
