"""patchpilot's state folder and the owner-only working folders of its Ansible processes,
swept when the process that made them is gone. Standard library only: the CLI sets the
folder before anything heavy loads."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_STATE_DIR: Path | None = None


def use_state_dir(path: str | Path) -> None:
    """Where Ansible's working folders go (the `state_dir` setting); set once by the CLI."""
    global _STATE_DIR
    _STATE_DIR = Path(path)


def state_dir() -> Path:
    """patchpilot's state folder (owner-only): $PATCHPILOT_STATE_DIR, the `state_dir`
    setting, else $XDG_STATE_HOME/patchpilot or ~/.local/state/patchpilot."""
    if _STATE_DIR is not None:
        return _STATE_DIR
    if os.environ.get("PATCHPILOT_STATE_DIR"):
        return Path(os.environ["PATCHPILOT_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "patchpilot"  # as settings.default_state_dir


def _owner_only_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def sweep_stale_work_dirs() -> list[Path]:
    """Working folders of patchpilot processes that are gone (killed, or the machine
    restarted): removed, with whatever Ansible left in them."""
    root = state_dir() / "ansible"
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for d in root.iterdir():
        parts = d.name.split("-", 2)
        if len(parts) == 3 and parts[0] == "run" and parts[1].isdigit():
            pid = int(parts[1])
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_SWEPT: set[Path] = set()  # state folders swept by this process


def work_dir() -> Path:
    """A new owner-only working folder for one Ansible process, under the state folder."""
    root = _owner_only_dir(state_dir())
    if root not in _SWEPT:
        sweep_stale_work_dirs()
        _SWEPT.add(root)
    _owner_only_dir(root / "ansible")
    return Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=root / "ansible"))
