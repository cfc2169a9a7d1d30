"""What `patchpilot plan` shows a reviewer: waves, versions and risk, reboots, the budget,
the window and the rollback sequence."""

from __future__ import annotations

from dataclasses import replace

import pytest
from rich.console import Console

from patchpilot import console as console_module
from patchpilot.cli import render as apply_cli
from patchpilot.plan.expand import expand_plan
from patchpilot.plan.load import parse_plan
from tests.unit.test_plan_frozen import HOSTS, NOW, SCORES, UPDATES

PLAN = """
name: view
stages:
  - {name: canary, hosts: 1}
  - {name: rest, hosts: rest, parallel: 5}
failure_budget: {hosts: 1}
"""


def _render(monkeypatch: pytest.MonkeyPatch, expansion: dict) -> str:  # type: ignore[type-arg]
    recorder = Console(record=True, width=200, highlight=False)
    monkeypatch.setattr(console_module, "console", recorder)
    monkeypatch.setattr(apply_cli, "console", recorder)
    apply_cli.render_plan(expansion, window="none (runs whenever started)", model="prior v1")
    return recorder.export_text()


def test_the_plan_view_shows_waves_versions_reboots_budget_and_rollback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    updates = dict(UPDATES)
    # One host's kernel update needs a reboot.
    updates["db01"] = [*UPDATES["db01"][:1], replace(UPDATES["db01"][1], reboot_needed=True)]
    expansion = expand_plan(parse_plan(PLAN), HOSTS, updates, SCORES, now=NOW).to_dict()
    text = _render(monkeypatch, expansion)
    for stage in ("canary", "rest"):
        assert stage in text
    assert "libssl3 3.0.11-1~deb12u1 -> 3.0.11-1~deb12u2  risk low 10.0%" in text
    assert "curl 7.88.1-10 -> 7.88.1-10+deb12u5  risk unscored" in text
    (db_line,) = [ln for ln in text.splitlines() if "db01" in ln and "debian" in ln]
    assert "reboots" in db_line
    assert sum("reboots" in ln for ln in text.splitlines() if "debian" in ln) == 1
    assert "reboot: if_needed; 1 of 13 host(s) will reboot after their patch" in text
    assert "failure budget: 1 failed host(s) allowed (1 hosts)" in text
    assert "skipped host down:" in text
    rollback = text.split("rollback sequence (reverse deploy order):")[1].splitlines()[1:]
    assert rollback.pop() == "rollback artifacts: 26 source not reported (gather again)"
    assert len(rollback) == 13
    assert all("libssl3 -> 3.0.11-1~deb12u1" in ln for ln in rollback)
    # Reverse deploy order: the canary is deployed first, so it is rolled back last.
    (canary,) = expansion["stages"][0]["batches"][0]
    assert rollback[-1].strip().startswith(f"{canary} (canary batch 1)")
