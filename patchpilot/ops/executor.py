"""The one boundary with Ansible: runs playbooks and inventory queries through ansible-runner
and returns typed results. No other module imports ansible_runner."""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import yaml

from patchpilot import resources
from patchpilot.errors import BadInputError
from patchpilot.ops import ansible_setup
from patchpilot.ops.workdir import work_dir

log = logging.getLogger(__name__)


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
        if not msg:
            return f"{self.kind} at task {self.task!r}"
        text = str(msg)
        return host_key_problem(text) or " ".join(text.split())[:500]


_OFFENDING = re.compile(r"Offending \S+ key in (\S+?):(\d+)")
_ADDRESS = re.compile(r'remote host "([^"]+)"')


def host_key_problem(text: str) -> str | None:
    """ssh's refusal of a host key, in words with the fix; None for any other failure."""
    changed = "REMOTE HOST IDENTIFICATION HAS CHANGED" in text
    if not changed and "Host key verification failed" not in text:
        return None
    m = _ADDRESS.search(text)
    address = m.group(1) if m else "ADDRESS"
    if changed:
        off = _OFFENDING.search(text)
        where = f" -f {off.group(1)}" if off else ""
        return (
            "refused: the SSH host key changed since this host was trusted (a reinstalled "
            "host, or someone in the middle); nothing ran on it. If the change is expected, "
            f"check the new key's fingerprint on the host's console, then `ssh-keygen -R "
            f"{address}{where}` and connect once to trust it"
        )
    return (
        "refused: the SSH host key is not known (host key checking is on); nothing ran on it. "
        f"Check its fingerprint on the host's console and add it (`ssh-keyscan {address}` >> "
        "known_hosts), or run with --accept-new-host-keys to trust keys of hosts seen for the "
        "first time"
    )


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


class _Unsafe(str):
    """A string Ansible must never render: written as YAML `!unsafe`."""


def _unsafe_tree(value: Any) -> Any:
    if isinstance(value, str):
        return _Unsafe(value)
    if isinstance(value, dict):
        return {k: _unsafe_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_unsafe_tree(v) for v in value]
    return value


class _VarsDumper(yaml.SafeDumper):
    pass


_VarsDumper.add_representer(
    _Unsafe, lambda dumper, data: dumper.represent_scalar("!unsafe", str(data))
)


def _private_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return path


def _cmdline(
    work: Path, extravars: dict[str, Any], hosts: Sequence[str] | None, check: bool
) -> tuple[str, list[ansible_setup.SecretPipe]]:
    """Extra vars and the host list go in owner-only files (`-e @FILE`, `--limit @FILE`),
    never on the command line: no size limit (a 10,000-host run), nothing in
    /proc/PID/cmdline, and every string tagged `!unsafe`, so no value (a version or a path
    a host once answered) is ever rendered as a template."""
    vars_file = _private_file(
        work / "extravars.yml",
        yaml.dump(_unsafe_tree(extravars), Dumper=_VarsDumper, sort_keys=True),
    )
    setup = ansible_setup.current()
    secret, pipes = ansible_setup.secret_args(setup, work, playbook=True)
    parts = [*setup.args, *secret, "-e", f"@{vars_file}"]
    if hosts is not None:
        limit = _private_file(work / "limit.txt", "".join(f"{h}\n" for h in hosts))
        parts += ["--limit", f"@{limit}"]
    if check:
        parts.append("--check")
    return " ".join(shlex.quote(p) for p in parts), pipes


def _close(pipes: Sequence[ansible_setup.SecretPipe]) -> None:
    for pipe in pipes:
        pipe.close()


def _forget_command(work: Path) -> Callable[[dict[str, Any], Any], None]:
    """ansible-runner writes the command and the whole environment to artifacts/*/command
    before it starts Ansible; it is removed as soon as Ansible runs."""

    def on_status(data: dict[str, Any], runner_config: Any = None) -> None:
        if data.get("status") in ("running", "successful", "failed", "error", "timeout"):
            for f in (work / "artifacts").glob("*/command"):
                f.unlink(missing_ok=True)

    return on_status


# Not "jsonfile": ansible-runner then leaves ANSIBLE_CACHE_PLUGIN alone, and the fact caching
# the user's ansible.cfg sets (or Ansible's in-memory default) stays in force.
_KEEP_FACT_CACHING = "as-configured"


def _user_dir() -> str | None:
    """Where Ansible runs: the user's own directory, as with `ansible-playbook`, so a relative
    path they gave (a vault file in ANSIBLE_VAULT_PASSWORD_FILE, a key file, `@hosts.txt`)
    means what it means to them. ansible-runner would otherwise run it from its own folder."""
    try:
        return os.getcwd()
    except OSError:  # the directory is gone: ansible-runner's own folder then
        return None


def _env() -> dict[str, str]:
    # The Ansible commands must be those installed beside this Python, activated venv or not;
    # ansible-runner looks them up on this process's own PATH.
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = f"{bindir}{os.pathsep}{path}"
    # The user's ansible.cfg wherever Ansible runs, and patchpilot's defaults only for what
    # the user left unset (ops.ansible_setup).
    env = {"PATH": os.environ["PATH"], **ansible_setup.current().env}
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    # A source Ansible cannot parse is an error, not a warning and a smaller fleet.
    env["ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED"] = "True"
    return env


def _forks(requested: int | None) -> int | None:
    """--forks as asked for, else as the user's Ansible setup says (None: Ansible's own)."""
    return requested if requested is not None else ansible_setup.current().forks


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
    # Straight from ansible-inventory into memory: its listing holds every host's variables,
    # passwords included, and none of it is written anywhere.
    out, err, _rc = _ansible_command("ansible-inventory", ["-i", str(path), "--list"])
    try:
        data = json.loads(out) if isinstance(out, str) else out
    except (TypeError, ValueError) as exc:
        raise BadInputError(
            f"Ansible could not read the inventory {inventory}: {_first_error(err or out)}",
            hint=_inventory_hint(err or out),
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


def match_hosts(inventory: str | Path, pattern: str, *, limit: str | None = None) -> list[str]:
    """The hosts an Ansible host pattern selects, narrowed by a --limit pattern, as Ansible
    itself resolves them (`ansible PATTERN --limit LIMIT --list-hosts`)."""
    path = check_inventory_path(inventory)
    for p in (pattern, limit):
        if p is not None and (not p.strip() or p.startswith("-")):
            raise BadInputError(f"invalid host pattern {p!r}", hint="e.g. --limit 'web:&prod'")
    narrowed = ["--limit", limit] if limit is not None else []
    out, err, rc = _ansible_command(
        "ansible",
        [pattern, "-i", str(path), *narrowed, "--list-hosts"],
    )
    if rc != 0 and "leaves us with no hosts" in (err or out or ""):
        return []  # the patterns are valid and select nobody: the caller says so in its words
    if rc != 0:
        shown = repr(pattern) + (f" and --limit {limit!r}" if limit is not None else "")
        raise BadInputError(
            f"Ansible could not use the inventory {inventory} with pattern {shown}: "
            f"{_first_error(err or out)}",
            hint=_inventory_hint(err or out),
        )
    # stdout is "  hosts (N):" followed by one indented host name per line.
    lines = (out or "").splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("hosts (")), None)
    return [] if start is None else [ln.strip() for ln in lines[start + 1 :] if ln.strip()]


def _ansible_command(executable: str, args: list[str]) -> tuple[str, str, int]:
    """An Ansible command-line tool beside this Python, its output kept in memory only."""
    env = {**os.environ, **_env()}
    tool = Path(sys.executable).parent / executable
    setup = ansible_setup.current()
    work = work_dir() if setup.access.vault_password is not None else None
    secret, pipes = ansible_setup.secret_args(setup, work, playbook=False) if work else ([], [])
    try:
        proc = subprocess.run(
            [str(tool) if tool.exists() else executable, *args, *setup.args, *secret],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", str(exc), 1
    finally:
        _close(pipes)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return proc.stdout, proc.stderr, proc.returncode


def _inventory_hint(text: str | None) -> str:
    if "vault" in (text or "").lower():
        return (
            "the inventory holds vaulted values: give --vault-password-file FILE, "
            "--vault-id or --ask-vault-pass"
        )
    return "check it with `ansible-inventory -i INVENTORY --list`"


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


def reported_forks(ev: HostEvent) -> int | None:
    """The forks a playbook's `patchpilot_forks` fact says Ansible runs with (Ansible's own
    `ansible_forks`), if this event sets it."""
    value = (ev.result.get("ansible_facts") or {}).get("patchpilot_forks")
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and 0 < value < 100_000 else None


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
        hosts: Sequence[str] | None,
        forks: int | None = None,
        extravars: dict[str, Any],
        check: bool,
    ):
        path = check_inventory_path(inventory)
        book = resources.playbook(playbook)
        work = work_dir()
        self.dir = str(work)
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

        cmdline, self._pipes = _cmdline(work, extravars, hosts, check)
        try:
            self._thread, self._runner = ansible_runner.run_async(
                private_data_dir=self.dir,
                playbook=str(book),
                project_dir=_user_dir(),
                fact_cache_type=_KEEP_FACT_CACHING,
                inventory=str(path),
                forks=_forks(forks),
                cmdline=cmdline,
                quiet=True,
                envvars=_env(),
                event_handler=handle,
                status_handler=_forget_command(work),
                finished_callback=finished,
                cancel_callback=self._cancel.is_set,
                suppress_env_files=True,
            )
        except BaseException:
            _close(self._pipes)
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

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
        _close(self._pipes)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_playbook(
    playbook: str,
    inventory: str | Path,
    *,
    hosts: Sequence[str] | None = None,
    forks: int | None = None,
    extravars: dict[str, Any] | None = None,
    check: bool = False,
    on_event: Callable[[HostEvent], None] | None = None,
) -> PlaybookResult:
    """Run playbooks/<playbook> and report each host's outcome; `on_event` sees every task
    result as it happens (for progress and per-host writes)."""
    path = check_inventory_path(inventory)
    book = resources.playbook(playbook)
    outcomes: dict[str, HostOutcome] = {}

    def handle(event: dict[str, Any]) -> bool:
        ev = host_event(event)
        if ev is not None:
            kind = ev.kind
            outcome = outcomes.setdefault(ev.host, HostOutcome(ev.host))
            if kind == "failed" and event.get("event_data", {}).get("ignore_errors"):
                kind = "ok"
            if kind in ("failed", "unreachable") and outcome.status == "ok":
                outcome.status, outcome.message = kind, ev.message
            outcome.changed |= bool(ev.result.get("changed"))
            if on_event is not None:
                on_event(ev)
        return False  # no event kept on disk

    work = work_dir()
    cmdline, pipes = _cmdline(work, extravars or {}, hosts, check)
    try:
        runner = ansible_runner.run(
            private_data_dir=str(work),
            playbook=str(book),
            project_dir=_user_dir(),
            fact_cache_type=_KEEP_FACT_CACHING,
            inventory=str(path),
            forks=_forks(forks),
            cmdline=cmdline,
            quiet=True,
            envvars=_env(),
            event_handler=handle,
            status_handler=_forget_command(work),
            suppress_env_files=True,
        )
    finally:
        _close(pipes)
        shutil.rmtree(work, ignore_errors=True)
    status = runner.status if runner is not None else "failed"
    return PlaybookResult(
        status=str(status), rc=int(runner.rc or 0) if runner else 1, hosts=outcomes
    )
