"""Base images: one debootstrap per Debian release, built once into a cache and shared read-only
by every host through overlayfs."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

from patchpilot.errors import BadInputError, LabError
from patchpilot.lab.system import run

log = logging.getLogger(__name__)

MIRROR = "http://deb.debian.org/debian"
# python3-apt: Ansible's apt and package_facts modules need it on the host; sudo: the lab's
# non-root user becomes root with it.
INCLUDE = "python3,python3-apt,openssh-server,systemd,systemd-sysv,dbus,apt,sudo"
# The lab's non-root user: logs in with the lab's key, becomes root with sudo and a password.
LAB_USER = "pilot"
STAMP = ".patchpilot-base.json"
_RELEASE_RE = re.compile(r"[a-z][a-z0-9-]{1,30}")


def validate_release(release: str) -> str:
    if not _RELEASE_RE.fullmatch(release):
        raise BadInputError(
            f"invalid Debian release name {release!r}", hint="use a codename such as bookworm"
        )
    return release


def base_dir(cache: Path, release: str) -> Path:
    return cache / f"base-{validate_release(release)}"


def is_ready(cache: Path, release: str) -> bool:
    """Built, and with today's package set (an image built with another is built again)."""
    try:
        stamp = json.loads((base_dir(cache, release) / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("include") == INCLUDE


def ensure_base_image(cache: Path, release: str) -> Path:
    """Return the cached base for `release`, building it first if needed (about a minute)."""
    target = base_dir(cache, release)
    if is_ready(cache, release):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / f".building-{release}"
    if staging.exists():  # an interrupted build: never trust it
        shutil.rmtree(staging)
    log.info("building base image for %s in %s", release, target)
    started = time.monotonic()
    run(
        ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", release, str(staging), MIRROR],
        timeout=1800,
        what=f"debootstrap of {release}",
    )
    _customise(staging)
    (staging / STAMP).write_text(
        json.dumps(
            {
                "release": release,
                "mirror": MIRROR,
                "include": INCLUDE,
                "built_at": time.time(),
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def _customise(root: Path) -> None:
    """Make the tree a neutral template; per-host identity is written into each overlay."""
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc" / "machine-id").write_text("")
    dbus_id = root / "var" / "lib" / "dbus" / "machine-id"
    if dbus_id.is_symlink() or dbus_id.exists():
        dbus_id.unlink()
    (root / "etc" / "apt" / "sources.list").write_text("# patchpilot lab: see sources.list.d\n")
    (root / "etc" / "apt" / "apt.conf.d" / "90patchpilot-lab").write_text(
        'Acquire::Languages "none";\nAPT::Install-Recommends "false";\n'
    )
    for sub in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for entry in (root / sub).glob("*"):
            if entry.is_file():
                entry.unlink()
    if not (root / "usr" / "bin" / "python3").exists():
        raise LabError("the base image has no python3: debootstrap did not include it")
    # Members of Debian's sudo group may run anything as root, with their own password.
    run(
        [
            "chroot",
            str(root),
            "useradd",
            "--create-home",
            "--shell",
            "/bin/bash",
            "--groups",
            "sudo",
            LAB_USER,
        ],
        what=f"adding the lab user {LAB_USER}",
    )
