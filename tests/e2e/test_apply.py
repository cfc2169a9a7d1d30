"""`patchpilot apply` against the real lab fleet: healthy and broken updates, failing
installs, a host cut off mid-wave, kill -9 and resume, concurrent runs, a latency-only
regression caught by the control hosts, and fleet learning from a rollback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.helpers import LabFleet, http_get, pp

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
DEMO_PLAN = ROOT / "plans" / "lab-demo.yml"


def _json(*args: str) -> Any:
    return json.loads(pp(*args).stdout)


def _plan(tmp: Path, name: str, **changes: Any) -> Path:
    """The lab demo plan with some fields changed (stage fields as stage_<field>)."""
    data = yaml.safe_load(DEMO_PLAN.read_text())
    data["name"] = name
    for key, value in changes.items():
        if key.startswith("stage_"):
            for st in data["stages"]:
                st[key[6:]] = value
        else:
            data[key] = value
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _versions(lab: LabFleet) -> dict[str, str]:
    return {
        h: lab.ssh(h, "dpkg-query -W -f '${Version}' demoweb").stdout.strip() for h in lab.hosts
    }


def _installs(lab: LabFleet, host: str, version: str) -> int:
    """How many times dpkg installed demoweb VERSION on the host (from its dpkg.log)."""
    out = lab.ssh(
        host, f"grep -c ' status installed demoweb:all {version}$' /var/log/dpkg.log || true"
    )
    return int(out.stdout.strip() or 0)


def _stage(lab: LabFleet, *, offer: str, install: str | None = None) -> None:
    args = ["lab", "demo", "--offer", offer]
    if install:
        args += ["--install", install]
    pp(*args)


def _publish(tmp: Path, spec: str) -> None:
    out = tmp / "debs"
    out.mkdir(exist_ok=True)
    pp("lab", "demo-deb", spec, "--out", str(out))
    version = spec.split(":")[0]
    (deb,) = out.glob(f"demoweb_{version}_all.deb")
    pp("lab", "publish", str(deb), "--no-refresh")


@pytest.fixture(scope="module")
def store(lab: LabFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    db = tmp_path_factory.mktemp("apply") / "pp.db"
    _stage(lab, offer="1.1-1", install="1.0-1")
    yield db
    # Leave the fleet as the other e2e modules expect it: no demoweb, every version offered.
    for h in lab.hosts:
        lab.ssh(h, "dpkg --purge demoweb >/dev/null", check=False)
    pp("lab", "demo")


def _gather(lab: LabFleet, db: Path) -> None:
    proc = pp("--db", str(db), "inventory", "gather", "-i", str(lab.inventory), "--no-refresh")
    assert "8 of 8 hosts gathered" in proc.stderr


def _apply(lab: LabFleet, db: Path, plan: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return pp(
        "--db", str(db), "apply", str(plan), "-i", str(lab.inventory), "--yes", *extra, check=False
    )


def _last_run(db: Path) -> dict[str, Any]:
    runs = _json("--db", str(db), "runs", "list", "--json")
    return dict(_json("--db", str(db), "runs", "show", runs[0]["id"], "--json"))


def _demoweb_score(db: Path) -> float:
    scored = _json("--db", str(db), "risk", "score", "--json")
    return max(u["probability"] for u in scored["updates"] if u["package"] == "demoweb")


def test_check_mode_runs_every_batch_and_changes_nothing(lab: LabFleet, store: Path) -> None:
    _gather(lab, store)
    proc = _apply(lab, store, DEMO_PLAN, "--check")
    assert proc.returncode == 0, proc.stderr
    run = _last_run(store)
    assert run["status"] == "check"
    assert {h["status"] for h in run["hosts"]} == {"checked"}
    assert set(_versions(lab).values()) == {"1.0-1"}
    for h in lab.hosts:
        assert _installs(lab, h, "1.1-1") == 0
        # No snapshot or kept .deb was written either.
        kept = lab.ssh(h, f"test -e /var/cache/patchpilot/rollback/{run['id']}", check=False)
        assert kept.returncode == 1


def test_a_healthy_update_patches_every_host_wave_by_wave(
    lab: LabFleet, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # debug log lines unwrapped
    _gather(lab, store)
    # Reviewed, frozen, then applied: the run's Ansible process starts from the frozen file
    # while patchpilot loads, and the engine adopts it (see patchpilot/warmstart.py).
    frozen = tmp_path / "demo.json"
    pp("--db", str(store), "plan", str(DEMO_PLAN), "-i", str(lab.inventory), "--out", str(frozen))
    proc = pp(
        "--debug",
        "--db",
        str(store),
        "apply",
        str(frozen),
        "-i",
        str(lab.inventory),
        "--yes",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "using the patch process started while patchpilot loaded" in proc.stderr
    assert set(_versions(lab).values()) == {"1.1-1"}
    run = _last_run(store)
    assert run["status"] == "succeeded"
    assert {h["status"] for h in run["hosts"]} == {"healthy"}
    # The canary covers both groups (web and db) and goes first; the rest follows in 2 batches.
    canary = [h for h in run["hosts"] if h["stage"] == "canary"]
    assert len(canary) == 2
    patches = [t for t in run["timeline"] if t["step"] == "patch"]
    assert [t["stage"] for t in patches] == ["canary", "rest", "rest"]
    assert {v["verdict"] for v in run["verdicts"]} == {"healthy"}
    for h in lab.hosts:
        status, _ = http_get(f"http://{lab.hosts[h]}:8080/")
        assert status == 200


def test_a_broken_update_stops_at_the_canary_and_is_rolled_back(lab: LabFleet, store: Path) -> None:
    _stage(lab, offer="1.2-1")
    _gather(lab, store)
    before = _demoweb_score(store)
    proc = _apply(lab, store, DEMO_PLAN)
    assert proc.returncode == 1, proc.stderr
    run = _last_run(store)
    assert run["status"] == "failed" and "failure budget exceeded" in run["message"]
    canary = {h["host"] for h in run["hosts"] if h["stage"] == "canary"}
    rest = {h["host"] for h in run["hosts"] if h["stage"] == "rest"}
    assert {h["status"] for h in run["hosts"] if h["host"] in canary} == {"rolled_back"}
    assert {h["status"] for h in run["hosts"] if h["host"] in rest} == {"pending"}
    assert set(_versions(lab).values()) == {"1.1-1"}
    for h in lab.hosts:  # the canary is healthy again; no later stage was touched
        assert http_get(f"http://{lab.hosts[h]}:8080/")[0] == 200
        if h in rest:
            assert _installs(lab, h, "1.2-1") == 0
    (verdict,) = run["verdicts"]
    assert verdict["verdict"] == "unhealthy"
    evidence = json.dumps(verdict["evidence"])
    assert "answered 500" in evidence and "error_rate" in evidence
    # Fleet learning: the rollback is evidence; after `risk train`, demoweb ranks higher.
    pp("--db", str(store), "risk", "train")
    assert _demoweb_score(store) > 2 * before


def test_a_failing_install_is_restored_and_the_budget_decides(
    lab: LabFleet, store: Path, tmp_path: Path
) -> None:
    _stage(lab, offer="1.3-1")
    _gather(lab, store)
    # Two failures are allowed: the canary's two failed installs stay within it and the run
    # goes on; the next batch fails as well, the budget is exceeded and the run stops.
    plan = _plan(tmp_path, "install-fails", failure_budget={"hosts": 2})
    proc = _apply(lab, store, plan)
    assert proc.returncode == 1, proc.stderr
    run = _last_run(store)
    touched = [h for h in run["hosts"] if h["status"] != "pending"]
    assert len(touched) == 5  # the canary's 2, then a batch of 3
    assert all(h["status"] == "rolled_back" and h["failure"] == "install_failed" for h in touched)
    assert "budget exceeded" in run["message"]
    assert set(_versions(lab).values()) == {"1.1-1"}
    for h in lab.hosts:
        assert lab.ssh(h, "dpkg --audit").stdout.strip() == ""
        assert http_get(f"http://{lab.hosts[h]}:8080/")[0] == 200


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _background_apply(lab: LabFleet, db: Path, plan: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "patchpilot",
            "--db",
            str(db),
            "apply",
            str(plan),
            "-i",
            str(lab.inventory),
            "--yes",
        ],
        stdin=subprocess.DEVNULL,  # its own: see helpers.pp
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _run_hosts(db: Path) -> dict[str, str]:
    running = [
        r for r in _json("--db", str(db), "runs", "list", "--json") if r["status"] == "running"
    ]
    if not running:
        return {}
    run = _json("--db", str(db), "runs", "show", running[0]["id"], "--json")
    return {h["host"]: h["status"] for h in run["hosts"]}


def test_kill_9_mid_wave_then_resume_patches_no_host_twice_and_a_second_run_is_refused(
    lab: LabFleet, store: Path, tmp_path: Path
) -> None:
    _publish(tmp_path, "1.4-1")
    _stage(lab, offer="1.4-1")
    _gather(lab, store)
    plan = _plan(tmp_path, "resume", stage_soak="15s")
    proc = _background_apply(lab, store, plan, tmp_path / "first.log")
    try:
        _wait_for(
            lambda: (
                "healthy" in _run_hosts(store).values() or "patched" in _run_hosts(store).values()
            ),
            240,
            "the canary to be patched",
        )
        # A second run on the same hosts is refused while the first holds them.
        second = _apply(lab, store, plan)
        assert second.returncode == 5, second.stderr
        assert "is locked by run" in second.stderr
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    runs = _json("--db", str(store), "runs", "list", "--json")
    assert runs[0]["status"] == "refused"  # the second apply, recorded as refused
    (crashed,) = [r for r in runs if r["status"] == "running"]  # what the store says now
    run_id = crashed["id"]
    resumed = pp("--db", str(store), "apply", "--resume", run_id, "--yes", check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert set(_versions(lab).values()) == {"1.4-1"}
    for h in lab.hosts:
        assert _installs(lab, h, "1.4-1") == 1, f"{h} was patched more than once"
    run = _json("--db", str(store), "runs", "show", run_id, "--json")
    assert run["status"] == "succeeded"
    assert [a["action"] for a in run["audit"]].count("resume") == 1


def test_a_host_cut_off_mid_wave_counts_as_the_budget_says(
    lab: LabFleet, store: Path, tmp_path: Path
) -> None:
    _publish(tmp_path, "1.5-1")
    _stage(lab, offer="1.5-1")
    _gather(lab, store)
    plan = _plan(
        tmp_path,
        "cut",
        stage_soak="10s",
        failure_budget={"hosts": 0, "unreachable_counts": False},
    )
    proc = _background_apply(lab, store, plan, tmp_path / "cut.log")
    victim = None
    try:
        _wait_for(lambda: "patched" in _run_hosts(store).values(), 240, "the canary's patch")
        hosts = _run_hosts(store)
        victim = sorted(h for h, st in hosts.items() if st == "pending")[-1]
        pp("lab", "fault", "cut", victim)
        assert proc.wait(timeout=600) == 4  # partial: within the budget
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if victim:
            pp("lab", "fault", "restore", victim)
    run = _last_run(store)
    assert run["status"] == "partial"
    (cut,) = [h for h in run["hosts"] if h["host"] == victim]
    assert cut["status"] == "failed" and cut["failure"] == "unreachable"
    others = [h for h in run["hosts"] if h["host"] != victim]
    assert {h["status"] for h in others} == {"healthy"}
    versions = _versions(lab)
    assert versions[victim] == "1.4-1"  # never touched: it answered no preflight
    assert {v for h, v in versions.items() if h != victim} == {"1.5-1"}


def test_added_latency_alone_is_caught_against_the_control_hosts(
    lab: LabFleet, store: Path, tmp_path: Path
) -> None:
    _publish(tmp_path, "1.6-1:slow=300")
    _stage(lab, offer="1.6-1")
    _gather(lab, store)
    proc = _apply(lab, store, DEMO_PLAN)
    assert proc.returncode == 1, proc.stderr
    run = _last_run(store)
    (verdict,) = run["verdicts"]
    assert verdict["verdict"] == "unhealthy"
    metrics = [m for h in verdict["evidence"]["hosts"] for m in h["metrics"]]
    latency = [m for m in metrics if m["metric"] == "latency_ms" and m["verdict"] == "unhealthy"]
    assert latency, "latency was not judged unhealthy"
    assert all("control_p" in m["statistic"] and m["control"] is not None for m in latency)
    assert all(m["verdict"] == "healthy" for m in metrics if m["metric"] == "error_rate")
    assert {h["status"] for h in run["hosts"] if h["stage"] == "canary"} == {"rolled_back"}
    assert set(_versions(lab).values()) - {"1.5-1", "1.4-1"} == set()


def _hanging(lab: LabFleet, host: str) -> bool:
    """demoweb's postinst is running on the host (the brackets keep pgrep off its own shell)."""
    return lab.ssh(host, "pgrep -f 'demoweb[.]postinst configure'", check=False).returncode == 0


def test_a_patch_past_its_stage_timeout_is_failed_and_left_for_a_manual_rollback(
    lab: LabFleet, store: Path, tmp_path: Path
) -> None:
    _publish(tmp_path, "1.7-1:install-hangs=25")
    _stage(lab, offer="1.7-1")
    _gather(lab, store)
    before = _versions(lab)
    proc = _apply(lab, store, _plan(tmp_path, "timeout", stage_timeout="5s"))
    assert proc.returncode == 1, proc.stderr
    run = _last_run(store)
    canary = sorted(h["host"] for h in run["hosts"] if h["stage"] == "canary")
    for h in run["hosts"]:
        if h["host"] in canary:
            assert (h["status"], h["failure"]) == ("failed", "timeout"), h
            assert "timeout (5 s)" in h["message"] and "patchpilot rollback" in h["message"]
        else:  # no later stage was touched
            assert h["status"] == "pending"
            assert _installs(lab, h["host"], "1.7-1") == 0
    assert not [t for t in run["timeline"] if t["step"] == "rollback"]  # nothing done unasked
    # The operator puts the canary back; the rollback waits for the stuck install to end.
    back = pp("--db", str(store), "rollback", run["id"], "--hosts", ",".join(canary), check=False)
    assert back.returncode == 0, back.stderr
    after = _versions(lab)
    for h in canary:
        assert after[h] == before[h]
        # Installed from the .deb the host kept before its install began, not a repository.
        history = lab.ssh(h, "grep Commandline: /var/log/apt/history.log | tail -n 1").stdout
        kept = f"/var/cache/patchpilot/rollback/{run['id']}/demoweb_{before[h]}_all.deb"
        assert kept in history, history
        assert lab.ssh(h, "dpkg --audit").stdout.strip() == ""
        assert http_get(f"http://{lab.hosts[h]}:8080/")[0] == 200


def test_kill_9_mid_install_with_dpkg_interrupted_resumes_by_rolling_back(
    lab: LabFleet, store: Path, tmp_path: Path
) -> None:
    _publish(tmp_path, "1.8-1:install-hangs=30")
    _stage(lab, offer="1.8-1")
    _gather(lab, store)
    before = _versions(lab)
    proc = _background_apply(lab, store, DEMO_PLAN, tmp_path / "crash.log")
    try:
        _wait_for(lambda: any(_hanging(lab, h) for h in lab.hosts), 240, "a postinst to run")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # The hosts' side dies too (the OOM killer, a power cut): dpkg is left interrupted.
    stuck = [h for h in lab.hosts if _hanging(lab, h)]
    assert stuck
    for h in stuck:
        lab.ssh(h, "pkill -9 -f '[a]pt-get|[d]pkg|demoweb[.]postinst'", check=False)
        assert "demoweb" in lab.ssh(h, "dpkg --audit").stdout
    (crashed,) = [
        r for r in _json("--db", str(store), "runs", "list", "--json") if r["status"] == "running"
    ]
    resumed = pp("--db", str(store), "apply", "--resume", crashed["id"], "--yes", check=False)
    assert resumed.returncode == 1, resumed.stderr  # the budget (0) stops the run
    run = _json("--db", str(store), "runs", "show", crashed["id"], "--json")
    after = _versions(lab)
    for h in run["hosts"]:
        if h["host"] in stuck:
            # Put back from the snapshot and .debs the host kept before its install began.
            assert (h["status"], h["failure"]) == ("rolled_back", "install_failed"), h
            assert after[h["host"]] == before[h["host"]]
            assert lab.ssh(h["host"], "dpkg --audit").stdout.strip() == ""
            assert http_get(f"http://{lab.hosts[h['host']]}:8080/")[0] == 200
        else:
            assert h["status"] == "pending" and _installs(lab, h["host"], "1.8-1") == 0
