"""Normalising a host's gather results and writing them to the store (real SQLite files)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from patchpilot.cli import main
from patchpilot.errors import BadInputError, ExitCode
from patchpilot.inventory import ingest_host, normalize_host, record_failure
from patchpilot.settings import db_url
from patchpilot.store.db import open_store, session_scope
from patchpilot.store.models import Host, InstalledPackage, PendingUpdate, Service
from patchpilot.store.queries import (
    ComplianceStatus,
    UnknownReason,
    compliance,
    list_hosts,
    pending_updates,
)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "lab_host_results.json"


@pytest.fixture
def results() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    return open_store(db_url(str(tmp_path / "pp.db")))


def test_normalize_real_lab_results(results: dict[str, Any]) -> None:
    facts = normalize_host("web01", results, address="10.213.0.11", groups=["web"])
    assert facts.distribution == "Debian" and facts.distribution_release == "bookworm"
    assert facts.os_family == "Debian" and facts.package_manager == "apt"
    assert facts.kernel and facts.architecture == "x86_64"
    assert facts.boot_id and facts.boot_time is not None
    names = {p["name"] for p in facts.packages}
    assert {"openssh-server", "python3-apt", "systemd", "apt"} <= names
    assert all(p["version"] for p in facts.packages)
    assert any(s["name"] == "ssh.service" and s["state"] == "running" for s in facts.services)
    assert not any(s["enabled"] == "not-found" for s in facts.services)
    by_name = {u["package"]: u for u in facts.updates}
    ssl = by_name["libssl3"]
    assert ssl["security"] and ssl["cve_ids"] and all(c.startswith("CVE-") for c in ssl["cve_ids"])
    assert ssl["installed_version"] != ssl["candidate_version"]
    assert ssl["urgency"] in {"low", "medium", "high", "emergency", "critical"}
    assert isinstance(ssl["changelog_date"], datetime)


def test_rpm_versions_are_joined_with_epoch_and_release(results: dict[str, Any]) -> None:
    r = copy.deepcopy(results)
    r["ansible.builtin.package_facts"]["ansible_facts"]["packages"] = {
        "openssl-libs": [
            {
                "name": "openssl-libs",
                "version": "3.0.1",
                "release": "47.el9_1",
                "epoch": 1,
                "arch": "x86_64",
                "source": "rpm",
            }
        ],
    }
    facts = normalize_host("rh01", r)
    assert facts.packages == [
        {"name": "openssl-libs", "version": "1:3.0.1-47.el9_1", "arch": "x86_64", "source": "rpm"}
    ]


@pytest.mark.parametrize(
    "field,value", [("package", "foo;rm -rf /"), ("package", "-x"), ("candidate", "1.0 $(reboot)")]
)
def test_hostile_names_from_a_host_are_refused(
    results: dict[str, Any], field: str, value: str
) -> None:
    r = copy.deepcopy(results)
    r["patchpilot_pending"]["updates"][0][field] = value
    with pytest.raises(BadInputError):
        normalize_host("web01", r)


def test_ingest_writes_everything_and_replaces_on_regather(engine, results) -> None:  # type: ignore[no-untyped-def]
    facts = normalize_host("web01", results, address="10.213.0.11", groups=["web"])
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    with session_scope(engine) as s:
        ingest_host(s, facts, now=t0)
    with session_scope(engine) as s:
        host = s.exec(select(Host)).one()
        assert host.reachable and host.groups == ["web"] and host.address == "10.213.0.11"
        assert len(s.exec(select(InstalledPackage)).all()) == len(facts.packages)
        assert len(s.exec(select(Service)).all()) == len(facts.services)
        assert len(s.exec(select(PendingUpdate)).all()) == len(facts.updates)

    # A second gather a week later in which libssl3 was patched: it is gone, the others keep
    # the date they were first seen.
    later = copy.deepcopy(facts)
    later.updates = [u for u in later.updates if u["package"] != "libssl3"]
    with session_scope(engine) as s:
        ingest_host(s, later, now=t0 + timedelta(days=7))
    with session_scope(engine) as s:
        ups = s.exec(select(PendingUpdate)).all()
        assert "libssl3" not in {u.package for u in ups}
        assert {u.first_seen.replace(tzinfo=UTC) for u in ups} == {t0}
        assert len(s.exec(select(Host)).all()) == 1


def test_unreachable_host_keeps_its_facts_until_it_answers_again(engine, results) -> None:  # type: ignore[no-untyped-def]
    facts = normalize_host("db01", results, groups=["db"])
    with session_scope(engine) as s:
        ingest_host(s, facts)
    with session_scope(engine) as s:
        record_failure(s, "db01", "Failed to connect to the host via ssh", unreachable=True)
    with session_scope(engine) as s:
        host = s.exec(select(Host)).one()
        assert not host.reachable and "ssh" in (host.last_error or "")
        assert host.distribution == "Debian"
        assert len(pending_updates(session=s, host="db01")) == len(facts.updates)
    with session_scope(engine) as s:
        ingest_host(s, facts)
    with session_scope(engine) as s:
        host = s.exec(select(Host)).one()
        assert host.reachable and host.last_error is None


def test_queries_count_pending_and_security_and_compliance(engine, results) -> None:  # type: ignore[no-untyped-def]
    facts = normalize_host("web01", results)
    clean = copy.deepcopy(facts)
    clean.name, clean.updates = "web02", []
    with session_scope(engine) as s:
        ingest_host(s, facts)
        ingest_host(s, clean)
    with session_scope(engine) as s:
        rows = {r.name: r for r in list_hosts(session=s)}
        assert rows["web01"].pending == len(facts.updates)
        assert rows["web01"].security == sum(u["security"] for u in facts.updates)
        assert rows["web02"].pending == 0
        table, pct = compliance(session=s)
    assert pct == 50.0
    by_host = {r.host: r for r in table}
    assert not by_host["web01"].compliant and by_host["web01"].oldest_days is not None
    assert by_host["web02"].compliant and by_host["web02"].oldest_days is None


def test_read_commands_json(tmp_path: Path, results, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "pp.db"
    engine = open_store(db_url(str(db)))
    with session_scope(engine) as s:
        ingest_host(s, normalize_host("web01", results, groups=["web"]))
    capsys.readouterr()
    assert main(["--db", str(db), "inventory", "list", "--json"]) == ExitCode.OK
    hosts = json.loads(capsys.readouterr().out)
    assert hosts[0]["name"] == "web01" and hosts[0]["security"] > 0
    assert (
        main(["--db", str(db), "patches", "list", "--security", "--package", "libssl*", "--json"])
        == ExitCode.OK
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["package"] for r in rows] == ["libssl3"] and rows[0]["cve_ids"]
    assert main(["--db", str(db), "compliance", "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["compliance_percent"] == 0.0
    assert main(["--db", str(db), "inventory", "show", "web01", "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["host"]["name"] == "web01"
    assert main(["--db", str(db), "inventory", "show", "nosuch"]) == ExitCode.BAD_INPUT
    assert "no host named 'nosuch'" in capsys.readouterr().err


def test_unreadable_database_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 1000)
    assert main(["--db", str(bad), "inventory", "list"]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "cannot open the store" in err and "Traceback" not in err
    assert bad.read_bytes() == b"garbage" * 1000


# --- compliance: hosts the store cannot judge are unknown, never compliant --------------------

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
# What the table's status column starts with, per host of _fleet_of_four.
STATUS_CELL = {"db01": "unknown (", "new01": "unknown (", "web01": "NO", "web02": "compliant"}


def _fleet_of_four(engine, results) -> None:  # type: ignore[no-untyped-def]
    """web01 gathered with security updates pending; web02 gathered clean; new01 never
    gathered (unreachable at the one gather it was in); db01 gathered clean at T0, then
    unreachable: the two last would look compliant if their missing facts counted as none."""
    facts = normalize_host("web01", results, groups=["web"])
    clean = copy.deepcopy(facts)
    clean.updates = []
    with session_scope(engine) as s:
        ingest_host(s, facts, now=T0)
        ingest_host(s, dataclasses.replace(clean, name="web02"), now=T0)
        ingest_host(s, dataclasses.replace(clean, name="db01", groups=["db"]), now=T0)
    with session_scope(engine) as s:
        record_failure(s, "new01", "Failed to connect to the host via ssh", unreachable=True)
        record_failure(s, "db01", "Failed to connect to the host via ssh", unreachable=True)


def test_never_gathered_and_unreachable_hosts_are_unknown_not_compliant(engine, results) -> None:  # type: ignore[no-untyped-def]
    _fleet_of_four(engine, results)
    with session_scope(engine) as s:
        fleet = compliance(session=s, now=T0 + timedelta(days=3))
    by_host = {r.host: r for r in fleet.rows}
    assert {h: r.status for h, r in by_host.items()} == {
        "db01": ComplianceStatus.UNKNOWN,
        "new01": ComplianceStatus.UNKNOWN,
        "web01": ComplianceStatus.NON_COMPLIANT,
        "web02": ComplianceStatus.COMPLIANT,
    }
    compliant = {h: r.compliant for h, r in by_host.items()}
    assert compliant == {"db01": None, "new01": None, "web01": False, "web02": True}
    assert by_host["new01"].unknown == UnknownReason.NEVER_GATHERED
    assert by_host["new01"].reason == "never gathered: unreachable"
    # Gathered while reachable, unreachable since: its data is stale, and says from when.
    assert by_host["db01"].unknown == UnknownReason.UNREACHABLE
    assert by_host["db01"].reason == "unreachable; data from 2026-11-01 12:00 UTC"
    assert by_host["web01"].reason is None and by_host["web02"].unknown is None
    # The share is over the two judged hosts, and the two others are counted apart.
    assert fleet.percent == 50.0
    assert (fleet.judged, fleet.unknown) == (2, 2)
    assert fleet.unknown_by_reason() == {
        UnknownReason.NEVER_GATHERED: 1,
        UnknownReason.UNREACHABLE: 1,
        UnknownReason.GATHER_FAILED: 0,
    }


def test_a_host_whose_last_gather_failed_is_unknown_until_one_succeeds(engine, results) -> None:  # type: ignore[no-untyped-def]
    clean = normalize_host("app01", results)
    clean.updates = []
    with session_scope(engine) as s:
        ingest_host(s, clean, now=T0)
    with session_scope(engine) as s:
        record_failure(s, "app01", "apt-get update failed", unreachable=False)
    with session_scope(engine) as s:
        (row,) = compliance(session=s).rows
    assert (row.status, row.unknown) == (ComplianceStatus.UNKNOWN, UnknownReason.GATHER_FAILED)
    assert row.reason == "last gather failed; data from 2026-11-01 12:00 UTC"
    with session_scope(engine) as s:
        ingest_host(s, clean)
    with session_scope(engine) as s:
        fleet = compliance(session=s)
    assert fleet.rows[0].status == ComplianceStatus.COMPLIANT and fleet.percent == 100.0


def test_compliance_cli_reports_unknown_hosts_in_table_json_and_csv(
    tmp_path: Path,
    results,  # type: ignore[no-untyped-def]
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "pp.db"
    _fleet_of_four(open_store(db_url(str(db))), results)
    capsys.readouterr()

    assert main(["--db", str(db), "compliance"]) == ExitCode.OK
    out, err = capsys.readouterr()
    assert (
        "fleet compliance: 50.0% of 2 judged hosts have no missing security update; "
        "2 hosts unknown (1 never gathered, 1 unreachable)"
    ) in err
    # The status column, on the first line of each host's row (a long reason may wrap).
    for host, status in STATUS_CELL.items():
        line = next(ln for ln in out.splitlines() if f" {host} " in ln)
        assert status in line, (host, line)

    assert main(["--db", str(db), "compliance", "--json"]) == ExitCode.OK
    report = json.loads(capsys.readouterr().out)
    assert (report["compliance_percent"], report["judged"], report["unknown"]) == (50.0, 2, 2)
    assert report["unknown_by_reason"] == {
        "never_gathered": 1,
        "unreachable": 1,
        "gather_failed": 0,
    }
    hosts = {h["host"]: h for h in report["hosts"]}
    assert {h: (r["status"], r["compliant"]) for h, r in hosts.items()} == {
        "db01": ("unknown", None),
        "new01": ("unknown", None),
        "web01": ("non-compliant", False),
        "web02": ("compliant", True),
    }
    assert hosts["new01"]["reason"] == "never gathered: unreachable"
    assert hosts["db01"]["reason"] == "unreachable; data from 2026-11-01 12:00 UTC"

    assert main(["--db", str(db), "compliance", "--csv"]) == ExitCode.OK
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    per_host = {r["host"]: r for r in rows}
    assert set(per_host) == {"db01", "new01", "web01", "web02"}  # nobody left out
    for host in ("db01", "new01"):
        assert (per_host[host]["status"], per_host[host]["compliant"]) == ("unknown", "")
        assert per_host[host]["reason"] == hosts[host]["reason"]
    assert {r["status"] for r in rows if r["host"] == "web01"} == {"non-compliant"}
    assert (per_host["web02"]["status"], per_host["web02"]["compliant"]) == ("compliant", "yes")


def test_an_empty_store_has_unknown_compliance_not_100_percent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "pp.db"
    with session_scope(open_store(db_url(str(db)))) as s:
        fleet = compliance(session=s)
    assert (fleet.rows, fleet.percent, fleet.judged, fleet.unknown) == ([], None, 0, 0)
    capsys.readouterr()
    assert main(["--db", str(db), "compliance"]) == ExitCode.OK
    err = capsys.readouterr().err
    assert "fleet compliance: unknown — no host could be judged" in err and "%" not in err
    assert main(["--db", str(db), "compliance", "--json"]) == ExitCode.OK
    report = json.loads(capsys.readouterr().out)
    assert (report["compliance_percent"], report["judged"], report["unknown"]) == (None, 0, 0)


def test_with_no_judged_host_the_summary_says_why_each_is_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "pp.db"
    with session_scope(open_store(db_url(str(db)))) as s:
        record_failure(s, "new01", "Failed to connect to the host via ssh", unreachable=True)
        record_failure(s, "new02", "Failed to connect to the host via ssh", unreachable=True)
        s.add(Host(name="old01", last_seen=T0, reachable=False, last_error="timed out"))
    capsys.readouterr()
    assert main(["--db", str(db), "compliance"]) == ExitCode.OK
    assert (
        "fleet compliance: unknown — no host could be judged (2 never gathered, 1 unreachable)"
        in capsys.readouterr().err
    )
