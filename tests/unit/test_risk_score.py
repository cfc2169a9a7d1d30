"""Scoring pending updates from a real store, fleet learning, and the `risk` commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from patchpilot.cli import main
from patchpilot.errors import ExitCode
from patchpilot.inventory import ingest_host, normalize_host
from patchpilot.risk.score import Thresholds, list_models, record_outcome, score_pending
from patchpilot.settings import db_url
from patchpilot.store.db import open_store, session_scope
from patchpilot.store.models import Host, PendingUpdate

FIXTURE = Path(__file__).parents[1] / "fixtures" / "lab_host_results.json"
TH = Thresholds()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A store with one real lab host's gather results plus the demo service's update."""
    path = tmp_path / "pp.db"
    engine = open_store(db_url(str(path)))
    results: dict[str, Any] = json.loads(FIXTURE.read_text())
    with session_scope(engine) as s:
        ingest_host(s, normalize_host("web01", results, groups=["web"]))
        ingest_host(s, normalize_host("web02", results, groups=["web"]))
        for name in ("web01", "web02"):
            host = s.exec(select(Host).where(Host.name == name)).one()
            s.add(
                PendingUpdate(
                    host_id=host.id,
                    package="demoweb",
                    installed_version="1.0-1",
                    candidate_version="1.2-1",
                    source="demoweb",
                    changelog_entries=2,
                    upstream_changed=True,
                )
            )
    return path


def _scores(path: Path) -> dict[tuple[str, str], float]:
    engine = open_store(db_url(str(path)))
    with session_scope(engine) as s:
        scored, _ = score_pending(s, thresholds=TH)
    return {(u.host, u.package): u.score.probability for u in scored}


def test_every_pending_update_gets_a_probability_level_and_reasons(db: Path) -> None:
    engine = open_store(db_url(str(db)))
    with session_scope(engine) as s:
        scored, version = score_pending(s, thresholds=TH, host="web01")
    assert version == "prior"
    assert {u.host for u in scored} == {"web01"}
    assert {u.package for u in scored} >= {"libssl3", "tzdata", "demoweb"}
    for u in scored:
        assert 0 < u.score.low <= u.score.probability <= u.score.high < 1
        assert u.score.level == TH.level(u.score.probability)
        assert u.score.reasons and all(isinstance(r, str) and r for r in u.score.reasons)
    by_pkg = {u.package: u.score for u in scored}
    # python3.11's source had regressions in Debian's history; its reasons say so in numbers.
    assert any("earlier Debian updates of python" in r for r in by_pkg["python3.11"].reasons)


def test_fleet_learning_ranks_a_rolled_back_package_higher(db: Path) -> None:
    before = _scores(db)
    engine = open_store(db_url(str(db)))
    with session_scope(engine) as s:
        host = s.exec(select(Host).where(Host.name == "web01")).one()
        updates = s.exec(select(PendingUpdate).where(PendingUpdate.host_id == host.id)).all()
        when = datetime.now(UTC) - timedelta(minutes=5)
        for u in updates:
            outcome = "rolled_back" if u.package == "demoweb" else "healthy"
            record_outcome(s, run_id="r1", host="web01", update=u, outcome=outcome, when=when)
    assert main(["--db", str(db), "risk", "train"]) == ExitCode.OK
    after = _scores(db)
    key = ("web02", "demoweb")
    assert after[key] > 2 * before[key]
    web02 = [k for k in before if k[0] == "web02"]
    rank_before = sorted(web02, key=lambda k: -before[k]).index(key)
    rank_after = sorted(web02, key=lambda k: -after[k]).index(key)
    assert rank_after < rank_before and rank_after == 0
    with session_scope(engine) as s:
        scored, version = score_pending(s, thresholds=TH, host="web02")
        models = list_models(s)
    assert version == "1"
    demoweb = next(u for u in scored if u.package == "demoweb")
    assert any("failed on this fleet" in r for r in demoweb.score.reasons)
    assert [m.version for m in models] == ["prior", "1"] and models[1].active
    assert models[1].fleet_rows == len(updates)


def test_risk_commands(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["--db", str(db), "risk", "score", "--host", "web01", "--json"]) == ExitCode.OK
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "prior" and out["updates"]
    u = out["updates"][0]
    assert {"probability", "interval", "level", "strategy", "reasons"} <= set(u)
    assert u["strategy"] in {"fast", "canary", "manual review"}
    assert main(["--db", str(db), "risk", "models", "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)[0]["version"] == "prior"


def _evaluate(train: str, test_from: str, test_until: str, *extra: str) -> list[str]:
    return [
        *("risk", "evaluate", "--train-until", train, "--test-from", test_from),
        *("--test-until", test_until, *extra),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["risk", "score", "--host", "nosuch"], "unknown host 'nosuch'"),
        (_evaluate("2018-13-01", "2018-07-01", "2020-04-30"), "--train-until: not a date"),
        (
            _evaluate("2018-07-01", "2018-07-01", "2020-04-30", "--dsa", "/nonexistent/list"),
            "cannot read advisory list",
        ),
        (_evaluate("2030-07-01", "2030-07-01", "2031-04-30"), "no advisories in the test range"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    db: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    capsys.readouterr()
    assert main(["--db", str(db), *argv]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_risk_thresholds_come_from_settings(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATCHPILOT_RISK_MEDIUM", "0.001")
    monkeypatch.setenv("PATCHPILOT_RISK_HIGH", "0.002")
    capsys.readouterr()
    assert main(["--db", str(db), "risk", "score", "--json"]) == ExitCode.OK
    levels = {u["level"] for u in json.loads(capsys.readouterr().out)["updates"]}
    assert levels == {"high"}
    monkeypatch.setenv("PATCHPILOT_RISK_HIGH", "0.0005")
    assert main(["--db", str(db), "risk", "score"]) == ExitCode.BAD_INPUT
