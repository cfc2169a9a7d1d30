"""Running host-side commands for the lab, and checking this machine can run a lab at all."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence

from patchpilot.errors import EnvironmentProblem, LabError

log = logging.getLogger(__name__)

# Tool -> Debian package that provides it; checked before any lab command touches the machine.
REQUIRED_TOOLS: dict[str, str] = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "dpkg-deb": "dpkg",
    "dpkg-scanpackages": "dpkg-dev",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "mount": "mount",
    "umount": "mount",
}


def missing_tools(tools: dict[str, str] | None = None) -> dict[str, str]:
    """Return the tools (and their Debian packages) that are not on PATH."""
    tools = REQUIRED_TOOLS if tools is None else tools
    return {tool: pkg for tool, pkg in tools.items() if shutil.which(tool) is None}


def require_lab_prerequisites(tools: dict[str, str] | None = None) -> None:
    """Refuse early, with the exact fix, when the lab cannot run on this machine."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            "the lab needs root: it mounts overlays, makes network namespaces, boots containers",
            hint="run it as root, e.g. `sudo patchpilot lab up`",
        )
    missing = missing_tools(tools)
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        raise EnvironmentProblem(
            f"missing tools for the lab: {', '.join(sorted(missing))}",
            hint=f"install them with `apt-get install -y {packages}`",
        )


# Each booted host's systemd holds a handful of inotify instances, all counted against root;
# Debian's default of 128 stalls the boot of the twentieth-odd host with no error at all.
KERNEL_MINIMUMS: dict[str, int] = {
    "fs/inotify/max_user_instances": 8192,
    "fs/inotify/max_user_watches": 524288,
}


def ensure_kernel_limits(minimums: dict[str, int] | None = None) -> list[str]:
    """Raise the sysctls the lab needs where they are lower; return what was changed."""
    changed = []
    for key, minimum in (KERNEL_MINIMUMS if minimums is None else minimums).items():
        path = f"/proc/sys/{key}"
        try:
            with open(path) as f:
                current = int(f.read().split()[0])
            if current < minimum:
                with open(path, "w") as f:
                    f.write(str(minimum))
                changed.append(f"{key.replace('/', '.')} {current} -> {minimum}")
        except (OSError, ValueError) as exc:
            raise EnvironmentProblem(
                f"cannot raise {key.replace('/', '.')} to {minimum}: {exc}",
                hint=f"set it by hand: sysctl -w {key.replace('/', '.')}={minimum}",
            ) from exc
    for change in changed:
        log.info("raised kernel limit %s for the lab", change)
    return changed


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 300,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, and raise a LabError naming what failed."""
    log.debug("run: %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            list(cmd), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise EnvironmentProblem(
            f"command not found: {cmd[0]}",
            hint=f"install the Debian package providing it ({REQUIRED_TOOLS.get(cmd[0], cmd[0])})",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{what or cmd[0]} timed out after {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit code {proc.returncode}"
        raise LabError(f"{what or ' '.join(cmd[:3])} failed: {last}")
    return proc
