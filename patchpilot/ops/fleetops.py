"""What the engine does to hosts: patch (batch by batch), rollback and measure. `AnsibleOps`
runs them through the executor (ansible-runner) against real hosts; unit tests of the
engine's logic give it a fake with the same methods."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from patchpilot.durations import parse_duration
from patchpilot.errors import PatchpilotError
from patchpilot.ops import executor

if TYPE_CHECKING:  # the warm start imports this module before pydantic loads
    from patchpilot.health.checks import CheckSpec
    from patchpilot.health.types import Measurement

log = logging.getLogger(__name__)

ROLLBACK_ROOT = "/var/cache/patchpilot/rollback"  # on each host, one folder per run
LOCK_TIMEOUT = 120  # seconds to wait for the dpkg/apt locks


@dataclass(frozen=True)
class PatchRequest:
    """Everything the patch process of a run is started with: its batches (hosts in deploy
    order), the exact versions per host and the run's settings. Two equal requests start the
    same process, which is how the engine knows it can adopt one started before it."""

    batches: tuple[tuple[str, ...], ...]
    install: tuple[tuple[str, tuple[str, ...]], ...]  # (host, ("name=version", ...))
    rollback_dir: str
    reboot: str
    lock_timeout: int
    refuse_without_rollback: bool
    check: bool
    # (host, seconds): the stage's `timeout`, for the host's patch and again for its reboot.
    timeouts: tuple[tuple[str, int], ...] = ()
    # (host, ((package, version the plan was made from, "" if none), ...)): checked live by
    # the host's preflight.
    expect: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    # One-line apt sources of archives that keep old versions (the plan's
    # rollback.version_sources), read where a previous version is nowhere else.
    version_sources: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        hosts: Sequence[tuple[tuple[int, int], str, Mapping[str, str]]],
        *,
        run_id: str,
        reboot: str,
        lock_timeout: int,
        on_impossible: str,
        check: bool,
        stage_timeouts: Sequence[int] = (),
        expect: Mapping[str, Mapping[str, str]] | None = None,
        version_sources: Sequence[str] = (),
    ) -> PatchRequest:
        """From ((stage, batch), host, {package: version}) in deploy order, each stage's
        timeout in seconds by stage index (none given: no timeout), and per host the versions
        the plan was made from (`expect`; none given: not checked)."""
        batches: dict[tuple[int, int], list[str]] = {}
        install: list[tuple[str, tuple[str, ...]]] = []
        timeouts: list[tuple[str, int]] = []
        for key, host, targets in hosts:
            batches.setdefault(key, []).append(host)
            install.append((host, tuple(f"{p}={v}" for p, v in targets.items())))
            if key[0] < len(stage_timeouts):
                timeouts.append((host, stage_timeouts[key[0]]))
        return cls(
            batches=tuple(tuple(batches[k]) for k in sorted(batches)),
            install=tuple(install),
            rollback_dir=run_rollback_dir(run_id),
            reboot=reboot,
            lock_timeout=lock_timeout,
            refuse_without_rollback=on_impossible == "refuse",
            check=check,
            timeouts=tuple(timeouts),
            expect=tuple(
                (host, tuple(sorted(expect[host].items())))
                for _key, host, _targets in hosts
                if expect and host in expect
            ),
            version_sources=tuple(version_sources),
        )


def plan_request(
    data: Mapping[str, Any],
    *,
    run_id: str,
    check: bool,
    lock_timeout: int = LOCK_TIMEOUT,
    hosts: Collection[str] | None = None,
) -> PatchRequest:
    """The one way a patch request is made: from a frozen plan as stored (its JSON form,
    so the warm start needs nothing but the standard library to make it), for `hosts` (by
    default every planned host) in deploy order."""
    expansion = data["expansion"]
    stage_index = {s["name"]: i for i, s in enumerate(expansion["stages"])}
    return PatchRequest.build(
        [
            (
                (stage_index[h["stage"]], int(h["batch"])),
                h["name"],
                {u["package"]: u["to"] for u in h["updates"]},
            )
            for h in expansion["hosts"]
            if hosts is None or h["name"] in hosts
        ],
        run_id=run_id,
        reboot=str(expansion.get("reboot", "if_needed")),
        lock_timeout=lock_timeout,
        on_impossible=on_impossible(data["spec"]),
        check=check,
        stage_timeouts=stage_timeouts(expansion["stages"]),
        expect={
            h["name"]: {u["package"]: str(u.get("from") or "") for u in h["updates"]}
            for h in expansion["hosts"]
        },
        version_sources=tuple(
            str(x) for x in (data["spec"].get("rollback") or {}).get("version_sources") or ()
        ),
    )


def run_rollback_dir(run_id: str) -> str:
    """Where patchpilot_patch keeps a run's snapshot and .debs on each host."""
    return f"{ROLLBACK_ROOT}/{run_id}"


def on_impossible(spec: Mapping[str, Any]) -> str:
    """A plan's `rollback.on_impossible` (refuse, proceed), from its spec as stored."""
    return str((spec.get("rollback") or {}).get("on_impossible", "refuse"))


def deb_filename(name: str, version: str, arch: str) -> str:
    """apt's archive file name, as patchpilot_patch keeps it: the epoch's ':' is written %3a."""
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


def stage_timeouts(stages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Each stage's `timeout` in seconds, from a frozen plan's expansion."""
    return [parse_duration(s["settings"]["timeout"]) for s in stages]


@dataclass
class HostResult:
    """One host's answer to an operation."""

    status: str  # ok, failed, unreachable, timeout (patch: ended at the stage's timeout)
    message: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # installed after the operation
    # patch: where it stopped (preflight: nothing was changed; install; done)
    phase: str | None = None
    snapshot: dict[str, str] = field(default_factory=dict)  # patch: installed before
    artifacts: dict[str, str | None] = field(default_factory=dict)  # patch: kept .debs
    # patch: where each kept .deb came from (ARTIFACT_SOURCES), its sha256, a note on it
    sources: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    rollback_missing: list[str] = field(default_factory=list)
    # patch: why each package in rollback_missing cannot be kept
    reasons: dict[str, str] = field(default_factory=dict)
    # patch: what `dpkg --verify` found changed in each package before the patch
    modified_before: dict[str, list[str]] = field(default_factory=dict)
    # rollback: what `dpkg --verify` finds changed in the restored packages afterwards,
    # and what `dpkg --audit` says (empty: all is well)
    verify: list[str] = field(default_factory=list)
    audit: str = ""
    held: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)  # patch: name=version installed now
    rebooted: bool = False
    boot_id: str | None = None


class PatchRun(Protocol):
    """The patch of a run, batch by batch: each `batch()` releases the next planned batch
    (exactly its hosts, in order) and returns once every host in it has answered."""

    request: PatchRequest
    # What Ansible itself said it runs with (forks), once the first batch started; recorded
    # in the run's audit log.
    ansible_settings: dict[str, Any]

    def next_hosts(self) -> list[str] | None: ...

    def batch(self, hosts: Sequence[str]) -> dict[str, HostResult]: ...

    def close(self) -> None: ...


class FleetOps(Protocol):
    def open_patch(self, request: PatchRequest) -> PatchRun: ...

    def rollback(
        self,
        restore: Mapping[str, Sequence[str]],
        *,
        restart_units: Sequence[str],
        lock_timeout: int,
        checksums: Mapping[str, Mapping[str, str]] | None = None,
    ) -> dict[str, HostResult]: ...

    def measure(
        self, specs: Sequence[CheckSpec], hosts: Sequence[str], *, since: float | None
    ) -> dict[str, list[Measurement]]: ...


def parse_versions(stdout: str) -> dict[str, str]:
    """dpkg-query 'name version status' lines -> installed versions; a line whose name or
    version is not one (a host's answer is data, never trusted) is left out."""
    out: dict[str, str] = {}
    for line in stdout.splitlines()[:MAX_ITEMS]:
        parts = line.split()
        if len(parts) >= 3 and parts[2].startswith("i"):
            try:
                out[_package(parts[0])] = _version(parts[1])
            except AnswerRejected:
                continue
    return out


def parse_verify(stdout: str) -> list[str]:
    """`dpkg --verify` lines ("??5?????? c /etc/x", "missing   /usr/y") as "FLAGS PATH",
    bounded; a line that is not one is left out."""
    out = []
    for line in stdout.splitlines()[:1000]:
        m = _VERIFY_RE.match(line)
        if m:
            out.append(f"{m.group(1)} {m.group(2)}")
    return out


_VERIFY_RE = re.compile(r"^([?.0-9A-Za-z]{9}|missing)\s+(?:c\s+)?(/[^\x00-\x1f]{0,400})$")


# --- what hosts answer: data, validated where it enters ---------------------------------------

MAX_ITEMS = 10_000  # packages one answer may name
_BOOT_ID_RE = re.compile(r"[0-9a-f-]{1,64}")
_ARCH_RE = re.compile(r"[A-Za-z0-9_]{1,32}")


class AnswerRejected(ValueError):
    """A host answered something that is not what patchpilot_patch returns."""


def _package(name: object) -> str:
    from patchpilot.patches import validate_package_name

    base, _, arch = str(name).partition(":")
    try:
        validate_package_name(base)
    except PatchpilotError:
        raise AnswerRejected(f"not a package name: {str(name)[:80]!r}") from None
    if not isinstance(name, str) or (arch and not _ARCH_RE.fullmatch(arch)):
        raise AnswerRejected(f"not a package name: {str(name)[:80]!r}")
    return name


def _version(version: object) -> str:
    from patchpilot.patches import validate_version

    try:
        if not isinstance(version, str):
            raise AnswerRejected(f"not a version: {str(version)[:80]!r}")
        return validate_version(version)
    except PatchpilotError:
        raise AnswerRejected(f"not a version: {str(version)[:80]!r}") from None


def _versions(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise AnswerRejected(f"{what} is not a list of package versions")
    return {_package(k): _version(v) for k, v in value.items()}


def _names(value: object, what: str, *, with_version: bool = False) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise AnswerRejected(f"{what} is not a list of packages")
    out = []
    for item in value:
        name, eq, version = str(item).partition("=")
        if with_version != bool(eq):
            raise AnswerRejected(f"{what}: {str(item)[:80]!r}")
        _package(name)
        if eq:
            _version(version)
        out.append(str(item))
    return out


# Where a rollback artifact came from: apt's cache, a repository of the host, a configured
# version source, a rebuild from the installed package (by dpkg-repack or patchpilot's own),
# or the run's folder already (kept by an earlier pass of the same run).
ARTIFACT_SOURCES = frozenset(("cache", "repository", "archive", "dpkg-repack", "rebuilt", "kept"))
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_TEXT = 500


def _text(value: object) -> str:
    """A host's free text: a bounded single line, control characters dropped."""
    return "".join(ch for ch in str(value) if ch.isprintable())[:MAX_TEXT]


def _per_package(value: object, what: str, check: Callable[[object], Any]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise AnswerRejected(f"{what} is not a list of packages")
    return {_package(k): check(v) for k, v in value.items()}


def _source(value: object) -> str:
    if value is None:  # check mode: nowhere (its reason says why)
        return ""
    if value not in ARTIFACT_SOURCES:
        raise AnswerRejected(f"unknown artifact source {str(value)[:40]!r}")
    return str(value)


def _sha256(value: object) -> str:
    if not (isinstance(value, str) and _SHA256_RE.fullmatch(value)):
        raise AnswerRejected(f"not a sha256: {str(value)[:80]!r}")
    return value


def _lines(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > 1000:
        raise AnswerRejected("not a list of lines")
    return [_text(x) for x in value]


def _kept(value: object, snapshot: Mapping[str, str], rollback_dir: str) -> dict[str, str | None]:
    """The .debs the host kept, each only if it is exactly the file the controller would
    name (the run's rollback folder, apt's file name for the snapshot version): a path is
    never taken from a host, only recognised."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise AnswerRejected("artifacts is not a list of kept packages")
    out: dict[str, str | None] = {}
    for name, path in value.items():
        pkg = _package(name)
        if path is None or not str(path).startswith(rollback_dir + "/"):
            out[pkg] = None  # not kept in the run's folder (check mode names apt's cache)
            continue
        version = snapshot.get(pkg)
        arch = str(path).rsplit("_", 1)[-1].removesuffix(".deb")
        if version is None or not _ARCH_RE.fullmatch(arch):
            raise AnswerRejected(f"artifact of {pkg}: {str(path)[:120]!r}")
        expected = f"{rollback_dir}/{deb_filename(pkg, version, arch)}"
        if path != expected:
            raise AnswerRejected(f"artifact of {pkg}: {str(path)[:120]!r}")
        out[pkg] = expected
    return out


def _patch_answer(ev: executor.HostEvent, rollback_dir: str) -> HostResult:
    """patchpilot_patch's answer as a HostResult, every field checked."""
    r = ev.result
    phase = r.get("phase") or ("done" if ev.kind == "ok" else "preflight")
    if phase not in ("preflight", "install", "done"):
        raise AnswerRejected(f"unknown phase {str(phase)[:40]!r}")
    snapshot = _versions(r.get("snapshot"), "snapshot")
    boot_id = r.get("boot_id")
    if boot_id is not None and not (isinstance(boot_id, str) and _BOOT_ID_RE.fullmatch(boot_id)):
        raise AnswerRejected("boot_id is not a boot id")
    return HostResult(
        "ok" if ev.kind == "ok" else "failed",
        None if ev.kind == "ok" else ev.message,
        versions=_versions(r.get("versions"), "versions"),
        phase=phase,
        snapshot=snapshot,
        artifacts=_kept(r.get("artifacts"), snapshot, rollback_dir),
        sources={k: v for k, v in _per_package(r.get("sources"), "sources", _source).items() if v},
        sha256=_per_package(r.get("sha256"), "sha256", _sha256),
        notes=_per_package(r.get("rollback_notes"), "rollback_notes", _text),
        rollback_missing=_names(r.get("rollback_missing"), "rollback_missing", with_version=True),
        reasons=_per_package(r.get("rollback_reasons"), "rollback_reasons", _text),
        modified_before=_per_package(r.get("modified_before"), "modified_before", _lines),
        held=_names(r.get("held"), "held"),
        installed=_names(r.get("installed"), "installed", with_version=True),
        boot_id=boot_id,
    )


class AnsibleOps:
    """The real operations: playbooks/*.yml through ansible-runner."""

    def __init__(self, inventory: str | Path, *, forks: int | None = None):
        self.inventory = inventory
        self.forks = forks

    def open_patch(self, request: PatchRequest) -> AnsiblePatchRun:
        return AnsiblePatchRun(self.inventory, request, forks=self.forks)

    def rollback(
        self,
        restore: Mapping[str, Sequence[str]],
        *,
        restart_units: Sequence[str],
        lock_timeout: int,
        checksums: Mapping[str, Mapping[str, str]] | None = None,
    ) -> dict[str, HostResult]:
        hosts = list(restore)
        events: dict[str, list[executor.HostEvent]] = {h: [] for h in hosts}

        def on_event(ev: executor.HostEvent) -> None:
            events.setdefault(ev.host, []).append(ev)

        result = executor.run_playbook(
            "rollback.yml",
            self.inventory,
            hosts=hosts,
            forks=self.forks,
            extravars={
                "patchpilot_restore": {h: list(p) for h, p in restore.items()},
                "patchpilot_restart_units": list(restart_units),
                "patchpilot_lock_timeout": lock_timeout,
                "patchpilot_checksums": {h: dict(c) for h, c in (checksums or {}).items()},
            },
            on_event=on_event,
        )
        out: dict[str, HostResult] = {}
        for h in hosts:
            o = result.hosts.get(h)
            out[h] = (
                HostResult("unreachable", "no answer from Ansible")
                if o is None
                else HostResult(o.status, o.message)
            )
            for ev in events.get(h, []):
                if ev.kind != "ok":
                    continue
                if ev.task == "Installed versions afterwards":
                    out[h].versions = parse_versions(str(ev.result.get("stdout", "")))
                elif ev.task == "Verify the restored packages' files":
                    out[h].verify = parse_verify(str(ev.result.get("stdout", "")))
                elif ev.task == "Audit dpkg's database":
                    out[h].audit = _text(" ".join(str(ev.result.get("stdout", "")).split()))
        return out

    def prune(self, runs: Mapping[str, Sequence[str]]) -> dict[str, HostResult]:
        """Remove the named runs' rollback folders on each host ({host: [run id, ...]})."""
        hosts = list(runs)
        result = executor.run_playbook(
            "prune.yml",
            self.inventory,
            hosts=hosts,
            forks=self.forks,
            extravars={"patchpilot_prune": {h: list(r) for h, r in runs.items()}},
        )
        out: dict[str, HostResult] = {}
        for h in hosts:
            o = result.hosts.get(h)
            out[h] = (
                HostResult("unreachable", "no answer from Ansible")
                if o is None
                else HostResult(o.status, o.message)
            )
        return out

    def measure(
        self, specs: Sequence[CheckSpec], hosts: Sequence[str], *, since: float | None
    ) -> dict[str, list[Measurement]]:
        from patchpilot.health.checks import collect

        if not specs or not hosts:
            return {h: [] for h in hosts}
        return collect(specs, hosts, inventory=self.inventory, since=since, forks=self.forks)


def gate_key(batch: Sequence[str]) -> str:
    """The name playbooks/patch.yml waits on before a batch: sha1 of its first host."""
    return hashlib.sha1(batch[0].encode()).hexdigest()


class AnsiblePatchRun:
    """playbooks/patch.yml as one ansible-playbook process for all the batches (`serial`),
    each batch held at a gate until `batch()` releases it: the engine judges every batch
    before the next one starts, without paying for a new Ansible process per batch."""

    def __init__(self, inventory: str | Path, request: PatchRequest, *, forks: int | None):
        self.request = request
        self.batches = [list(b) for b in request.batches if b]
        self._released = 0
        self._starts = 0  # batch starts Ansible has reported
        self._ended = False
        self.ansible_settings: dict[str, Any] = {}
        hosts = [h for b in self.batches for h in b]
        self._gates = Path(tempfile.mkdtemp(prefix="patchpilot-gate-"))
        self._stream = executor.PlaybookStream(
            "patch.yml",
            inventory,
            hosts=hosts,
            forks=forks,
            extravars={
                "patchpilot_hosts": hosts,
                "patchpilot_serial": [len(b) for b in self.batches],
                "patchpilot_install": {h: list(items) for h, items in request.install},
                "patchpilot_rollback_dir": request.rollback_dir,
                "patchpilot_reboot": request.reboot,
                "patchpilot_lock_timeout": request.lock_timeout,
                "patchpilot_timeouts": dict(request.timeouts),
                "patchpilot_expect": {h: dict(items) for h, items in request.expect},
                "patchpilot_version_sources": list(request.version_sources),
                "patchpilot_on_impossible": "refuse"
                if request.refuse_without_rollback
                else "proceed",
                "patchpilot_gate": {"dir": str(self._gates), "pid": os.getpid()},
            },
            check=request.check,
        )

    def next_hosts(self) -> list[str] | None:
        if self._ended or self._released >= len(self.batches):
            return None
        return self.batches[self._released]

    def _decide(self, batch: Sequence[str], decision: str) -> None:
        path = self._gates / gate_key(batch)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(decision)
        tmp.rename(path)

    def batch(self, hosts: Sequence[str]) -> dict[str, HostResult]:
        expected = self.next_hosts()
        if expected is None or list(hosts) != expected:
            raise RuntimeError(f"batch {list(hosts)} is not the next one planned ({expected})")
        index = self._released
        self._released += 1
        self._decide(expected, "go")
        out: dict[str, HostResult] = {}
        while not self._ended:
            kind, ev = self._stream.next()
            if kind == executor.FINISHED:
                self._ended = True
            elif kind == executor.PLAY_START:
                self._starts += 1
                if self._starts >= index + 2:
                    break  # the next batch has begun (it waits at its gate): this one is done
            elif ev is not None and ev.action.endswith("set_fact"):
                forks = executor.reported_forks(ev)
                if forks is not None:
                    self.ansible_settings = {"forks": forks}
            elif ev is not None and ev.host in expected:
                _apply_event(out, ev, self.request.rollback_dir)
        for h in expected:
            out.setdefault(h, HostResult("unreachable", "no answer from Ansible"))
        return out

    def close(self) -> None:
        """No more batches: the playbook ends at its next gate."""
        if not self._ended:
            for batch in self.batches[self._released :]:
                self._decide(batch, "stop")
        self._ended = True
        self._stream.close()
        shutil.rmtree(self._gates, ignore_errors=True)


def _apply_event(out: dict[str, HostResult], ev: executor.HostEvent, rollback_dir: str) -> None:
    """Fold one task result of playbooks/patch.yml into its host's result."""
    if ev.action.endswith("patchpilot_patch"):
        if ev.kind == "unreachable":
            out[ev.host] = HostResult("unreachable", ev.message)
        elif ev.kind == "failed" and ev.result.get("timedout"):
            # Ansible ended the task at the stage's timeout: nothing was read back.
            period = (ev.result.get("timedout") or {}).get("period")
            out[ev.host] = HostResult(
                "timeout", f"the patch did not finish within the stage's timeout ({period} s)"
            )
        elif ev.kind in ("ok", "failed"):
            try:
                out[ev.host] = _patch_answer(ev, rollback_dir)
            except AnswerRejected as exc:
                # Nothing it said is kept: it is failed, its state unknown, as if silent.
                out[ev.host] = HostResult("failed", f"answer rejected: {exc}", phase="install")
    elif ev.action.endswith("reboot") and ev.host in out:
        result = out[ev.host]
        if ev.kind == "ok":
            result.rebooted = bool(ev.result.get("rebooted"))
        elif ev.kind in ("failed", "unreachable"):
            result.status = "failed" if ev.kind == "failed" else "unreachable"
            result.message = f"reboot: {ev.message}"
