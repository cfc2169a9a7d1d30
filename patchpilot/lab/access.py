"""How the lab's hosts are reached, as a real fleet's would be: the lab's SSH key, a non-root
user that becomes root with sudo and a password, and a known_hosts file with every host's
key, so that host keys are checked and never trusted blindly."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from patchpilot.errors import LabError
from patchpilot.lab.image import LAB_USER
from patchpilot.lab.procs import _ssh_keygen
from patchpilot.lab.system import run


def ensure_key(key: Path, password_file: Path) -> None:
    """The lab's SSH key and its user's sudo password, each made once per lab (owner-only)."""
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not key.exists():
        _ssh_keygen(key, "patchpilot-lab")
    if not password_file.exists():
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(18) + "\n")


def write_known_hosts(path: Path, addresses: Sequence[str], keys: Sequence[str]) -> None:
    """Each host's public key under its address; lines for other addresses are kept."""
    mine = set(addresses)
    old = path.read_text().splitlines() if path.exists() else []
    kept = [ln for ln in old if ln.split(" ", 1)[0] not in mine]
    lines = [*kept, *(f"{a} {k}" for a, k in zip(addresses, keys, strict=True))]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{ln}\n" for ln in lines))
    os.replace(tmp, path)


def prepare_user(root: Path, public_key: Path, password: str) -> None:
    """In a host's root: the lab user logs in with the lab's key and has the lab's password
    for sudo (a member of Debian's sudo group, see image._customise)."""
    entry = next(
        (
            ln.split(":")
            for ln in (root / "etc" / "passwd").read_text().splitlines()
            if ln.startswith(f"{LAB_USER}:")
        ),
        None,
    )
    if entry is None:
        raise LabError(
            f"the lab's base image has no user {LAB_USER}",
            hint="remove the base image under the lab_cache folder, then lab up again",
        )
    uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
    ssh_dir = root / home.lstrip("/") / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    auth = ssh_dir / "authorized_keys"
    auth.write_text(public_key.read_text())
    auth.chmod(0o600)
    for path in (ssh_dir, auth):
        os.chown(path, uid, gid)
    run(
        ["chroot", str(root), "chpasswd"],
        input=f"{LAB_USER}:{password}\n",
        what=f"setting the password of {LAB_USER}",
    )
