"""`patchpilot metrics`: every metric family parsed back with prometheus_client's own parser
and checked against the store (filled by real runs on the fake fleet); the CSV exports."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import select

from patchpilot.errors import ExitCode
from patchpilot.report.fleet import fleet_report
from patchpilot.report.metrics import TEXTFILE, update_if_configured, write_textfile
from patchpilot.run.states import HostState, RunState
from patchpilot.store.db import session_scope
from patchpilot.store.models import Host, RunHost
from tests.unit.test_report import fill_store

FAMILIES = {
    "patchpilot_last_run_timestamp_seconds": "gauge",
    "patchpilot_last_run_finished_timestamp_seconds": "gauge",
    "patchpilot_last_run_state": "gauge",
    "patchpilot_last_run_hosts": "gauge",
    "patchpilot_runs": "counter",
    "patchpilot_pending_updates": "gauge",
    "patchpilot_pending_security_updates": "gauge",
    "patchpilot_oldest_security_update_age_seconds": "gauge",
    "patchpilot_host_compliant": "gauge",
    "patchpilot_compliance_ratio": "gauge",
    "patchpilot_compliance_unknown_hosts": "gauge",
    "patchpilot_rolled_back_hosts": "counter",
    "patchpilot_rollback_runs": "counter",
    "patchpilot_time_to_detect_seconds": "summary",
    "patchpilot_time_to_recover_seconds": "summary",
    "patchpilot_metrics_generated_timestamp_seconds": "gauge",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, str, str]:
    """The same store on SQLite and on a real PostgreSQL server."""
    if request.param == "postgresql":
        return fill_store(request.getfixturevalue("postgres")())
    return fill_store(tmp_path / "pp.db")


def _parse(text: str) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    types = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            out.setdefault(fam.name, {})[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert types == FAMILIES  # every family, each of its type, and no other
    return out


def test_every_metric_family_matches_the_store(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine, _, broken = store
    now = datetime.now(UTC)
    path = write_textfile(engine, tmp_path / "textfile", now=now)
    assert path.name == TEXTFILE and [p.name for p in path.parent.iterdir()] == [TEXTFILE]
    m = _parse(path.read_text())
    with session_scope(engine) as s:
        fleet = fleet_report(s, now=now)
        broken_hosts = s.exec(select(RunHost).where(RunHost.run_id == broken)).all()

    def v(family: str, sample: str | None = None, **labels: str) -> float:
        return m[family][(sample or family, tuple(sorted(labels.items())))]

    plan = "test"  # both runs are of the same plan: the newest one is the broken run
    assert v("patchpilot_last_run_state", plan=plan, state=RunState.FAILED) == 1.0
    assert v("patchpilot_last_run_state", plan=plan, state=RunState.SUCCEEDED) == 0.0
    assert sum(m["patchpilot_last_run_state"].values()) == 1.0
    assert v("patchpilot_last_run_timestamp_seconds", plan=plan) == pytest.approx(
        datetime.fromisoformat(fleet["runs"][0]["started_at"]).timestamp(), abs=1
    )
    assert v("patchpilot_last_run_finished_timestamp_seconds", plan=plan) >= v(
        "patchpilot_last_run_timestamp_seconds", plan=plan
    )
    for state in HostState:
        expected = sum(h.status == state for h in broken_hosts)
        assert v("patchpilot_last_run_hosts", plan=plan, state=state) == expected
    assert v("patchpilot_runs", "patchpilot_runs_total", plan=plan, state="failed") == 1
    assert v("patchpilot_runs", "patchpilot_runs_total", plan=plan, state="succeeded") == 1
    for i in range(1, 6):
        host = f"web{i:02d}"
        security = 1.0 if i <= 3 else 0.0
        assert v("patchpilot_pending_updates", host=host) == security
        assert v("patchpilot_pending_security_updates", host=host) == security
        assert v("patchpilot_host_compliant", host=host) == 1.0 - security
        age = v("patchpilot_oldest_security_update_age_seconds", host=host)
        assert age == pytest.approx(12 * 86400, abs=5) if security else age == 0.0
    assert v("patchpilot_compliance_ratio") == pytest.approx(0.4)
    assert m["patchpilot_compliance_unknown_hosts"] == {
        ("patchpilot_compliance_unknown_hosts", (("reason", r),)): 0.0
        for r in ("never_gathered", "unreachable", "gather_failed")
    }
    assert v("patchpilot_rolled_back_hosts", "patchpilot_rolled_back_hosts_total", plan=plan) == 1
    assert v("patchpilot_rollback_runs", "patchpilot_rollback_runs_total", plan=plan) == 1
    ttd, ttr = fleet["kpis"]["time_to_detect_s"], fleet["kpis"]["time_to_recover_s"]
    count = "patchpilot_time_to_detect_seconds_count"
    assert v("patchpilot_time_to_detect_seconds", count) == ttd["n"]
    assert v("patchpilot_time_to_detect_seconds", "patchpilot_time_to_detect_seconds_sum") == (
        pytest.approx(ttd["sum"], abs=0.01)
    )
    assert v("patchpilot_time_to_recover_seconds", "patchpilot_time_to_recover_seconds_count") == 1
    assert v("patchpilot_time_to_recover_seconds", "patchpilot_time_to_recover_seconds_sum") == (
        pytest.approx(ttr["sum"], abs=0.01)
    )
    assert v("patchpilot_metrics_generated_timestamp_seconds") == pytest.approx(now.timestamp())


def test_hosts_that_cannot_be_judged_have_no_compliant_sample_and_are_counted(
    store, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from patchpilot.inventory import record_failure

    engine, _, _ = store
    now = datetime.now(UTC)
    with session_scope(engine) as s:
        # db01 was gathered clean two days ago and is unreachable since; new01 never answered.
        s.add(Host(name="db01", groups=["db"], last_seen=now - timedelta(days=2)))
        record_failure(s, "db01", "Failed to connect to the host via ssh", unreachable=True)
        record_failure(s, "new01", "Failed to connect to the host via ssh", unreachable=True)
        record_failure(s, "new02", "the gather playbook returned no result", unreachable=False)
    m = _parse(write_textfile(engine, tmp_path / "tf", now=now).read_text())
    compliant = {
        dict(labels)["host"]: v for (_, labels), v in m["patchpilot_host_compliant"].items()
    }
    assert compliant == {f"web{i:02d}": 0.0 if i <= 3 else 1.0 for i in range(1, 6)}
    unknown = {
        dict(labels)["reason"]: v
        for (_, labels), v in m["patchpilot_compliance_unknown_hosts"].items()
    }
    assert unknown == {"never_gathered": 2.0, "unreachable": 1.0, "gather_failed": 0.0}
    # Over the five judged hosts only: 2 of 5, as before the three unknown ones came.
    (ratio,) = m["patchpilot_compliance_ratio"].values()
    assert ratio == pytest.approx(0.4)


def test_with_no_judged_host_there_is_no_ratio_sample(tmp_path: Path) -> None:
    from patchpilot.inventory import record_failure
    from patchpilot.settings import db_url
    from patchpilot.store.db import open_store

    engine = open_store(db_url(str(tmp_path / "pp.db")))
    m = _parse(write_textfile(engine, tmp_path / "empty").read_text())
    assert "patchpilot_compliance_ratio" not in m and "patchpilot_host_compliant" not in m
    with session_scope(engine) as s:
        record_failure(s, "new01", "Failed to connect to the host via ssh", unreachable=True)
    m = _parse(write_textfile(engine, tmp_path / "one").read_text())
    assert "patchpilot_compliance_ratio" not in m and "patchpilot_host_compliant" not in m
    unknown = m["patchpilot_compliance_unknown_hosts"]
    assert unknown[("patchpilot_compliance_unknown_hosts", (("reason", "never_gathered"),))] == 1


def test_the_cli_writes_the_textfile_and_prints_the_exposition(
    store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from patchpilot.cli import main

    engine, _, _ = store
    db = engine.url.render_as_string(hide_password=False)
    assert main(["--db", db, "metrics", "--textfile", str(tmp_path / "tf")]) == ExitCode.OK
    _parse((tmp_path / "tf" / TEXTFILE).read_text())
    capsys.readouterr()
    assert main(["--db", db, "metrics"]) == ExitCode.OK
    _parse(capsys.readouterr().out)


def test_a_run_updates_the_textfile_only_when_configured(
    store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from patchpilot.settings import Settings

    engine, _, _ = store
    assert update_if_configured(engine, Settings()) is None
    monkeypatch.setenv("PATCHPILOT_METRICS_TEXTFILE_DIR", str(tmp_path / "env"))
    assert update_if_configured(engine) == tmp_path / "env" / TEXTFILE  # settings resolved
    written = update_if_configured(engine, Settings(metrics_textfile_dir=tmp_path / "tf"))
    assert written == tmp_path / "tf" / TEXTFILE and written.is_file()
    # A metrics failure never fails the run: an unwritable place is a warning.
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert update_if_configured(engine, Settings(metrics_textfile_dir=blocker)) is None


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_compliance_and_patches_csv_carry_cves_urgency_origin_and_age(
    store, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from patchpilot.cli import main

    engine, _, _ = store
    db = engine.url.render_as_string(hide_password=False)
    capsys.readouterr()
    assert main(["--db", db, "compliance", "--csv"]) == ExitCode.OK
    rows = _csv(capsys.readouterr().out)
    assert [r["host"] for r in rows] == [f"web{i:02d}" for i in range(1, 6)]
    missing = [r for r in rows if r["compliant"] == "no"]
    assert len(missing) == 3
    for r in missing:
        assert r["package"] == "libssl3" and r["cve_ids"] == "CVE-2025-9230 CVE-2025-9232"
        assert (r["urgency"], r["origin"], r["age_days"]) == ("medium", "Debian-Security", "12")
        assert r["os"] == "Debian 12 (bookworm)" and r["last_boot"]
    assert all(r["package"] == "" for r in rows if r["compliant"] == "yes")
    assert {r["status"] for r in missing} == {"non-compliant"}
    assert {r["status"] for r in rows if r["compliant"] == "yes"} == {"compliant"}
    assert main(["--db", db, "patches", "list", "--csv", "--security"]) == ExitCode.OK
    rows = _csv(capsys.readouterr().out)
    assert len(rows) == 3 and {r["cves"] for r in rows} == {"2"}
    assert {r["candidate_version"] for r in rows} == {"3.0.17-1~deb12u2"}


def test_csv_cells_a_spreadsheet_would_run_are_quoted() -> None:
    from patchpilot.cli.patches import _cell

    assert _cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert _cell("@SUM") == "'@SUM" and _cell("1.0-1") == "1.0-1"
    assert _cell(["CVE-1", "CVE-2"]) == "CVE-1 CVE-2" and _cell(True) == "yes"
