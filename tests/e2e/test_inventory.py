"""`inventory gather` and the read commands against the real lab fleet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.helpers import LabFleet, pp

pytestmark = pytest.mark.e2e
POOL = Path("/var/lib/patchpilot/lab/repo/pool")


def _json(*args: str) -> object:
    return json.loads(pp(*args).stdout)


@pytest.fixture(scope="module")
def gathered(lab: LabFleet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("store") / "pp.db"
    proc = pp("--db", str(db), "inventory", "gather", "-i", str(lab.inventory), "--forks", "8")
    assert "8 of 8 hosts gathered" in proc.stderr
    return db


def test_every_host_has_the_real_debian_security_updates_with_cves(
    lab: LabFleet, gathered: Path
) -> None:
    published = {
        p.name.split("_", 1)[0] for p in POOL.glob("*.deb") if not p.name.startswith("demoweb_")
    }
    assert published
    rows = _json("--db", str(gathered), "patches", "list", "--security", "--json")
    assert isinstance(rows, list)
    by_host: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_host.setdefault(str(row["host"]), []).append(row)
    assert set(by_host) == set(lab.hosts)
    for host, updates in by_host.items():
        names = {str(u["package"]) for u in updates}
        assert names <= published, f"{host}: security updates not from the lab repo"
        with_cves = [u for u in updates if u["cve_ids"]]
        assert with_cves, f"{host}: no CVE ids read from the changelogs"
        for u in with_cves:
            assert all(str(c).startswith("CVE-") for c in u["cve_ids"])  # type: ignore[attr-defined]
            assert u["candidate_version"] != u["installed_version"]


def test_compliance_reports_the_missing_security_updates(lab: LabFleet, gathered: Path) -> None:
    report = _json("--db", str(gathered), "compliance", "--json")
    assert isinstance(report, dict)
    assert report["compliance_percent"] == 0.0
    hosts = {h["host"]: h for h in report["hosts"]}
    assert set(hosts) == set(lab.hosts)
    assert all(h["missing_security"] > 0 and h["oldest_days"] is not None for h in hosts.values())


def test_inventory_list_and_show(lab: LabFleet, gathered: Path) -> None:
    hosts = _json("--db", str(gathered), "inventory", "list", "--json")
    assert isinstance(hosts, list)
    assert {h["name"] for h in hosts} == set(lab.hosts)
    assert all(h["reachable"] and h["pending"] >= h["security"] > 0 for h in hosts)
    assert all(h["os"].startswith("Debian 12") for h in hosts)
    detail = _json("--db", str(gathered), "inventory", "show", "db01", "--json")
    assert isinstance(detail, dict)
    assert detail["host"]["groups"] == ["db"] and detail["host"]["address"] == lab.hosts["db01"]
    assert detail["installed_packages"] > 100
    assert any(s["name"] == "ssh.service" and s["state"] == "running" for s in detail["services"])


def test_stopped_host_is_unreachable_keeps_its_facts_and_recovers(
    lab: LabFleet, gathered: Path
) -> None:
    db = str(gathered)
    before = _json("--db", db, "patches", "list", "--host", "db02", "--json")
    assert before
    try:
        pp("lab", "fault", "stop", "db02")
        proc = pp(
            "--db",
            db,
            "inventory",
            "gather",
            "-i",
            str(lab.inventory),
            "--limit",
            "db",
            check=False,
        )
        assert proc.returncode == 4, proc.stderr  # partial: db01 gathered, db02 not
        assert "db02: unreachable" in proc.stderr
        hosts = {h["name"]: h for h in _json("--db", db, "inventory", "list", "--json")}  # type: ignore[union-attr]
        assert hosts["db02"]["reachable"] is False and hosts["db02"]["last_error"]
        assert hosts["db01"]["reachable"] is True
        assert _json("--db", db, "patches", "list", "--host", "db02", "--json") == before
    finally:
        pp("lab", "fault", "restore", "db02")
    pp("--db", db, "inventory", "gather", "-i", str(lab.inventory), "--limit", "db02")
    hosts = {h["name"]: h for h in _json("--db", db, "inventory", "list", "--json")}  # type: ignore[union-attr]
    assert hosts["db02"]["reachable"] is True and hosts["db02"]["last_error"] is None


def test_bad_input_is_one_line_and_writes_nothing(lab: LabFleet, tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    cases = [
        (["-i", str(tmp_path / "missing.yml")], "inventory not found"),
        (["-i", str(lab.inventory), "--limit", "nosuchhost"], "matches 'nosuchhost'"),
    ]
    for args, says in cases:
        proc = pp("--db", str(db), "inventory", "gather", *args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert says in proc.stderr and "Traceback" not in proc.stderr
        assert not db.exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    proc = pp("--db", str(garbage), "inventory", "gather", "-i", str(lab.inventory), check=False)
    assert proc.returncode == 2 and "cannot open the store" in proc.stderr
    assert garbage.read_bytes() == b"not a database" * 100


def test_risk_score_explains_every_real_pending_update(lab: LabFleet, gathered: Path) -> None:
    pending = _json("--db", str(gathered), "patches", "list", "--json")
    scored = _json("--db", str(gathered), "risk", "score", "--json")
    assert isinstance(pending, list) and isinstance(scored, dict)
    assert {(u["host"], u["package"]) for u in scored["updates"]} == {
        (u["host"], u["package"]) for u in pending
    }
    for u in scored["updates"]:
        lo, hi = u["interval"]
        assert 0 < lo <= u["probability"] <= hi < 1
        assert u["level"] in {"low", "medium", "high"}
        assert u["strategy"] in {"fast", "canary", "manual review"}
        assert u["reasons"] and all(isinstance(r, str) and r for r in u["reasons"])
    # Real history shows in the words: some update's source had Debian regressions before.
    assert any("earlier Debian updates of" in r for u in scored["updates"] for r in u["reasons"])
