"""patchpilot as a user installs it: the wheel built from this tree, installed with its
dependencies into a fresh virtualenv outside the checkout, and run from a directory that is
not the source tree against the lab: gather, plan (a shipped plan by name) and apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import LabFleet, pp

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
HOSTS = ["db01", "db02"]


@pytest.fixture(scope="module")
def installed(lab: LabFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The `patchpilot` command of a fresh virtualenv with the wheel installed in it."""
    base = tmp_path_factory.mktemp("package")
    dist = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = dist.glob("patchpilot-*.whl")
    venv = base / "venv"
    subprocess.run(
        [getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True
    )
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    pp("lab", "demo", "--install", "1.0-1", "--offer", "1.1-1")
    yield venv / "bin" / "patchpilot"
    for h in lab.hosts:
        lab.ssh(h, "dpkg --purge demoweb >/dev/null", check=False)
    pp("lab", "demo")


def _run(
    cmd: Path,
    *args: str,
    cwd: Path,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    run_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run_env.update(env or {})
    # Nothing of the checkout's virtualenv on PATH: the package must find its own Ansible.
    run_env["PATH"] = os.pathsep.join(
        p for p in run_env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    proc = subprocess.run(
        [str(cmd), *args],
        cwd=cwd,
        env=run_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


def test_the_installed_wheel_gathers_plans_and_applies_from_anywhere(
    lab: LabFleet, installed: Path, tmp_path: Path
) -> None:
    venv = installed.parent.parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = venv / "bin" / "python"
    where = _run(python, "-c", "import patchpilot; print(patchpilot.__file__)", cwd=elsewhere)
    assert where.stdout.startswith(str(venv)), where.stdout  # not the source tree
    plans = json.loads(_run(installed, "plans", "list", "--json", cwd=elsewhere).stdout)
    assert {p["name"] for p in plans} >= {"canary", "lab-demo"}
    assert all(p["path"].startswith(str(venv)) for p in plans)

    # The host-side modules are also the collection patchpilot.fleet, with their docs.
    collections = _run(installed, "config", "collections-path", cwd=elsewhere).stdout.strip()
    assert collections.startswith(str(venv))
    doc = _run(
        venv / "bin" / "ansible-doc",
        "--json",
        "patchpilot.fleet.patchpilot_patch",
        cwd=elsewhere,
        env={"ANSIBLE_COLLECTIONS_PATH": collections},
    )
    module = json.loads(doc.stdout)["patchpilot.fleet.patchpilot_patch"]
    assert "exact-version install" in module["doc"]["short_description"]
    assert module["doc"]["filename"].startswith(str(venv))

    db = ["--db", str(tmp_path / "pp.db")]
    inv = ["-i", str(lab.inventory), "--limit", ":".join(HOSTS)]
    gathered = _run(installed, *db, "inventory", "gather", *inv, "--no-refresh", cwd=elsewhere)
    assert "2 of 2 hosts gathered" in gathered.stderr
    shown = _run(installed, *db, "plan", "lab-demo", *inv, cwd=elsewhere)
    assert "plan lab-demo" in shown.stdout and "demoweb 1.0-1 -> 1.1-1" in shown.stdout
    applied = _run(installed, *db, "apply", "lab-demo", *inv, "--yes", cwd=elsewhere)
    assert "succeeded" in applied.stderr
    versions = {
        h: lab.ssh(h, "dpkg-query -W -f '${Version}' demoweb").stdout.strip() for h in HOSTS
    }
    assert versions == {h: "1.1-1" for h in HOSTS}
