"""The one boundary with Ansible: runs playbooks and inventory queries through ansible-runner
and returns typed results. No other module imports ansible_runner."""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner

from patchpilot.errors import BadInputError, PatchpilotError

log = logging.getLogger(__name__)

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
# A connection to a host that vanished fails in ~15 s instead of hanging on a ControlPersist
# master; used unless the user set their own ANSIBLE_SSH_ARGS.
DEFAULT_SSH_ARGS = (
    "-C -o ControlMaster=auto -o ControlPersist=60s -o ServerAliveInterval=5 "
    "-o ServerAliveCountMax=3"
)


@dataclass(frozen=True)
class HostEvent:
    """One task result on one host, as Ansible reported it."""

    host: str
    kind: str  # ok, failed, unreachable, skipped
    task: str
    action: str
    result: dict[str, Any]

    @property
    def message(self) -> str:
        msg = self.result.get("msg") or self.result.get("stderr") or self.result.get("reason")
        return " ".join(str(msg).split())[:500] if msg else f"{self.kind} at task {self.task!r}"


@dataclass
class HostOutcome:
    name: str
    status: str = "ok"  # ok, failed, unreachable
    message: str | None = None
    changed: bool = False


@dataclass
class PlaybookResult:
    status: str  # successful, failed, timeout, canceled
    rc: int
    hosts: dict[str, HostOutcome] = field(default_factory=dict)


@dataclass(frozen=True)
class InventoryHost:
    name: str
    address: str | None
    groups: tuple[str, ...]


def _env() -> dict[str, str]:
    # The Ansible commands must be those installed beside this Python, activated venv or not;
    # ansible-runner looks them up on this process's own PATH.
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = f"{bindir}{os.pathsep}{path}"
    env = {"PATH": os.environ["PATH"]}
    if "ANSIBLE_SSH_ARGS" not in os.environ:
        env["ANSIBLE_SSH_ARGS"] = DEFAULT_SSH_ARGS
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    # One SSH round trip per task instead of several (needs no `requiretty` in sudoers, the
    # default on Debian); a user's own setting wins.
    if "ANSIBLE_PIPELINING" not in os.environ:
        env["ANSIBLE_PIPELINING"] = "True"
    # A source Ansible cannot parse is an error, not a warning and a smaller fleet.
    env["ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED"] = "True"
    return env


def check_inventory_path(inventory: str | Path) -> Path:
    path = Path(inventory)
    if not path.exists():
        raise BadInputError(
            f"inventory not found: {inventory}",
            hint="give an Ansible inventory file, directory or script with -i",
        )
    return path.resolve()


def list_inventory(inventory: str | Path) -> list[InventoryHost]:
    """Every host with its groups and address, read by Ansible itself (any inventory form)."""
    path = check_inventory_path(inventory)
    with tempfile.TemporaryDirectory(prefix="patchpilot-inv-") as tmp:
        out, err = ansible_runner.get_inventory(
            "list",
            [str(path)],
            response_format="json",
            quiet=True,
            private_data_dir=tmp,
            envvars=_env(),
        )
    try:
        data = json.loads(out) if isinstance(out, str) else out
    except (TypeError, ValueError) as exc:
        raise BadInputError(
            f"Ansible could not read the inventory {inventory}: {_first_error(err or out)}",
            hint="check it with `ansible-inventory -i INVENTORY --list`",
        ) from exc
    if not isinstance(data, dict):
        raise BadInputError(f"Ansible could not read the inventory {inventory}")
    hostvars = data.get("_meta", {}).get("hostvars", {})
    groups: dict[str, set[str]] = {}

    def walk(group: str, seen: frozenset[str]) -> None:
        node = data.get(group, {})
        for host in node.get("hosts", []):
            groups.setdefault(host, set()).update(seen | {group})
        for child in node.get("children", []):
            walk(child, seen | {group})

    walk("all", frozenset())
    names = set(groups) | set(hostvars)
    return [
        InventoryHost(
            name,
            hostvars.get(name, {}).get("ansible_host"),
            tuple(sorted(g for g in groups.get(name, ()) if g not in ("all", "ungrouped"))),
        )
        for name in sorted(names)
    ]


def match_hosts(inventory: str | Path, pattern: str) -> list[str]:
    """The hosts an Ansible host pattern selects, as Ansible itself resolves it."""
    path = check_inventory_path(inventory)
    if pattern.startswith("-"):
        raise BadInputError(f"invalid host pattern {pattern!r}", hint="e.g. --limit 'web:&prod'")
    with tempfile.TemporaryDirectory(prefix="patchpilot-inv-") as tmp:
        out, err, rc = ansible_runner.run_command(
            executable_cmd="ansible",
            cmdline_args=[pattern, "-i", str(path), "--list-hosts"],
            quiet=True,
            private_data_dir=tmp,
            envvars=_env(),
            runner_mode="subprocess",
        )
    if rc != 0:
        raise BadInputError(
            f"Ansible could not use the inventory {inventory} with pattern {pattern!r}: "
            f"{_first_error(err or out)}",
            hint="check it with `ansible-inventory -i INVENTORY --list`",
        )
    # stdout is "  hosts (N):" followed by one indented host name per line.
    lines = (out or "").splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("hosts (")), None)
    return [] if start is None else [ln.strip() for ln in lines[start + 1 :] if ln.strip()]


def _first_error(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for ln in lines:
        if "ERROR" in ln or "Failed to parse" in ln or "Unable to parse" in ln:
            for prefix in ("[ERROR]:", "[WARNING]:", "ERROR!"):
                ln = ln.removeprefix(prefix).strip()
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


_KINDS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}


def host_event(event: dict[str, Any]) -> HostEvent | None:
    """The task result an ansible-runner event carries, if it carries one."""
    kind = _KINDS.get(event.get("event", ""))
    data = event.get("event_data", {})
    if not kind or not data.get("host"):
        return None
    return HostEvent(
        data["host"], kind, data.get("task", ""), data.get("task_action", ""), data.get("res") or {}
    )


PLAY_START = "play_start"  # a play, or the next `serial` batch of one, begins
FINISHED = "finished"  # the playbook process has ended


class PlaybookStream:
    """A playbook running in the background (one ansible-playbook process) whose task results
    arrive in order through `next()`, for a caller that acts between its `serial` batches."""

    def __init__(
        self,
        playbook: str,
        inventory: str | Path,
        *,
        limit: str | None,
        forks: int,
        extravars: dict[str, Any],
        check: bool,
    ):
        path = check_inventory_path(inventory)
        book = PLAYBOOKS / playbook
        if not book.is_file():
            raise PatchpilotError(f"playbook missing from this installation: {book}")
        self.dir = tempfile.mkdtemp(prefix="patchpilot-run-")
        self._queue: queue.Queue[tuple[str, HostEvent | None]] = queue.Queue()
        self._cancel = threading.Event()
        self.status = "running"
        self.rc: int | None = None

        def handle(event: dict[str, Any]) -> bool:
            if event.get("event") == "playbook_on_play_start":
                self._queue.put((PLAY_START, None))
            else:
                ev = host_event(event)
                if ev is not None:
                    self._queue.put((ev.kind, ev))
            return False  # no artifacts kept on disk per event

        def finished(runner: Any) -> None:
            self.status, self.rc = str(runner.status), int(runner.rc or 0)

        self._thread, self._runner = ansible_runner.run_async(
            private_data_dir=self.dir,
            playbook=str(book),
            inventory=str(path),
            limit=limit,
            forks=forks,
            extravars=extravars,
            cmdline="--check" if check else None,
            quiet=True,
            envvars=_env(),
            event_handler=handle,
            finished_callback=finished,
            cancel_callback=self._cancel.is_set,
            suppress_env_files=True,
        )

    def next(self, timeout: float | None = None) -> tuple[str, HostEvent | None]:
        """The next (kind, event): a task result, PLAY_START, or FINISHED once the process
        has ended and every event before that was read."""
        while True:
            try:
                return self._queue.get(timeout=0.2 if timeout is None else timeout)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return FINISHED, None
                if timeout is not None:
                    raise TimeoutError("no event from Ansible") from None

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self, *, wait: float = 30.0) -> None:
        """Wait for the process to end (up to `wait` seconds), cancel it if it does not,
        and remove its working directory."""
        self._thread.join(wait)
        if self._thread.is_alive():
            log.warning("Ansible did not end within %.0f s; cancelling it", wait)
            self._cancel.set()
            self._thread.join(30)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_playbook(
    playbook: str,
    inventory: str | Path,
    *,
    limit: str | None = None,
    forks: int = 10,
    extravars: dict[str, Any] | None = None,
    check: bool = False,
    on_event: Callable[[HostEvent], None] | None = None,
    keep_artifacts: bool = False,
) -> PlaybookResult:
    """Run playbooks/<playbook> and report each host's outcome; `on_event` sees every task
    result as it happens (for progress and per-host writes)."""
    path = check_inventory_path(inventory)
    book = PLAYBOOKS / playbook
    if not book.is_file():
        raise PatchpilotError(f"playbook missing from this installation: {book}")
    hosts: dict[str, HostOutcome] = {}

    def handle(event: dict[str, Any]) -> bool:
        ev = host_event(event)
        if ev is not None:
            kind = ev.kind
            outcome = hosts.setdefault(ev.host, HostOutcome(ev.host))
            if kind == "failed" and event.get("event_data", {}).get("ignore_errors"):
                kind = "ok"
            if kind in ("failed", "unreachable") and outcome.status == "ok":
                outcome.status, outcome.message = kind, ev.message
            outcome.changed |= bool(ev.result.get("changed"))
            if on_event is not None:
                on_event(ev)
        return keep_artifacts

    tmp = tempfile.mkdtemp(prefix="patchpilot-run-")
    cmdline = "--check" if check else None
    try:
        runner = ansible_runner.run(
            private_data_dir=tmp,
            playbook=str(book),
            inventory=str(path),
            limit=limit,
            forks=forks,
            extravars=extravars or {},
            cmdline=cmdline,
            quiet=True,
            envvars=_env(),
            event_handler=handle,
            suppress_env_files=True,
        )
    finally:
        if not keep_artifacts:
            shutil.rmtree(tmp, ignore_errors=True)
    status = runner.status if runner is not None else "failed"
    return PlaybookResult(status=str(status), rc=int(runner.rc or 0) if runner else 1, hosts=hosts)
