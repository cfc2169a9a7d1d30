"""The lab's hosts as data: the fleet a `lab up` asks for, each host's name, group, address
and release, and the Ansible inventory written for them."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from patchpilot.errors import BadInputError
from patchpilot.lab import image

DEFAULT_GROUPS = "web=6,db=2"
DEFAULT_RELEASE = "bookworm"
_GROUP_RE = re.compile(r"[a-z][a-z0-9_]{0,11}")


def ssh_options(known_hosts: Path) -> list[str]:
    """How everything reaches the lab's hosts: their keys checked against the lab's own
    known_hosts (written by `lab up` from the keys it made), never trusted blindly.
    ServerAlive makes a connection to a host that was cut off fail in about 15 s instead of
    hanging (Ansible's ControlPersist masters would otherwise wait forever)."""
    return [
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
    ]


def cli_ssh_options(known_hosts: Path) -> list[str]:
    return [*ssh_options(known_hosts), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]


RESERVED_GROUPS = {"all", "ungrouped"}
LOCK_UNIT = "patchpilot-dpkg-lock"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class HostSpec:
    name: str
    group: str
    release: str
    index: int


@dataclass
class LabHost:
    name: str
    group: str
    release: str
    index: int
    address: str

    @property
    def spec(self) -> HostSpec:
        return HostSpec(self.name, self.group, self.release, self.index)


@dataclass
class HostStatus:
    name: str
    group: str
    address: str
    state: str  # running / stopped / cut
    ssh_ok: bool


@dataclass
class UpResult:
    hosts: list[LabHost]
    inventory: Path
    timings: dict[str, float] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)


def parse_fleet(
    hosts: int | None, groups: str | None, release: str = DEFAULT_RELEASE
) -> list[HostSpec]:
    """`--hosts N` alone gives lab01..labNN; `--groups web=4,db=2[:release]` names by group."""
    image.validate_release(release)
    if groups is None and hosts is not None:
        groups = f"lab={hosts}"
    elif groups is None:
        groups = DEFAULT_GROUPS
    specs: list[HostSpec] = []
    seen: set[str] = set()
    names: set[str] = set()
    for part in (p.strip() for p in groups.split(",")):
        m = re.fullmatch(r"([^=]+)=(\d+)(?::(.+))?", part)
        if not m:
            raise BadInputError(
                f"invalid group spec {part!r}", hint="use NAME=COUNT[:RELEASE], e.g. web=4,db=2"
            )
        name, count, grp_release = m.group(1), int(m.group(2)), m.group(3) or release
        if not _GROUP_RE.fullmatch(name) or name in RESERVED_GROUPS:
            raise BadInputError(
                f"invalid group name {name!r}",
                hint="lower-case letters, digits and _, from a letter on; 12 at most",
            )
        if name in seen:
            raise BadInputError(f"group {name!r} given twice", hint="list each group once")
        if count < 1:
            raise BadInputError(f"group {name!r} needs at least 1 host", hint="e.g. web=4")
        image.validate_release(grp_release)
        seen.add(name)
        for i in range(1, count + 1):
            host = f"{name}{i:02d}"
            if host in names:
                raise BadInputError(
                    f"two hosts would be named {host!r}",
                    hint="rename a group so its names cannot run into another's",
                )
            names.add(host)
            specs.append(HostSpec(host, name, grp_release, len(specs) + 1))
    if hosts is not None and hosts != len(specs):
        raise BadInputError(
            f"--hosts {hosts} disagrees with --groups ({len(specs)} hosts)",
            hint="give one of them, or make the group counts add up",
        )
    if not specs:
        raise BadInputError("the lab needs at least one host", hint="e.g. --hosts 4")
    return specs


INVENTORY_HEADER = "# Written by `patchpilot lab up`; removed by `patchpilot lab down`.\n"


def write_inventory(path: Path, hosts: list[LabHost], key: Path, known_hosts: Path) -> None:
    groups: dict[str, dict[str, dict[str, object]]] = {}
    for h in hosts:
        groups.setdefault(h.group, {})[h.name] = {
            "ansible_host": h.address,
            "lab_release": h.release,
        }
    data = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(key),
                "ansible_ssh_common_args": " ".join(ssh_options(known_hosts)),
                "ansible_python_interpreter": "/usr/bin/python3",
            },
            "children": {g: {"hosts": hs} for g, hs in groups.items()},
        }
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(INVENTORY_HEADER + yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def _written_by_lab(path: Path) -> bool:
    try:
        return path.read_text().startswith(INVENTORY_HEADER)
    except OSError:
        return False
