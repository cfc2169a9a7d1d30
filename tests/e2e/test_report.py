"""Reports, metrics and exports of the lab's own runs: a healthy update fleet-wide, then a
broken one stopped at the canary and rolled back. `report last` and `report fleet` write
HTML that headless Chromium opens with no network; what the page shows is checked, from its
DOM, against the store. `metrics --textfile` parses and matches; `compliance --csv` lists the
real pending Debian security updates with their CVE ids."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import LabFleet, pp
from tests.unit.test_report import CHROMIUM, chromium, dom_figures

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
DEMO_PLAN = ROOT / "plans" / "lab-demo.yml"
POOL = Path("/var/lib/patchpilot/lab/repo/pool")


def _json(*args: str) -> Any:
    return json.loads(pp(*args).stdout)


def _gather(lab: LabFleet, db: Path) -> None:
    proc = pp("--db", str(db), "inventory", "gather", "-i", str(lab.inventory), "--no-refresh")
    assert "8 of 8 hosts gathered" in proc.stderr


@pytest.fixture(scope="module")
def store(lab: LabFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The lab's healthy and broken runs, in a store of this module's own."""
    if CHROMIUM is None:
        pytest.fail("headless Chromium is missing: .ci/setup installs Debian's chromium")
    db = tmp_path_factory.mktemp("report") / "pp.db"
    pp("lab", "demo", "--offer", "1.1-1", "--install", "1.0-1")
    _gather(lab, db)
    healthy = pp("--db", str(db), "apply", str(DEMO_PLAN), "-i", str(lab.inventory), "--yes")
    assert healthy.returncode == 0, healthy.stderr
    pp("lab", "demo", "--offer", "1.2-1")
    _gather(lab, db)
    broken = pp(
        "--db", str(db), "apply", str(DEMO_PLAN), "-i", str(lab.inventory), "--yes", check=False
    )
    assert broken.returncode == 1, broken.stderr
    yield db
    # Leave the fleet as the other e2e modules expect it: no demoweb, every version offered.
    for h in lab.hosts:
        lab.ssh(h, "dpkg --purge demoweb >/dev/null", check=False)
    pp("lab", "demo")


def test_the_run_report_of_the_broken_run_shows_its_timeline_and_evidence(
    store: Path, tmp_path: Path
) -> None:
    run = _json("--db", str(store), "runs", "show", "last", "--json")
    assert run["status"] == "failed"
    out = tmp_path / "run.html"
    pp("--db", str(store), "report", "last", "--out", str(out))
    data = _json("--db", str(store), "report", "last", "--json")
    assert data["run"]["id"] == run["id"]

    dom = chromium(out.as_uri(), "--dump-dom")
    got = dom_figures(dom)
    assert f'data-run-id="{run["id"]}"' in dom and 'data-status="failed"' in dom
    assert len(got["plots"]["timeline"]) == 1
    assert dom.count('<tr data-step="') == len(data["timeline"])
    steps = {t["step"] for t in data["timeline"]}
    assert {"baseline", "patch", "soak", "health", "rollback", "verify"} <= steps
    (verdict,) = run["verdicts"]
    lane = f"{verdict['stage']} / batch {verdict['batch']}"
    assert f'data-batch="{lane}" data-verdict="unhealthy" data-failing="true"' in dom
    metrics = {
        re.search(r'data-metric="([^"]+)"', p).group(1)  # type: ignore[union-attr]
        for p in got["plots"]["evidence"]
        if f'data-batch="{lane}"' in p
    }
    judged = {
        f"{m['check']}.{m['metric']}" for h in verdict["evidence"]["hosts"] for m in h["metrics"]
    }
    assert metrics == judged and "http.error_rate" in metrics
    assert "answered 500" in dom  # the reasons, in words
    canary = {h["host"] for h in run["hosts"] if h["stage"] == "canary"}
    for host in canary:
        assert f'data-host="{host}" data-state="rolled_back"' in dom
    # Kept in pytest's temporary directory (the newest three sessions' are kept).
    chromium(out.as_uri(), f"--screenshot={tmp_path / 'report-run.png'}")
    assert (tmp_path / "report-run.png").stat().st_size > 10_000


def test_the_fleet_report_shows_the_kpis_of_the_store(store: Path, tmp_path: Path) -> None:
    runs = _json("--db", str(store), "runs", "list", "--json")
    assert sorted(r["status"] for r in runs) == ["failed", "succeeded"]
    out = tmp_path / "fleet.html"
    pp("--db", str(store), "report", "fleet", "--out", str(out))
    data = _json("--db", str(store), "report", "fleet", "--json")
    k = data["kpis"]
    assert (k["runs"], k["success_rate"], k["rollback_rate"]) == (2, 0.5, 0.5)
    healthy = next(r for r in runs if r["status"] == "succeeded")
    assert k["hosts_patched"] == healthy["host_states"]["healthy"] == 8
    assert k["hosts_rolled_back"] == sum(r["host_states"].get("rolled_back", 0) for r in runs)
    assert k["time_to_recover_s"]["n"] == 1

    dom = chromium(out.as_uri(), "--dump-dom")
    got = dom_figures(dom)
    assert set(got["plots"]) == {"runs", "durations", "compliance", "calibration"}
    assert float(got["kpis"]["success_rate"]) == 0.5
    assert float(got["kpis"]["rollback_rate"]) == 0.5
    assert int(got["kpis"]["hosts_patched"]) == 8
    assert float(got["kpis"]["time_to_detect_median_s"]) == k["time_to_detect_s"]["median"]
    assert float(got["kpis"]["time_to_recover_median_s"]) == k["time_to_recover_s"]["median"]
    for r in runs:
        assert f'data-run="{r["id"]}" data-status="{r["status"]}"' in dom
    chromium(out.as_uri(), f"--screenshot={tmp_path / 'report-fleet.png'}")
    assert (tmp_path / "report-fleet.png").stat().st_size > 10_000


def test_metrics_textfile_parses_and_matches_the_store(store: Path, tmp_path: Path) -> None:
    pp("--db", str(store), "metrics", "--textfile", str(tmp_path))
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families((tmp_path / "patchpilot.prom").read_text()):
        for s in fam.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    plan = (("plan", "lab-demo"),)
    assert values[("patchpilot_last_run_state", (*plan, ("state", "failed")))] == 1.0
    assert values[("patchpilot_rolled_back_hosts_total", plan)] >= 1
    compliance = _json("--db", str(store), "compliance", "--json")
    for h in compliance["hosts"]:
        assert (
            values[("patchpilot_pending_security_updates", (("host", h["host"]),))]
            == (h["missing_security"])
        )
    assert values[("patchpilot_compliance_ratio", ())] == pytest.approx(
        compliance["compliance_percent"] / 100, abs=0.001
    )


def test_compliance_csv_lists_the_real_debian_security_updates_with_cves(
    lab: LabFleet, store: Path
) -> None:
    published = {
        p.name.split("_", 1)[0] for p in POOL.glob("*.deb") if not p.name.startswith("demoweb_")
    }
    rows = list(csv.DictReader(io.StringIO(pp("--db", str(store), "compliance", "--csv").stdout)))
    missing = [r for r in rows if r["compliant"] == "no"]
    assert {r["host"] for r in missing} == set(lab.hosts)
    assert {r["package"] for r in missing} <= published
    with_cves = [r for r in missing if r["cve_ids"]]
    assert with_cves
    for r in with_cves:
        assert all(c.startswith("CVE-") for c in r["cve_ids"].split())
        assert r["age_days"].isdigit() and r["candidate_version"]
    listed = _json("--db", str(store), "patches", "list", "--security", "--json")
    assert len(missing) == len(listed)
