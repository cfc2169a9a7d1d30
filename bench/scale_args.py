"""A 10,000-host x 5-package run's patch process, started against a fake inventory: how long
until Ansible reaches the first batch's gate (the first batch is dispatched the moment the
run opens it), and the largest single argument of its command line. Linux refuses any one
argument over 128 KiB (E2BIG); extra vars and the host list travel in files, so the largest
argument stays a path whatever the fleet's size.

    .venv/bin/python bench/scale_args.py [--hosts 10000] [--packages 5]

No host is contacted: the process is stopped at its first gate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from patchpilot.ops.executor import PLAY_START
from patchpilot.ops.fleetops import AnsibleOps, PatchRequest


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids: list[str] = []
        for task in Path(f"/proc/{p}/task").glob("*"):  # children of every thread
            try:
                kids += (task / "children").read_text().split()
            except OSError:
                continue
        for k in map(int, kids):
            out.append(k)
            todo.append(k)
    return out


def _largest_argument() -> tuple[int, int, str]:
    """(largest argument, whole command line) in bytes of ansible-playbook, and its name."""
    best = (0, 0, "")
    for pid in _descendants(os.getpid()):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"ansible-playbook" in a for a in args[:2]):
            big = max(args, key=len)
            best = max(best, (len(big), sum(len(a) + 1 for a in args), big[:60].decode()))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--packages", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pp-scale-"))
    names = [f"host{i:05d}.fleet.example" for i in range(args.hosts)]
    inventory = tmp / "inventory.yml"
    inventory.write_text(
        "all:\n  vars:\n    ansible_connection: local\n  hosts:\n"
        + "".join(f"    {h}:\n" for h in names)
    )
    packages = [f"lib{p}" for p in range(args.packages)]
    rows = [
        (
            (0 if i == 0 else 1, 0 if i == 0 else 1 + (i - 1) // 100),
            h,
            {p: "1.2-3+deb12u1" for p in packages},
        )
        for i, h in enumerate(names)
    ]
    request = PatchRequest.build(
        rows,
        run_id="r-20261201-000000-beef",
        reboot="if_needed",
        lock_timeout=120,
        on_impossible="refuse",
        check=True,
        stage_timeouts=[600, 600],
    )
    t0 = time.monotonic()
    run = AnsibleOps(inventory, forks=20).open_patch(request)
    try:
        # The play's first batch starts (and waits at its gate) once Ansible has read the
        # inventory and the extra vars of all hosts.
        largest = (0, 0, "")
        while True:
            kind, _ev = run._stream.next(timeout=600)
            largest = max(largest, _largest_argument())
            if kind == PLAY_START:
                break
        started = time.monotonic() - t0
        largest = max(largest, _largest_argument())
    finally:
        run.close()
    vars_bytes = sum(len(str(items)) for _h, items in request.install)
    print(f"hosts {args.hosts}, packages per host {args.packages}, batches {len(request.batches)}")
    print(f"first batch dispatched (Ansible at its gate) after {started:.1f} s")
    print(f"largest argument: {largest[0]} bytes ({largest[2]!r}); command line {largest[1]} bytes")
    print(f"install list in the extra-vars file: about {vars_bytes // 1024} KiB")


if __name__ == "__main__":
    main()
