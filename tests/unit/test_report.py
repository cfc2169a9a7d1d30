"""Run and fleet reports from a real store filled by real runs on the fake fleet of
tests/unit/test_engine.py: their data, their HTML (escaped, self-contained), and the page as
headless Chromium renders it with no network."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from patchpilot.errors import ExitCode
from patchpilot.report.fleet import fleet_report
from patchpilot.report.html import render_fleet, render_run, write_atomic
from patchpilot.report.run import run_report
from patchpilot.run.lifecycle import start_run
from patchpilot.run.states import HostState, RunState
from patchpilot.settings import db_url
from patchpilot.store.db import open_store, session_scope
from patchpilot.store.models import (
    AuditEvent,
    Host,
    Incident,
    PendingUpdate,
    Run,
    RunHost,
    RunStep,
    RunVerdict,
)
from tests.unit.test_engine import NOW, PLAN, _fleet, _opts

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _stretch(engine: Any, run_id: str, *, start: datetime, factor: float) -> None:
    """Spread a fake run's instants as a real run's would be (the fake fleet answers in
    milliseconds): every time of the run moved to `start` and scaled by `factor`."""
    with session_scope(engine) as s:
        run = s.get(Run, run_id)
        assert run is not None
        t0 = run.started_at.replace(tzinfo=UTC)

        def at(d: datetime | None) -> datetime | None:
            if d is None:
                return None
            return start + ((d.replace(tzinfo=UTC) - t0) * factor)

        run.started_at = at(run.started_at) or start
        run.finished_at = at(run.finished_at)
        s.add(run)
        for model, fields in (
            (RunStep, ("started_at", "finished_at")),
            (RunVerdict, ("created_at",)),
            (RunHost, ("patched_at",)),
            (Incident, ("created_at",)),
            (AuditEvent, ("at",)),
        ):
            for row in s.exec(select(model).where(model.run_id == run_id)):  # type: ignore[attr-defined]
                for f in fields:
                    setattr(row, f, at(getattr(row, f)))
                s.add(row)


def _frozen(n: int, *, to: str = "1.1-1", probability: float) -> tuple[Any, dict[str, Any]]:
    """test_engine's plan over n web hosts, demoweb 1.0-1 -> `to` scored `probability`."""
    from patchpilot.plan.expand import PlanHost, PlanUpdate, expand_plan
    from patchpilot.plan.frozen import freeze, inventory_snapshot
    from patchpilot.plan.load import parse_plan
    from patchpilot.risk.score import Thresholds
    from patchpilot.risk.types import RiskScore

    spec = parse_plan(PLAN.format(budget="{hosts: 0}"), source="test.yml")
    hosts = [PlanHost(f"web{i:02d}", ("web",), "debian 12 bookworm") for i in range(1, n + 1)]
    updates = {
        h.name: [PlanUpdate("demoweb", "all", "1.0-1", to, "demoweb", False, False, False, NOW)]
        for h in hosts
    }
    level = Thresholds().level(probability)
    score = RiskScore(probability, probability / 2, probability * 2, level, ("a reason",))
    scores = {h.name: {"demoweb": score} for h in hosts}
    expanded = expand_plan(spec, hosts, updates, scores, now=NOW)
    data = freeze(
        expanded, spec, inventory_snapshot=inventory_snapshot(hosts, expanded), created_at=NOW
    )
    return spec, data


def fill_store(path: Path | str, *, hostile: bool = False) -> tuple[Any, str, str]:
    """Two real runs on five hosts: a healthy one, then a broken update stopped at the
    canary and rolled back; and gathered hosts with pending security updates. Returns the
    engine and the two run ids (healthy, broken). `path`: an SQLite file, or a store URL."""
    engine = open_store(path if isinstance(path, str) else db_url(str(path)))
    now = datetime.now(UTC)
    spec, data = _frozen(5, probability=0.03)
    healthy = start_run(engine, spec, data, inventory="inv", ops=_fleet(5), opts=_opts())
    assert healthy.status == RunState.SUCCEEDED
    spec, data = _frozen(5, to="1.2-1", probability=0.12)
    broken = start_run(
        engine, spec, data, inventory="inv", ops=_fleet(5, broken={"1.2-1"}), opts=_opts()
    )
    assert broken.status == RunState.FAILED
    _stretch(engine, healthy.run_id, start=now - timedelta(days=2), factor=2000)
    _stretch(engine, broken.run_id, start=now - timedelta(hours=3), factor=2000)
    with session_scope(engine) as s:
        for i in range(1, 6):
            host = Host(
                name=f"web{i:02d}",
                groups=["web"],
                distribution="Debian",
                distribution_version="12",
                distribution_release="bookworm",
                boot_time=now - timedelta(days=9),
                last_seen=now - timedelta(hours=1),  # gathered: its compliance can be judged
            )
            s.add(host)
            s.flush()
            if i <= 3:
                s.add(
                    PendingUpdate(
                        host_id=host.id or 0,
                        package="libssl3",
                        source="openssl",
                        installed_version="3.0.15-1~deb12u1",
                        candidate_version="3.0.17-1~deb12u2",
                        origin="Debian-Security",
                        security=True,
                        cve_ids=["CVE-2025-9230", "CVE-2025-9232"],
                        urgency="medium",
                        first_seen=now - timedelta(days=12),
                    )
                )
        if hostile:
            row = s.exec(
                select(RunHost).where(RunHost.run_id == broken.run_id, RunHost.host == "web05")
            ).one()
            row.message = HOSTILE
            s.add(row)
    return engine, healthy.run_id, broken.run_id


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, str, str]:
    """The same store on SQLite and on a real PostgreSQL server."""
    if request.param == "postgresql":
        return fill_store(request.getfixturevalue("postgres")(), hostile=True)
    return fill_store(tmp_path / "pp.db", hostile=True)


def test_the_run_report_holds_the_timeline_evidence_hosts_and_risks(store) -> None:  # type: ignore[no-untyped-def]
    engine, _, broken = store
    with session_scope(engine) as s:
        d = run_report(s, "last")
    assert d["run"]["id"] == broken and d["run"]["status"] == RunState.FAILED
    steps = [t["step"] for t in d["timeline"]]
    assert {"baseline", "patch", "health", "rollback", "verify"} <= set(steps)
    assert all(t["end_s"] >= t["start_s"] >= 0 for t in d["timeline"])
    (batch,) = d["batches"]
    assert batch["failing"] and batch["verdict"] == "unhealthy"
    assert batch["lane"] == "canary / batch 1"
    err = next(m for m in batch["metrics"] if m["key"] == "http.error_rate")
    (host,) = err["hosts"]
    assert host["after"] == [100.0] and host["baseline"] == [0.0]
    assert err["control"] == [0.0] * len(batch["controls"]) and err["threshold"]["max"] == 5.0
    lat = next(m for m in batch["metrics"] if m["key"] == "http.latency_ms")
    assert len(lat["hosts"][0]["after"]) == 10 and len(lat["control"]) == 10 * len(
        batch["controls"]
    )
    rolled = [h for h in d["hosts"] if h["status"] == HostState.ROLLED_BACK]
    assert len(rolled) == 1
    assert rolled[0]["updates"][0] == {
        "package": "demoweb",
        "before": "1.0-1",
        "after": "1.0-1",
        "planned": "1.2-1",
    }
    assert any("failure budget exceeded" in i["reason"] for i in d["incidents"])
    assert [a["action"] for a in d["audit"]][:2] == ["apply", "rollback"]
    (risk,) = d["risk"]["updates"]
    assert risk["package"] == "demoweb" and risk["hosts"] == 5 and risk["reasons"]
    assert (risk["risk"], risk["probability"]) == ("high", 0.12)


def test_the_fleet_report_counts_what_the_store_holds(store) -> None:  # type: ignore[no-untyped-def]
    engine, healthy, broken = store
    with session_scope(engine) as s:
        d = fleet_report(s)
        verdicts = s.exec(select(RunVerdict)).all()
    k = d["kpis"]
    assert (k["runs"], k["finished_runs"]) == (2, 2)
    assert k["success_rate"] == 0.5 and k["rollback_rate"] == 0.5
    assert k["hosts_patched"] == 5 and k["hosts_rolled_back"] == 1
    assert k["time_to_detect_s"]["n"] == len(verdicts)
    assert k["time_to_recover_s"]["n"] == 1 and k["time_to_recover_s"]["median"] > 0
    assert [r["id"] for r in d["runs"]] == [broken, healthy]  # newest first
    (series,) = d["compliance"]["series"]
    assert series["key"] == "web · Debian 12 (bookworm)" and series["hosts"] == 5
    assert series["outstanding_now"] == 3 and series["oldest_days_now"] == pytest.approx(
        12, abs=0.1
    )
    assert series["outstanding"][0] <= series["outstanding"][-1]
    assert series["unknown_now"] == 0
    assert (k["compliance_ratio"], k["hosts_judged"], k["hosts_compliance_unknown"]) == (0.4, 5, 0)
    cal = d["calibration"]
    assert (cal["patches"], cal["scored"], cal["failed"]) == (6, 6, 1)  # 5 healthy, 1 rolled back
    by_bin = {(b["low"], b["high"]): b for b in cal["bins"]}
    assert (by_bin[(0.02, 0.05)]["n"], by_bin[(0.02, 0.05)]["observed"]) == (5, 0.0)
    assert (by_bin[(0.10, 0.20)]["n"], by_bin[(0.10, 0.20)]["observed"]) == (1, 1.0)
    assert cal["brier"] == pytest.approx((5 * 0.03**2 + (1 - 0.12) ** 2) / 6, abs=1e-4)
    # Only the newer run after --since.
    with session_scope(engine) as s:
        recent = fleet_report(s, since=datetime.now(UTC) - timedelta(days=1))
    assert recent["kpis"]["runs"] == 1 and recent["kpis"]["success_rate"] == 0.0


def test_the_fleet_report_shows_hosts_it_cannot_judge_apart(store) -> None:  # type: ignore[no-untyped-def]
    from patchpilot.inventory import record_failure

    engine, _, _ = store
    now = datetime.now(UTC)
    with session_scope(engine) as s:
        s.add(
            Host(
                name="web06",
                groups=["web"],
                distribution="Debian",
                distribution_version="12",
                distribution_release="bookworm",
                last_seen=now - timedelta(days=2),
            )
        )
        record_failure(s, "web06", "Failed to connect to the host via ssh", unreachable=True)
        record_failure(s, "new01", "Failed to connect to the host via ssh", unreachable=True)
    with session_scope(engine) as s:
        d = fleet_report(s, now=now)
    k = d["kpis"]
    # 2 of the 5 judged hosts are compliant: the two unknown ones count in neither side.
    assert (k["compliance_ratio"], k["hosts_judged"], k["hosts_compliance_unknown"]) == (0.4, 5, 2)
    assert d["compliance"]["now"]["unknown_by_reason"] == {
        "never_gathered": 1,
        "unreachable": 1,
        "gather_failed": 0,
    }
    series = {x["key"]: x for x in d["compliance"]["series"]}
    assert series["web · Debian 12 (bookworm)"]["unknown_now"] == 1
    assert (
        series["web · Debian 12 (bookworm)"]["hosts"],
        series["(no group) · unknown"]["unknown_now"],
    ) == (6, 1)
    html = render_fleet(d)
    assert 'data-kpi="compliance_ratio" data-value="0.4">40.0%' in html
    assert 'data-kpi="compliance_hosts_unknown" data-value="2">2' in html
    assert "compliant (of 5 judged hosts)" in html
    assert "2 of 7 hosts unknown (1 never gathered, 1 unreachable)" in html
    assert "2 of 7 hosts unknown now" in html  # the note drawn on the chart


def test_a_fleet_report_with_no_judged_host_says_unknown_not_100_percent(tmp_path: Path) -> None:
    from patchpilot.inventory import record_failure

    engine = open_store(db_url(str(tmp_path / "pp.db")))
    with session_scope(engine) as s:
        empty = fleet_report(s)
    assert empty["kpis"]["compliance_ratio"] is None and empty["compliance"]["now"]["hosts"] == 0
    assert 'data-kpi="compliance_ratio" data-value="">unknown' in render_fleet(empty)
    with session_scope(engine) as s:
        record_failure(s, "new01", "Failed to connect to the host via ssh", unreachable=True)
    with session_scope(engine) as s:
        d = fleet_report(s)
    assert (d["kpis"]["compliance_ratio"], d["kpis"]["hosts_compliance_unknown"]) == (None, 1)
    html = render_fleet(d)
    assert "compliance unknown — no host could be judged; 1 of 1 hosts unknown" in html


def test_host_text_is_escaped_and_the_page_loads_nothing(store) -> None:  # type: ignore[no-untyped-def]
    engine, _, _ = store
    with session_scope(engine) as s:
        html = render_run(run_report(s, "last"))
        fleet = render_fleet(fleet_report(s))
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    for page in (html, fleet):
        assert "<script" not in page.lower()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
        assert "default-src 'none'" in page  # a CSP that loads nothing from anywhere


def test_the_cli_writes_html_and_json_with_the_same_figures(
    store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    from patchpilot.cli import main

    engine, _, broken = store
    db = engine.url.render_as_string(hide_password=False)
    out = tmp_path / "fleet.html"
    assert main(["--db", db, "report", "fleet", "--out", str(out)]) == ExitCode.OK
    assert 'data-kpi="success_rate" data-value="0.5"' in out.read_text()
    capsys.readouterr()
    assert main(["--db", db, "report", "fleet", "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["kpis"]["success_rate"] == 0.5
    assert main(["--db", db, "report", "last", "--out", str(tmp_path / "run.html")]) == 0
    assert f'data-run-id="{broken}"' in (tmp_path / "run.html").read_text()
    assert main(["--db", db, "report", "nope"]) == ExitCode.BAD_INPUT
    assert main(["--db", db, "report", "fleet", "--since", "yesterday"]) == ExitCode.BAD_INPUT


def test_write_atomic_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.html"
    write_atomic(path, "<p>x</p>")
    write_atomic(path, "<p>y</p>")
    assert path.read_text() == "<p>y</p>" and [p.name for p in path.parent.iterdir()] == ["r.html"]


# --- the page as a browser renders it ---------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(url: str, *args: str) -> str:
    """Headless Chromium with every network request refused (a proxy that does not exist)."""
    assert CHROMIUM
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
            "--window-size=1200,2600",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def dom_figures(dom: str) -> dict[str, Any]:
    """What a test reads from the DOM: the plots by kind, the KPI values, the run's state."""
    plots: dict[str, list[str]] = {}
    for m in re.finditer(r'<figure[^>]*data-plot="([^"]+)"([^>]*)>(.*?)</figure>', dom, re.S):
        if "<svg" in m.group(3):
            plots.setdefault(m.group(1), []).append(m.group(2))
    kpis = dict(re.findall(r'data-kpi="([^"]+)" data-value="([^"]*)"', dom))
    return {"plots": plots, "kpis": kpis}


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/setup installs it)")
def test_chromium_opens_both_reports_offline_with_their_plots_and_figures(
    store, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    engine, _, broken = store
    with session_scope(engine) as s:
        run = run_report(s, "last")
        fleet = fleet_report(s)
    run_html, fleet_html = tmp_path / "run.html", tmp_path / "fleet.html"
    write_atomic(run_html, render_run(run))
    write_atomic(fleet_html, render_fleet(fleet))

    dom = chromium(run_html.as_uri(), "--dump-dom")
    got = dom_figures(dom)
    assert f'data-run-id="{broken}"' in dom and 'data-status="failed"' in dom
    assert len(got["plots"]["timeline"]) == 1
    failing = [p for p in got["plots"]["evidence"] if 'data-batch="canary / batch 1"' in p]
    assert {re.search(r'data-metric="([^"]+)"', p).group(1) for p in failing} == {  # type: ignore[union-attr]
        "http.error_rate",
        "http.latency_ms",
    }
    assert 'data-failing="true"' in dom
    assert "&lt;script&gt;" in dom and "<script>alert" not in dom  # still text in the page
    chromium(run_html.as_uri(), f"--screenshot={tmp_path / 'run.png'}")
    assert (tmp_path / "run.png").stat().st_size > 10_000

    dom = chromium(fleet_html.as_uri(), "--dump-dom")
    got = dom_figures(dom)
    assert set(got["plots"]) == {"runs", "durations", "compliance", "calibration"}
    k = fleet["kpis"]
    assert float(got["kpis"]["success_rate"]) == k["success_rate"]
    assert float(got["kpis"]["rollback_rate"]) == k["rollback_rate"]
    assert int(got["kpis"]["hosts_patched"]) == k["hosts_patched"]
    assert float(got["kpis"]["time_to_detect_median_s"]) == k["time_to_detect_s"]["median"]
    assert float(got["kpis"]["time_to_recover_median_s"]) == k["time_to_recover_s"]["median"]
    chromium(fleet_html.as_uri(), f"--screenshot={tmp_path / 'fleet.png'}")
    assert (tmp_path / "fleet.png").stat().st_size > 10_000


def test_text_drawn_in_a_chart_is_escaped_and_never_math() -> None:
    from patchpilot.report import plots

    batch = {
        "controls": ["c1"],
        "metrics": [
            {
                "key": "http.latency_ms",
                "unit": "ms",
                "verdict": "healthy",
                "threshold": {"max": 10.0},
                "control": [1.0, 2.0, 3.0],
                "hosts": [
                    {
                        "host": "<b onload=x>&$x^2$",
                        "verdict": "healthy",
                        "after": [1.0, 2.0, 3.0],
                        "baseline": [1.0],
                        "baseline_median": 1.0,
                    }
                ],
            }
        ],
    }
    ((key, svg),) = plots.evidence(batch)
    assert key == "http.latency_ms" and svg.startswith("<svg")
    assert "<b onload" not in svg and "&lt;b onload=x&gt;&amp;$x^2$" in svg
