"""The fleet's own Ansible setup, and what patchpilot adds to it for every Ansible process.

ansible.cfg is found as `ansible-playbook` finds it (ANSIBLE_CONFIG, then ./ansible.cfg of
the working directory unless that directory is world-writable, then ~/.ansible.cfg, then
/etc/ansible/ansible.cfg) and handed to every Ansible process patchpilot starts, whatever the
folder it runs in. patchpilot's own defaults (SSH multiplexing and keep-alives, pipelining,
forks) apply only to what the user set nowhere: not in that file, not in the environment.
Host key checking is on unless the user turned it off (ansible-runner would turn it off).

Become and vault options go to every playbook and inventory query; a password that was
asked for at the prompt lives in this process's memory only (see `SecretPipe`).

Standard library only: `apply` sets this up before anything heavy loads.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# A connection to a host that vanished fails in ~15 s instead of hanging on a ControlPersist
# master.
DEFAULT_SSH_ARGS = (
    "-C -o ControlMaster=auto -o ControlPersist=60s -o ServerAliveInterval=5 "
    "-o ServerAliveCountMax=3"
)
DEFAULT_FORKS = 20
ACCEPT_NEW = "-o StrictHostKeyChecking=accept-new"

# Each option patchpilot has a default for: where a user can set it (ini section and key,
# environment variables), as ansible-core's configuration reads them.
_WHERE: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "ssh_args": ((("ssh_connection", "ssh_args"),), ("ANSIBLE_SSH_ARGS",)),
    "ssh_extra_args": ((("ssh_connection", "ssh_extra_args"),), ("ANSIBLE_SSH_EXTRA_ARGS",)),
    "pipelining": (
        (("connection", "pipelining"), ("ssh_connection", "pipelining")),
        ("ANSIBLE_PIPELINING", "ANSIBLE_SSH_PIPELINING"),
    ),
    "forks": ((("defaults", "forks"),), ("ANSIBLE_FORKS",)),
    "host_key_checking": (
        (("defaults", "host_key_checking"), ("ssh_connection", "host_key_checking")),
        ("ANSIBLE_HOST_KEY_CHECKING", "ANSIBLE_SSH_HOST_KEY_CHECKING"),
    ),
}


def find_config(
    env: Mapping[str, str] | None = None, cwd: Path | None = None, home: Path | None = None
) -> Path | None:
    """The ansible.cfg that `ansible-playbook` started here would read, or None."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    home = Path.home() if home is None else home
    named = env.get("ANSIBLE_CONFIG")
    if named:
        path = Path(os.path.expanduser(named))
        if path.is_dir():
            path = path / "ansible.cfg"
        if path.is_file():
            return path.resolve()
    local = cwd / "ansible.cfg"
    if local.is_file():
        try:
            world_writable = bool(cwd.stat().st_mode & stat.S_IWOTH)
        except OSError:
            world_writable = True
        if not world_writable:  # Ansible ignores it there (anyone could have put it)
            return local.resolve()
    for path in (home / ".ansible.cfg", Path("/etc/ansible/ansible.cfg")):
        if path.is_file():
            return path.resolve()
    return None


def read_config(path: Path | None) -> configparser.ConfigParser:
    """The ini file as Ansible parses it (`#` and `;` comments, no interpolation)."""
    cfg = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=(";",), comment_prefixes=("#", ";")
    )
    if path is not None:  # a config Ansible cannot read, Ansible itself reports
        with contextlib.suppress(OSError, configparser.Error, UnicodeDecodeError):
            cfg.read(path, encoding="utf-8")
    return cfg


def user_value(option: str, cfg: configparser.ConfigParser, env: Mapping[str, str]) -> str | None:
    """What the user set for one of the options patchpilot has a default for (the
    environment first, as Ansible reads it), or None when they set nothing."""
    sections, env_names = _WHERE[option]
    for name in env_names:
        if name in env:
            return env[name]
    for section, key in sections:
        if cfg.has_option(section, key):
            return cfg.get(section, key)
    return None


def truthy(value: str) -> bool:
    """Ansible's reading of a boolean setting."""
    return value.strip().lower() in ("y", "yes", "on", "1", "true", "t")


@dataclass(frozen=True)
class Access:
    """How patchpilot reaches the hosts, from the command line: become, vault, host keys,
    forks. None means: as the inventory and ansible.cfg say."""

    become: bool | None = None
    become_password: str | None = field(default=None, repr=False)
    vault_ids: tuple[str, ...] = ()
    vault_password_files: tuple[str, ...] = ()
    vault_password: str | None = field(default=None, repr=False)
    accept_new_host_keys: bool = False
    forks: int | None = None


@dataclass(frozen=True)
class Setup:
    """Everything every Ansible process of this patchpilot process gets."""

    config: Path | None
    env: dict[str, str]
    args: tuple[str, ...]  # options for every Ansible command (vault; see also secret_args)
    forks: int | None  # what to pass as --forks (None: Ansible's own, as the user set it)
    host_key_checking: bool
    access: Access


def build(
    access: Access,
    *,
    env: Mapping[str, str] | None = None,
    config: Path | None = None,
    default_forks: int = DEFAULT_FORKS,
) -> Setup:
    """The environment and options for Ansible, from the user's config and environment and
    patchpilot's defaults for what they left unset. Pure: reads only `config`."""
    env = os.environ if env is None else env
    cfg = read_config(config)
    out: dict[str, str] = {}
    if config is not None:
        out["ANSIBLE_CONFIG"] = str(config)
    if user_value("ssh_args", cfg, env) is None:
        out["ANSIBLE_SSH_ARGS"] = DEFAULT_SSH_ARGS
    # One SSH round trip per task instead of several (needs no `requiretty` in sudoers, the
    # default on Debian).
    if user_value("pipelining", cfg, env) is None:
        out["ANSIBLE_PIPELINING"] = "True"
    checking = user_value("host_key_checking", cfg, env)
    host_key_checking = True if checking is None else truthy(checking)
    # Always explicit: ansible-runner turns checking off when the environment says nothing.
    out["ANSIBLE_HOST_KEY_CHECKING"] = "True" if host_key_checking else "False"
    if access.accept_new_host_keys:
        extra = user_value("ssh_extra_args", cfg, env)
        out["ANSIBLE_SSH_EXTRA_ARGS"] = f"{extra} {ACCEPT_NEW}".strip() if extra else ACCEPT_NEW
    args: list[str] = []
    for vid in access.vault_ids:
        args += ["--vault-id", vid]
    for f in access.vault_password_files:
        args += ["--vault-password-file", f]
    if access.forks is not None:
        forks: int | None = access.forks
    elif user_value("forks", cfg, env) is not None:
        forks = None
    else:
        forks = default_forks
    return Setup(
        config=config,
        env=out,
        args=tuple(args),
        forks=forks,
        host_key_checking=host_key_checking,
        access=access,
    )


def become_vars_yaml(access: Access) -> str | None:
    """Extra vars for --become / --no-become and -K, which win over the inventory's
    ansible_become and ansible_become_password; the password tagged `!unsafe`, so Ansible
    takes it as it is and never renders it."""
    lines = []
    if access.become is not None:
        lines.append(f"ansible_become: {'true' if access.become else 'false'}")
    if access.become_password is not None:
        import json

        # A JSON string is a YAML double-quoted scalar: any character, escaped.
        lines.append(f"ansible_become_password: !unsafe {json.dumps(access.become_password)}")
    return "".join(f"{ln}\n" for ln in lines) or None


class SecretPipe:
    """A secret handed to an Ansible process as a file that holds nothing: a named pipe in
    that process's owner-only folder, fed from this process's memory, a whole copy each time
    it is opened (one reader at a time: every Ansible process has pipes of its own).
    Nothing is written to disk; when this process ends, an empty pipe is all that is left
    (and the folder is swept: ops.workdir)."""

    def __init__(self, folder: Path, name: str, secret: str):
        self.path = folder / name
        os.mkfifo(self.path, 0o600)  # not executable: Ansible would run it as a script
        self._data = secret.encode()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"secret-{name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """One copy to each reader: once a reader has the pipe open, a fresh pipe takes its
        place under the same name (an atomic rename), so the next reader waits for its own
        copy and no reader ever sees a second copy or an early end."""
        while not self._closed:
            try:
                fd = os.open(self.path, os.O_WRONLY)  # waits for a reader
            except OSError:
                return
            try:
                fresh = self.path.with_name(self.path.name + ".next")
                os.mkfifo(fresh, 0o600)
                os.rename(fresh, self.path)
                if not self._closed:
                    os.write(fd, self._data)
            except OSError:  # the reader went away (BrokenPipe), or the folder is gone
                pass
            finally:
                os.close(fd)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):  # wake the writer waiting for a reader
            os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))
        self._thread.join(2)
        with contextlib.suppress(OSError):
            self.path.unlink()


_current: Setup | None = None


def configure(access: Access) -> Setup:
    """Set up this process's Ansible access once, from the command line's options."""
    global _current
    _current = build(access, config=find_config())
    return _current


def secret_args(
    setup: Setup, folder: Path, *, playbook: bool
) -> tuple[list[str], list[SecretPipe]]:
    """The options that hand one Ansible process the secrets asked for at the prompt (the
    vault password; for a playbook the become vars too), each through a pipe of its own in
    that process's owner-only folder. Close the pipes when the process has ended."""
    args: list[str] = []
    pipes: list[SecretPipe] = []
    if setup.access.vault_password is not None:
        pipes.append(SecretPipe(folder, "vault-password", setup.access.vault_password + "\n"))
        args += ["--vault-password-file", str(pipes[-1].path)]
    become = become_vars_yaml(setup.access) if playbook else None
    if become is not None:
        pipes.append(SecretPipe(folder, "become.yml", become))
        args += ["-e", f"@{pipes[-1].path}"]
    return args, pipes


def current() -> Setup:
    """The setup of this process (the user's Ansible setup alone, when nothing configured it)."""
    global _current
    if _current is None:
        _current = build(Access(), config=find_config())
    return _current


def reset() -> None:
    """Forget the setup (tests)."""
    global _current
    _current = None
