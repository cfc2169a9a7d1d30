"""The fleet's own Ansible setup wins: which ansible.cfg is in force, and patchpilot's defaults
only for what the user set nowhere (ops.ansible_setup), plus secrets that never touch disk."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
import yaml

from patchpilot.ops import ansible_setup
from patchpilot.ops.ansible_setup import (
    ACCEPT_NEW,
    DEFAULT_FORKS,
    DEFAULT_SSH_ARGS,
    Access,
    SecretPipe,
    become_vars_yaml,
    build,
    find_config,
    secret_args,
)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir(mode=0o755)
    home.mkdir()
    cwd.chmod(0o755)
    return cwd, home


# ---- which ansible.cfg ----------------------------------------------------------------------
def test_config_search_order_is_ansibles(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    cwd, home = dirs
    assert find_config({}, cwd, home) in (None, Path("/etc/ansible/ansible.cfg"))
    (home / ".ansible.cfg").write_text("[defaults]\n")
    assert find_config({}, cwd, home) == home / ".ansible.cfg"
    (cwd / "ansible.cfg").write_text("[defaults]\n")
    assert find_config({}, cwd, home) == cwd / "ansible.cfg"
    named = tmp_path / "named.cfg"
    named.write_text("[defaults]\n")
    assert find_config({"ANSIBLE_CONFIG": str(named)}, cwd, home) == named
    # ANSIBLE_CONFIG may name a folder holding ansible.cfg
    folder = tmp_path / "cfgdir"
    folder.mkdir()
    (folder / "ansible.cfg").write_text("[defaults]\n")
    assert find_config({"ANSIBLE_CONFIG": str(folder)}, cwd, home) == folder / "ansible.cfg"
    # a named file that does not exist falls through to the next place, as in Ansible
    assert find_config({"ANSIBLE_CONFIG": str(tmp_path / "nope")}, cwd, home) == cwd / "ansible.cfg"


def test_config_in_a_world_writable_directory_is_ignored(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    (cwd / "ansible.cfg").write_text("[defaults]\nforks = 99\n")
    (home / ".ansible.cfg").write_text("[defaults]\n")
    cwd.chmod(0o777)
    assert find_config({}, cwd, home) == home / ".ansible.cfg"


# ---- precedence: the user's setting, else patchpilot's default ------------------------------
def _cfg(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ansible.cfg"
    path.write_text(text)
    return path


def test_nothing_set_gives_patchpilots_defaults_and_host_key_checking_on() -> None:
    s = build(Access(), env={}, config=None)
    assert s.env["ANSIBLE_SSH_ARGS"] == DEFAULT_SSH_ARGS
    assert s.env["ANSIBLE_PIPELINING"] == "True"
    # explicit, because ansible-runner turns checking off when the environment is silent
    assert s.env["ANSIBLE_HOST_KEY_CHECKING"] == "True"
    assert s.host_key_checking is True
    assert s.forks == DEFAULT_FORKS
    assert "ANSIBLE_CONFIG" not in s.env
    assert "ANSIBLE_SSH_EXTRA_ARGS" not in s.env


def test_the_config_file_wins_over_patchpilots_defaults(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        "[defaults]\nforks = 3\nremote_user = deploy\nhost_key_checking = False\n"
        "[ssh_connection]\nssh_args = -o ControlPersist=5m ; a comment\npipelining = false\n",
    )
    s = build(Access(), env={}, config=cfg)
    assert s.env["ANSIBLE_CONFIG"] == str(cfg)
    assert "ANSIBLE_SSH_ARGS" not in s.env  # Ansible reads the file's own ssh_args
    assert "ANSIBLE_PIPELINING" not in s.env
    assert s.forks is None  # no --forks: Ansible takes the file's forks
    assert s.env["ANSIBLE_HOST_KEY_CHECKING"] == "False"
    assert s.host_key_checking is False


def test_pipelining_under_connection_and_host_key_checking_under_ssh_connection(
    tmp_path: Path,
) -> None:
    cfg = _cfg(
        tmp_path, "[connection]\npipelining = True\n[ssh_connection]\nhost_key_checking = no\n"
    )
    s = build(Access(), env={}, config=cfg)
    assert "ANSIBLE_PIPELINING" not in s.env
    assert s.env["ANSIBLE_HOST_KEY_CHECKING"] == "False"


def test_the_environment_wins_over_the_file_and_the_defaults(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "[defaults]\nhost_key_checking = False\n")
    env = {
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=no",
        "ANSIBLE_SSH_PIPELINING": "False",
        "ANSIBLE_FORKS": "7",
        "ANSIBLE_HOST_KEY_CHECKING": "yes",
    }
    s = build(Access(), env=env, config=cfg)
    assert "ANSIBLE_SSH_ARGS" not in s.env and "ANSIBLE_PIPELINING" not in s.env
    assert s.forks is None
    assert s.env["ANSIBLE_HOST_KEY_CHECKING"] == "True"  # the environment said yes


def test_the_forks_flag_wins_over_everything(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "[defaults]\nforks = 3\n")
    assert build(Access(forks=9), env={"ANSIBLE_FORKS": "5"}, config=cfg).forks == 9
    assert build(Access(), env={}, config=None, default_forks=10).forks == 10


def test_accept_new_host_keys_adds_to_the_users_extra_args(tmp_path: Path) -> None:
    s = build(Access(accept_new_host_keys=True), env={}, config=None)
    assert s.env["ANSIBLE_SSH_EXTRA_ARGS"] == ACCEPT_NEW
    cfg = _cfg(tmp_path, "[ssh_connection]\nssh_extra_args = -o ProxyJump=bastion\n")
    s = build(Access(accept_new_host_keys=True), env={}, config=cfg)
    assert s.env["ANSIBLE_SSH_EXTRA_ARGS"] == f"-o ProxyJump=bastion {ACCEPT_NEW}"
    assert s.env["ANSIBLE_HOST_KEY_CHECKING"] == "True"  # accept-new is not "off"


def test_vault_options_go_to_every_ansible_command() -> None:
    s = build(
        Access(vault_ids=("prod@/etc/vp",), vault_password_files=("/root/vp",)),
        env={},
        config=None,
    )
    assert s.args == ("--vault-id", "prod@/etc/vp", "--vault-password-file", "/root/vp")


# ---- become: the flags win over the inventory; the password is taken as it is --------------
def test_become_vars_are_unsafe_yaml_that_round_trips_any_password() -> None:
    nasty = "p{{ lookup('pipe','id') }}\"\\ \n'é"
    text = become_vars_yaml(Access(become=True, become_password=nasty))
    assert text is not None
    assert "ansible_become_password: !unsafe " in text

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))
    assert yaml.load(text, Loader=Loader) == {
        "ansible_become": True,
        "ansible_become_password": nasty,
    }
    assert become_vars_yaml(Access()) is None
    assert become_vars_yaml(Access(become=False)) == "ansible_become: false\n"


# ---- secrets through pipes, never on disk ---------------------------------------------------
def _read(path: Path) -> str:
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(path.read_text()))
    t.start()
    t.join(5)
    assert result, "nothing came out of the pipe"
    return result[0]


def test_a_secret_pipe_gives_the_secret_to_every_reader_and_holds_nothing(
    tmp_path: Path,
) -> None:
    pipe = SecretPipe(tmp_path, "vault-password", "s3cret\n")
    try:
        mode = pipe.path.stat().st_mode
        assert stat.S_ISFIFO(mode)
        assert stat.S_IMODE(mode) == 0o600  # not executable: Ansible would run it
        assert _read(pipe.path) == "s3cret\n"
        assert _read(pipe.path) == "s3cret\n"  # a second Ansible process gets it too
        # one after another, as one Ansible process opens it (every process has its own)
        assert [_read(pipe.path) for _ in range(5)] == ["s3cret\n"] * 5
        assert pipe.path.stat().st_size == 0
        assert [p.name for p in tmp_path.iterdir()] == ["vault-password"]
    finally:
        pipe.close()
    assert not pipe.path.exists()


def test_secret_args_per_process(tmp_path: Path) -> None:
    setup = build(Access(become_password="pw", vault_password="vp"), env={}, config=None)
    args, pipes = secret_args(setup, tmp_path, playbook=True)
    try:
        assert args == [
            "--vault-password-file",
            str(tmp_path / "vault-password"),
            "-e",
            f"@{tmp_path / 'become.yml'}",
        ]
        assert _read(tmp_path / "vault-password") == "vp\n"
        assert 'ansible_become_password: !unsafe "pw"' in _read(tmp_path / "become.yml")
    finally:
        for p in pipes:
            p.close()
    assert list(tmp_path.iterdir()) == []
    # inventory commands get the vault password only
    args, pipes = secret_args(setup, tmp_path, playbook=False)
    for p in pipes:
        p.close()
    assert args == ["--vault-password-file", str(tmp_path / "vault-password")]


def test_configure_finds_the_working_directorys_config(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd, _home = dirs
    (cwd / "ansible.cfg").write_text("[defaults]\nforks = 4\n")
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)
    try:
        s = ansible_setup.configure(Access())
        assert s.config == (cwd / "ansible.cfg").resolve()
        assert ansible_setup.current() is s
        assert os.environ.get("ANSIBLE_CONFIG") is None  # only Ansible's processes get it
    finally:
        ansible_setup.reset()
