"""Hosts are untrusted: what patchpilot_patch answers is validated where it enters, and
nothing a host said reaches a template, a path or the command line on the controller."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from patchpilot.ops import executor, workdir
from patchpilot.ops.executor import HostEvent
from patchpilot.ops.fleetops import _apply_event, parse_versions

RUN_DIR = "/var/cache/patchpilot/rollback/r-1"
JINJA = "{{ lookup('pipe', 'touch MARKER') }}"


def answer(**result: Any) -> HostEvent:
    base: dict[str, Any] = {
        "phase": "done",
        "versions": {"demoweb": "1.1-1"},
        "snapshot": {"demoweb": "1.0-1", "libfoo:amd64": "1:2.0-1"},
        "artifacts": {
            "demoweb": f"{RUN_DIR}/demoweb_1.0-1_all.deb",
            "libfoo:amd64": f"{RUN_DIR}/libfoo:amd64_1%3a2.0-1_amd64.deb",
        },
        "installed": ["demoweb=1.1-1"],
        "boot_id": "0c5bd4b2-6a1e-4c1b-9d63-2f6f1f0e8a11",
    }
    base.update(result)
    return HostEvent("web01", "ok", "Patch", "patchpilot_patch", base)


def folded(ev: HostEvent) -> Any:
    out: dict[str, Any] = {}
    _apply_event(out, ev, RUN_DIR)
    return out["web01"]


def test_a_real_answer_is_kept() -> None:
    x = folded(answer())
    assert x.status == "ok" and x.snapshot["demoweb"] == "1.0-1"
    assert x.artifacts["demoweb"] == f"{RUN_DIR}/demoweb_1.0-1_all.deb"


@pytest.mark.parametrize(
    "hostile",
    [
        {"snapshot": {"demoweb": JINJA}},
        {"versions": {"demoweb": "1.1-1 && id"}},
        {"snapshot": {"demo{{x}}": "1.0-1"}},
        {"artifacts": {"demoweb": f"{RUN_DIR}/../../../../tmp/evil_1.0-1_all.deb"}},
        {"artifacts": {"demoweb": f"{RUN_DIR}/x/../../../../tmp/evil.deb"}},
        {"artifacts": {"demoweb": f"{RUN_DIR}/demoweb_1.0-1_{JINJA}.deb"}},
        {"held": [JINJA]},
        {"installed": ["demoweb=1.1-1; rm -rf /"]},
        {"rollback_missing": ["demoweb"]},
        {"boot_id": JINJA},
        {"phase": JINJA},
        {"snapshot": ["not", "a", "mapping"]},
    ],
)
def test_a_hostile_answer_is_rejected_whole(hostile: dict[str, Any]) -> None:
    x = folded(answer(**hostile))
    assert x.status == "failed" and x.message.startswith("answer rejected: ")
    assert x.snapshot == {} and x.artifacts == {} and x.versions == {}


def test_versions_read_back_keep_only_real_ones() -> None:
    out = parse_versions(
        "demoweb 1.0-1 ii\n{{evil}} 1.0 ii\nlibfoo {{lookup('pipe','id')}} ii\nbar 2.0 rc\n"
    )
    assert out == {"demoweb": "1.0-1"}


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs a Debian controller")
def test_a_template_in_rollback_vars_is_never_rendered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Jinja expression that reached rollback.yml's extra vars (as a host's snapshot
    version once did) is data: a real rollback.yml run, in check mode, on this machine."""
    monkeypatch.setattr(workdir, "_STATE_DIR", tmp_path / "state")
    marker = tmp_path / "MARKER"
    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {os.sys.executable}\n"  # type: ignore[attr-defined]
    )
    item = f"{RUN_DIR}/demoweb_1.0-1_all.deb|demoweb={JINJA.replace('MARKER', str(marker))}"
    result = executor.run_playbook(
        "rollback.yml",
        inventory,
        hosts=["localhost"],
        check=True,
        extravars={
            "patchpilot_restore": {"localhost": [item]},
            "patchpilot_restart_units": [],
            "patchpilot_lock_timeout": 5,
        },
    )
    assert result.hosts["localhost"].status == "ok", result
    assert not marker.exists(), "a host-provided string was rendered as a template"
    # Its working folder is owner-only and gone once Ansible ended.
    root = tmp_path / "state"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert list((root / "ansible").iterdir()) == []


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs a Debian controller")
def test_playbooks_run_from_the_users_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path the user gave Ansible (here the vault password file in the
    environment) is found as `ansible-playbook` would find it: from their directory."""
    monkeypatch.setattr(workdir, "_STATE_DIR", tmp_path / "state")
    home = tmp_path / "ops"
    home.mkdir()
    (home / "vp.txt").write_text("s3cret\n")
    (home / "inv.yml").write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {os.sys.executable}\n"  # type: ignore[attr-defined]
    )
    monkeypatch.chdir(home)
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", "vp.txt")
    result = executor.run_playbook(
        "rollback.yml",
        "inv.yml",
        hosts=["localhost"],
        check=True,
        extravars={
            "patchpilot_restore": {"localhost": []},
            "patchpilot_restart_units": [],
            "patchpilot_lock_timeout": 5,
        },
    )
    assert result.rc == 0 and result.hosts["localhost"].status == "ok", result


def test_extra_vars_and_hosts_go_in_owner_only_files(tmp_path: Path) -> None:
    hosts = [f"host{i:05d}.example.org" for i in range(10_000)]
    line, pipes = executor._cmdline(
        tmp_path, {"patchpilot_install": {h: ["demoweb=1.1-1"] for h in hosts}}, hosts, True
    )
    assert pipes == []  # no password was asked for, so none is served
    assert len(line) < 500 and "host00001" not in line and line.endswith("--check")
    vars_file, limit = tmp_path / "extravars.yml", tmp_path / "limit.txt"
    for f in (vars_file, limit):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert limit.read_text().splitlines() == hosts
    assert "- !unsafe 'demoweb=1.1-1'" in vars_file.read_text()


def test_working_folders_of_dead_processes_are_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workdir, "_STATE_DIR", tmp_path)
    stale = tmp_path / "ansible" / "run-999999999-abcd"
    (stale / "artifacts").mkdir(parents=True)
    (stale / "artifacts" / "command").write_text('{"env": {"SECRET": "x"}}')
    mine = workdir.work_dir()
    assert not stale.exists()
    assert mine.is_dir() and stat.S_IMODE(mine.stat().st_mode) == 0o700
    assert workdir.sweep_stale_work_dirs() == []  # its own folder is kept
