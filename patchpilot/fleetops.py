"""What the engine does to hosts, as four operations: preflight, patch, rollback and measure.
`AnsibleOps` runs them through the executor (ansible-runner) against real hosts; unit tests of
the engine's logic give it a fake with the same methods."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from patchpilot import executor
from patchpilot.health.checks import CheckSpec, collect
from patchpilot.health.types import Measurement

log = logging.getLogger(__name__)


@dataclass
class HostResult:
    """One host's answer to an operation."""

    status: str  # ok, failed, unreachable
    message: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # installed after the operation
    snapshot: dict[str, str] = field(default_factory=dict)  # preflight: installed before
    artifacts: dict[str, str | None] = field(default_factory=dict)  # preflight: kept .debs
    rollback_missing: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    rebooted: bool = False
    boot_id: str | None = None


class FleetOps(Protocol):
    def preflight(
        self,
        packages: Mapping[str, Sequence[str]],
        *,
        rollback_dir: str,
        lock_timeout: int,
        check: bool,
    ) -> dict[str, HostResult]: ...

    def patch(
        self, install: Mapping[str, Sequence[str]], *, reboot: str, lock_timeout: int, check: bool
    ) -> dict[str, HostResult]: ...

    def rollback(
        self,
        restore: Mapping[str, Sequence[str]],
        *,
        restart_units: Sequence[str],
        lock_timeout: int,
    ) -> dict[str, HostResult]: ...

    def measure(
        self, specs: Sequence[CheckSpec], hosts: Sequence[str], *, since: float | None
    ) -> dict[str, list[Measurement]]: ...


def parse_versions(stdout: str) -> dict[str, str]:
    """dpkg-query 'name version status' lines -> installed versions."""
    out: dict[str, str] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2].startswith("i"):
            out[parts[0]] = parts[1]
    return out


def _read_versions(
    out: dict[str, HostResult], events: Mapping[str, Sequence[executor.HostEvent]]
) -> None:
    """The versions patch.yml and rollback.yml read back in their last task."""
    for h, result in out.items():
        for ev in events.get(h, []):
            if ev.task == "Installed versions afterwards" and ev.kind == "ok":
                result.versions = parse_versions(str(ev.result.get("stdout", "")))


class AnsibleOps:
    """The real operations: playbooks/*.yml through ansible-runner."""

    def __init__(self, inventory: str | Path, *, forks: int = 20):
        self.inventory = inventory
        self.forks = forks

    def _run(
        self, playbook: str, hosts: Sequence[str], extravars: dict[str, Any], check: bool = False
    ) -> tuple[dict[str, HostResult], dict[str, list[executor.HostEvent]]]:
        events: dict[str, list[executor.HostEvent]] = {h: [] for h in hosts}

        def on_event(ev: executor.HostEvent) -> None:
            events.setdefault(ev.host, []).append(ev)

        result = executor.run_playbook(
            playbook,
            self.inventory,
            limit=",".join(hosts),
            forks=self.forks,
            extravars=extravars,
            check=check,
            on_event=on_event,
        )
        out: dict[str, HostResult] = {}
        for h in hosts:
            o = result.hosts.get(h)
            if o is None:
                out[h] = HostResult("unreachable", "no answer from Ansible")
            else:
                out[h] = HostResult(o.status, o.message)
        return out, events

    def preflight(
        self,
        packages: Mapping[str, Sequence[str]],
        *,
        rollback_dir: str,
        lock_timeout: int,
        check: bool,
    ) -> dict[str, HostResult]:
        hosts = list(packages)
        out, events = self._run(
            "preflight.yml",
            hosts,
            {
                "patchpilot_packages": {h: list(p) for h, p in packages.items()},
                "patchpilot_rollback_dir": rollback_dir,
                "patchpilot_lock_timeout": lock_timeout,
            },
            check=check,
        )
        for h in hosts:
            for ev in events.get(h, []):
                if ev.action.endswith("patchpilot_preflight") and ev.kind in ("ok", "failed"):
                    r = ev.result
                    out[h].snapshot = dict(r.get("snapshot") or {})
                    out[h].artifacts = dict(r.get("artifacts") or {})
                    out[h].rollback_missing = list(r.get("rollback_missing") or [])
                    out[h].held = list(r.get("held") or [])
                    out[h].boot_id = r.get("boot_id")
        return out

    def patch(
        self, install: Mapping[str, Sequence[str]], *, reboot: str, lock_timeout: int, check: bool
    ) -> dict[str, HostResult]:
        hosts = list(install)
        out, events = self._run(
            "patch.yml",
            hosts,
            {
                "patchpilot_install": {h: list(p) for h, p in install.items()},
                "patchpilot_reboot": reboot,
                "patchpilot_lock_timeout": lock_timeout,
            },
            check=check,
        )
        _read_versions(out, events)
        for h in hosts:
            for ev in events.get(h, []):
                if ev.action.endswith("reboot") and ev.kind == "ok":
                    out[h].rebooted = bool(ev.result.get("rebooted"))
        return out

    def rollback(
        self,
        restore: Mapping[str, Sequence[str]],
        *,
        restart_units: Sequence[str],
        lock_timeout: int,
    ) -> dict[str, HostResult]:
        hosts = list(restore)
        out, events = self._run(
            "rollback.yml",
            hosts,
            {
                "patchpilot_restore": {h: list(p) for h, p in restore.items()},
                "patchpilot_restart_units": list(restart_units),
                "patchpilot_lock_timeout": lock_timeout,
            },
        )
        _read_versions(out, events)
        return out

    def measure(
        self, specs: Sequence[CheckSpec], hosts: Sequence[str], *, since: float | None
    ) -> dict[str, list[Measurement]]:
        if not specs or not hosts:
            return {h: [] for h in hosts}
        return collect(specs, hosts, inventory=self.inventory, since=since, forks=self.forks)
