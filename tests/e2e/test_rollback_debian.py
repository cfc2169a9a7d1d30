"""Rollback of real Debian updates on the lab: every pending update the lab took from Debian
(libssl3, libpam, perl-base, python3.11, apt, tzdata ...) applied to all 8 hosts through the
ready canary plan, whose previous versions no repository keeps, so each host's preflight
rebuilds them from the installed packages; then put back exactly, by hand on two hosts, for
the rest of the run, and automatically after a failing verdict.

Every host ends where it started (the tests compare `dpkg-query -W` with a snapshot taken
first), so the tests after these see the lab's pending updates as before."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import LabFleet, http_get, pp

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CANARY = ROOT / "plans" / "canary.yml"
DEMO_PLAN = ROOT / "plans" / "lab-demo.yml"
BY_HAND = ["web05", "db02"]


def _json(*args: str) -> Any:
    return json.loads(pp(*args).stdout)


def _state(lab: LabFleet, host: str) -> tuple[str, str]:
    """(every installed package with its version, what dpkg --verify says) on the host."""
    versions = lab.ssh(host, "dpkg-query -W -f '${Package}:${Architecture} ${Version}\\n'")
    verify = lab.ssh(host, "dpkg --verify", check=False)
    return versions.stdout, verify.stdout


def _audit_clean(lab: LabFleet, host: str, restored: set[str]) -> None:
    """dpkg --verify finds nothing changed in the restored packages, dpkg --audit nothing
    amiss, and ssh answers."""
    verify = lab.ssh(host, "dpkg --verify " + " ".join(sorted(restored)), check=False)
    assert verify.stdout.strip() == "", (host, verify.stdout)
    assert lab.ssh(host, "dpkg --audit").stdout.strip() == "", host
    assert lab.ssh(host, "echo ok").stdout.strip() == "ok"  # ssh still answers


def _ready_plan(tmp: Path, name: str) -> Path:
    """The ready canary plan with its defaults, its soaks shortened and its approval gate
    taken out (the test is the person), and the demo package left to the demo's tests.
    The soaks stay at 30 s: its `load` check reads the 1-minute load average, which on the
    lab is the whole machine's, and right after the patch it still holds the patch's own
    work (rebuilding 18 packages, byte-compiling python3.11); the ready plan's soaks are
    15-30 minutes."""
    data = yaml.safe_load(CANARY.read_text())
    data["name"] = name
    for st in data["stages"]:
        st["soak"] = "30s"
        st.pop("approval", None)
    data["select"]["exclude"] = ["demoweb"]
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _pending(lab: LabFleet, host: str) -> set[str]:
    out = lab.ssh(host, "apt list --upgradable 2>/dev/null").stdout
    return {ln.split("/")[0] for ln in out.splitlines() if "/" in ln} - {"demoweb"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("debian-rollback") / "pp.db"


def _gather(lab: LabFleet, db: Path) -> None:
    pp("--db", str(db), "inventory", "gather", "-i", str(lab.inventory), "--no-refresh")


def test_the_plan_view_marks_rebuilt_artifacts_and_a_package_that_cannot_be_rolled_back(
    lab: LabFleet, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one line per update in the plan view
    # A package named like the running kernel's image: its downgrade is refused.
    kernel = f"linux-image-{os.uname().release}"
    for version in ("1", "2"):
        root = tmp_path / f"k{version}"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN" / "control").write_text(
            f"Package: {kernel}\nVersion: {version}\nArchitecture: all\n"
            "Maintainer: lab <lab@example.org>\nDescription: stands for the running kernel\n"
        )
        subprocess.run(
            ["dpkg-deb", "--build", str(root), str(tmp_path / f"k{version}.deb")],
            check=True,
            capture_output=True,
        )
        pp("lab", "publish", str(tmp_path / f"k{version}.deb"))
    host = "web06"
    lab.ssh(host, f"apt-get install -y -q {kernel}=1")
    try:
        _gather(lab, store)
        plan = _ready_plan(tmp_path, "debian-view")
        data = _json("--db", str(store), "plan", str(plan), "-i", str(lab.inventory), "--json")
        view = " ".join(
            pp("--db", str(store), "plan", str(plan), "-i", str(lab.inventory)).stdout.split()
        )
    finally:
        lab.ssh(host, f"dpkg --purge {kernel}")
    updates = {
        (h["name"], u["package"]): u for h in data["expansion"]["hosts"] for u in h["updates"]
    }
    assert updates[(host, kernel)]["rollback_source"] == "none"
    assert "running kernel" in updates[(host, kernel)]["rollback_note"]
    # No repository keeps the versions the lab hosts run: rebuilt from the installed package.
    assert updates[("db01", "libssl3")]["rollback_source"] == "rebuild"
    assert f"{kernel} 1 -> 2" in view and "cannot be rolled back: the running kernel" in view
    assert "libssl3" in view and "rollback: rebuilt from the installed package" in view
    warning = next(w for w in data["expansion"]["warnings"] if w.startswith(f"{host}:"))
    assert "on_impossible is refuse" in warning and "refused at its preflight" in warning


@pytest.fixture(scope="module")
def applied(
    lab: LabFleet, store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Every pending Debian update applied to the whole lab through the ready plan."""
    before = {h: _state(lab, h) for h in lab.hosts}
    pending = {h: _pending(lab, h) for h in lab.hosts}
    assert all(pending.values()), pending
    _gather(lab, store)
    plan = _ready_plan(tmp_path_factory.mktemp("plans"), "debian-all")
    proc = pp(
        "--db", str(store), "apply", str(plan), "-i", str(lab.inventory), "--yes",
        check=False, timeout=1800,
    )  # fmt: skip
    runs = _json("--db", str(store), "runs", "list", "--json")
    run = _json("--db", str(store), "runs", "show", runs[0]["id"], "--json")
    yield {"proc": proc, "run": run, "before": before, "pending": pending}


def test_every_real_debian_update_goes_through_the_ready_plan(
    lab: LabFleet, applied: dict[str, Any]
) -> None:
    proc, run = applied["proc"], applied["run"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rollback impossible" not in proc.stdout + proc.stderr
    assert run["status"] == "succeeded"
    assert {h["status"] for h in run["hosts"]} == {"healthy"}
    for h in run["hosts"]:
        planned = {u.split()[0] for u in h["updates"]}
        assert planned == applied["pending"][h["host"]], h["host"]
        assert _pending(lab, h["host"]) == set(), h["host"]
        # Each previous version kept, its source named and its checksum recorded.
        assert set(h["artifacts"]) == planned
        for pkg, a in h["artifacts"].items():
            assert a["source"] in {"rebuilt", "dpkg-repack", "cache", "repository"}, pkg
            assert len(a["sha256"]) == 64
        assert h["artifacts"]["libssl3"]["source"] in {"rebuilt", "dpkg-repack"}


def test_runs_show_names_each_artifacts_source(
    applied: dict[str, Any], store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    text = " ".join(pp("--db", str(store), "runs", "show", applied["run"]["id"]).stdout.split())
    assert "rollback artifacts of web05: rebuilt from the installed package: " in text
    assert "libssl3 3.0." in text


def test_a_manual_rollback_of_two_hosts_puts_every_real_package_back(
    lab: LabFleet, applied: dict[str, Any], store: Path
) -> None:
    run_id = applied["run"]["id"]
    proc = pp(
        "--db", str(store), "rollback", run_id, "--hosts", ",".join(BY_HAND),
        check=False, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for h in BY_HAND:
        assert _state(lab, h) == applied["before"][h], h
        _audit_clean(lab, h, applied["pending"][h])
    # The rest of the run goes back too: the whole lab is as it was before the run.
    rest = sorted(set(lab.hosts) - set(BY_HAND))
    proc = pp("--db", str(store), "rollback", run_id, check=False, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for h in rest:
        assert _state(lab, h) == applied["before"][h], h
        _audit_clean(lab, h, applied["pending"][h])
    shown = _json("--db", str(store), "runs", "show", run_id, "--json")
    assert {h["status"] for h in shown["hosts"]} == {"rolled_back"}
    # Its artifacts can go now: pruned on every host, and a rollback says they are gone.
    pp("--db", str(store), "runs", "prune", run_id)
    assert lab.ssh("web01", f"test ! -e /var/cache/patchpilot/rollback/{run_id}").returncode == 0


def test_a_failing_verdict_rolls_real_packages_back_in_the_same_run(
    lab: LabFleet, applied: dict[str, Any], store: Path, tmp_path: Path
) -> None:
    # The demo service's broken version (it answers 500) goes out with the real updates.
    pp("lab", "demo", "--offer", "1.2-1", "--install", "1.0-1")
    try:
        before = {h: _state(lab, h) for h in BY_HAND}
        _gather(lab, store)
        data = yaml.safe_load(DEMO_PLAN.read_text())
        data["name"] = "debian-broken"
        data["select"]["include"] = ["*"]
        plan = tmp_path / "broken.yml"
        plan.write_text(yaml.safe_dump(data))
        proc = pp(
            "--db", str(store), "apply", str(plan), "-i", str(lab.inventory), "--yes",
            "--limit", ",".join(BY_HAND), check=False, timeout=1200,
        )  # fmt: skip
        assert proc.returncode != 0
        run = _json("--db", str(store), "runs", "show", "last", "--json")
        assert {h["status"] for h in run["hosts"]} == {"rolled_back"}, run["hosts"]
        assert any("libssl3" in u for h in run["hosts"] for u in h["updates"])
        for h in BY_HAND:
            assert _state(lab, h) == before[h], h
            _audit_clean(lab, h, applied["pending"][h])
            assert http_get(f"http://{lab.hosts[h]}:8080/")[0] == 200
    finally:
        pp("lab", "demo", "--offer", "1.0-1", check=False)
