"""patchpilot pointed at a fleet the way a sysadmin runs it: from a working directory with its
own ansible.cfg, connecting as a normal user who becomes root with sudo, the sudo password in
a vaulted variable file, the vault password in a file; and host keys that are checked, so a
host whose key changed is refused before anything runs on it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import BIN, LabFleet, files_holding, pp, secret_search_roots

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
LAB_DIR = Path(os.environ.get("PATCHPILOT_LAB_DIR", "/var/lib/patchpilot/lab"))
USER = "pilot"  # the lab's non-root user (lab.image.LAB_USER)
HOSTS = ["web01", "web02"]


@dataclass
class Ops:
    """A sysadmin's working directory and what patchpilot did from it."""

    dir: Path
    inventory: Path
    vault_pass_file: Path
    become_password: str
    vault_password: str
    db: Path
    state: Path
    logs: dict[str, str] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)
    sockets: dict[str, list[str]] = field(default_factory=dict)
    logins: dict[str, dict[str, int]] = field(default_factory=dict)
    run_id: str = ""
    run: dict[str, Any] = field(default_factory=dict)

    def pp(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """patchpilot run from the working directory, its output kept as the run's log."""
        proc = subprocess.run(
            [sys.executable, "-m", "patchpilot", "--db", str(self.db), *args],
            cwd=self.dir,
            env={**os.environ, "PATCHPILOT_STATE_DIR": str(self.state)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        self.logs[name] = proc.stdout + proc.stderr
        self.codes[name] = proc.returncode
        (self.dir / "logs").mkdir(exist_ok=True)
        (self.dir / "logs" / f"{name}.log").write_text(self.logs[name])
        return proc


def _logins(lab: LabFleet, hosts: list[str]) -> dict[str, int]:
    """How many SSH logins as the lab's non-root user each host has seen."""
    count = (
        f"journalctl --no-pager -o cat _COMM=sshd | grep -c 'Accepted publickey for {USER} '"
        " || true"
    )
    return {h: int(lab.ssh(h, count).stdout.strip() or 0) for h in hosts}


def _sockets(folder: Path) -> list[str]:
    """The SSH control sockets in `folder`, which are then removed: the next command's
    connections must make their own."""
    names = sorted(p.name for p in folder.iterdir())
    for p in folder.iterdir():
        p.unlink()
    return names


def _versions(lab: LabFleet, hosts: list[str]) -> dict[str, str]:
    return {h: lab.ssh(h, "dpkg-query -W -f '${Version}' demoweb").stdout.strip() for h in hosts}


@pytest.fixture(scope="module")
def demo(lab: LabFleet) -> Iterator[None]:
    pp("lab", "demo", "--install", "1.0-1", "--offer", "1.1-1")
    yield
    # Leave the fleet as the other e2e modules expect it: no demoweb, every version offered.
    for h in lab.hosts:
        lab.ssh(h, "dpkg --purge demoweb >/dev/null", check=False)
    pp("lab", "demo")


@pytest.fixture(scope="module")
def ops(lab: LabFleet, demo: None, tmp_path_factory: pytest.TempPathFactory) -> Ops:
    """gather, apply (the shipped lab-demo plan, by name) and rollback as the lab's non-root
    user, from a directory whose ansible.cfg sets forks, remote_user and ssh_args."""
    work = tmp_path_factory.mktemp("ops")
    inv_dir = work / "inventory"
    (inv_dir / "group_vars" / "all").mkdir(parents=True)
    data = yaml.safe_load(lab.inventory.read_text())
    del data["all"]["vars"]["ansible_user"]  # ansible.cfg's remote_user decides
    inventory = inv_dir / "hosts.yml"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    become_password = (LAB_DIR / "ssh" / f"{USER}.password").read_text().strip()
    vault_password = secrets.token_urlsafe(16)
    vault_pass_file = work / "vault-pass"
    vault_pass_file.write_text(vault_password + "\n")
    vault_pass_file.chmod(0o600)
    vaulted = inv_dir / "group_vars" / "all" / "become.yml"
    vaulted.write_text(
        f"ansible_become: true\nansible_become_password: {json.dumps(become_password)}\n"
    )
    subprocess.run(
        [
            str(BIN / "ansible-vault"),
            "encrypt",
            "--vault-password-file",
            str(vault_pass_file),
            str(vaulted),
        ],
        check=True,
        capture_output=True,
    )
    assert become_password not in vaulted.read_text()
    lab.secrets += [become_password, vault_password]  # checked again after the whole suite
    lab.secret_files.append(vault_pass_file)
    (work / "cp").mkdir()
    (work / "ansible.cfg").write_text(
        "[defaults]\n"
        "forks = 2\n"
        f"remote_user = {USER}\n"
        "\n[ssh_connection]\n"
        "ssh_args = -o ControlMaster=auto -o ControlPersist=120s "
        f"-o ControlPath={work}/cp/%h\n"
    )
    o = Ops(
        work,
        inventory,
        vault_pass_file,
        become_password,
        vault_password,
        work / "pp.db",
        work / "state",
    )
    access = ["-i", str(inventory), "--vault-password-file", str(vault_pass_file)]
    limit = ["--limit", ":".join(HOSTS)]
    o.logins["before"] = _logins(lab, HOSTS)
    o.pp("gather", "inventory", "gather", *access, *limit, "--no-refresh")
    o.sockets["gather"] = _sockets(work / "cp")
    o.logins["gather"] = _logins(lab, HOSTS)
    o.pp("apply", "apply", "lab-demo", *access, *limit, "--yes")
    o.sockets["apply"] = _sockets(work / "cp")
    o.logins["apply"] = _logins(lab, HOSTS)
    o.versions["applied"] = _versions(lab, HOSTS)
    o.run_id = json.loads(o.pp("runs", "runs", "list", "--json").stdout)[0]["id"]
    o.pp("rollback", "rollback", o.run_id, *access)
    o.versions["rolled back"] = _versions(lab, HOSTS)
    o.run = json.loads(o.pp("show", "runs", "show", o.run_id, "--json").stdout)
    return o


def test_a_non_root_user_becomes_root_with_a_vaulted_password(lab: LabFleet, ops: Ops) -> None:
    assert ops.codes["gather"] == 0, ops.logs["gather"]
    assert "2 of 2 hosts gathered" in ops.logs["gather"]
    assert ops.codes["apply"] == 0, ops.logs["apply"]
    assert ops.versions["applied"] == {h: "1.1-1" for h in HOSTS}
    assert ops.codes["rollback"] == 0, ops.logs["rollback"]
    assert "rolled back 2 of 2 hosts" in ops.logs["rollback"]
    assert ops.versions["rolled back"] == {h: "1.0-1" for h in HOSTS}
    # The hosts saw the user log in and sudo to root (apt needs root: nothing else could
    # have installed and rolled back).
    for h in HOSTS:
        journal = lab.ssh(h, "journalctl --no-pager -o cat _COMM=sshd _COMM=sudo").stdout
        assert f"Accepted publickey for {USER}" in journal
        assert f"{USER} : " in journal and "USER=root" in journal


def test_the_working_directorys_ansible_cfg_is_in_force(lab: LabFleet, ops: Ops) -> None:
    cfg = ops.dir / "ansible.cfg"
    # forks: what Ansible itself said it ran with, for gather and for apply
    assert f"(forks 2, ansible.cfg {cfg})" in ops.logs["gather"]
    run = ops.run
    (settings,) = [a["detail"] for a in run["audit"] if a["action"] == "ansible settings"]
    assert settings == {"config": str(cfg), "forks": 2}
    # ssh_args: gather's and then apply's connections made their sockets where the config's
    # ControlPath puts them (gather's were removed before apply)
    addresses = sorted(lab.hosts[h] for h in HOSTS)
    assert ops.sockets == {"gather": addresses, "apply": addresses}
    # remote_user (the inventory names no user): gather and apply each logged in as it
    for h in HOSTS:
        assert ops.logins["before"][h] < ops.logins["gather"][h] < ops.logins["apply"][h], h
    assert run["limit"] == "web01:web02"


def test_no_secret_is_left_in_the_store_the_logs_or_the_working_folders(
    ops: Ops, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Neither the become (sudo) password nor the vault password is in any row of the
    store, any log, or any file patchpilot or Ansible left in the state and artifact
    folders; the only files holding them are the user's own (the vault password file)."""
    secrets_ = [ops.become_password, ops.vault_password]
    roots = [*secret_search_roots(tmp_path_factory.getbasetemp()), ops.state, ops.db]
    found, checked = files_holding(secrets_, roots, [ops.vault_pass_file])
    assert found == []
    # the store, its logs and the state folder were among them
    assert ops.db.is_file() and checked > 5
    for log in ops.logs.values():
        assert all(s not in log for s in secrets_)
    # Ansible's working folders of this user's runs are gone: only the folder itself is left
    assert [p for p in (ops.state / "ansible").iterdir()] == []


# ---- host keys ------------------------------------------------------------------------------
def test_a_host_whose_key_changed_is_refused_and_the_others_go_on(
    lab: LabFleet, demo: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts, victim = ["web03", "web04", "web05"], "web05"
    db = tmp_path / "pp.db"
    pp(
        "--db",
        str(db),
        "inventory",
        "gather",
        "-i",
        str(lab.inventory),
        "--limit",
        ":".join(hosts),
        "--no-refresh",
    )
    plan = yaml.safe_load((ROOT / "plans" / "lab-demo.yml").read_text())
    plan["name"] = "budget-one"
    plan["failure_budget"] = {"hosts": 1}
    plan_file = tmp_path / "budget-one.yml"
    plan_file.write_text(yaml.safe_dump(plan))
    installs = "grep -c ' status installed demoweb:all 1.1-1$' /var/log/dpkg.log || true"
    before = lab.ssh(victim, installs).stdout.strip()  # the lab is shared with other tests
    keys = LAB_DIR / "hosts" / victim / "root" / "etc" / "ssh"
    saved = {p.name: p.read_bytes() for p in keys.glob("ssh_host_ed25519_key*")}
    # No SSH connection opened before the change may be reused after it.
    monkeypatch.setenv("ANSIBLE_SSH_CONTROL_PATH_DIR", str(tmp_path / "cp"))
    try:
        for p in keys.glob("ssh_host_ed25519_key*"):
            p.unlink()
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                str(keys / "ssh_host_ed25519_key"),
            ],
            check=True,
        )  # sshd reads its host key at every connection
        proc = pp(
            "--db",
            str(db),
            "apply",
            str(plan_file),
            "-i",
            str(lab.inventory),
            "--limit",
            ":".join(hosts),
            "--yes",
            check=False,
        )
    finally:
        for name, data in saved.items():
            (keys / name).write_bytes(data)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out  # partial: within the failure budget
    assert f"{victim}" in out and "SSH host key changed" in out
    run = json.loads(pp("--db", str(db), "runs", "show", "last", "--json").stdout)
    states = {h["host"]: h for h in run["hosts"]}
    assert states[victim]["status"] == "failed"
    assert states[victim]["failure"] == "unreachable"
    assert "host key changed" in (states[victim]["message"] or "")
    assert {states[h]["status"] for h in hosts if h != victim} == {"healthy"}
    # Nothing ran on it: demoweb 1.1-1 was never installed there.
    assert _versions(lab, [victim]) == {victim: "1.0-1"}
    assert lab.ssh(victim, installs).stdout.strip() == before
    shutil.rmtree(tmp_path / "cp", ignore_errors=True)
