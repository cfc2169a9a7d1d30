"""What ships with patchpilot: the playbooks, the ready plans, a plan given by name, and a
wheel that holds every package (resources, pyproject.toml)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import patchpilot
from patchpilot.errors import BadInputError
from patchpilot.resources import playbook, playbooks_dir, resolve_plan, shipped_plans

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_plans_and_playbooks_are_found() -> None:
    plans = shipped_plans()
    assert {"canary", "emergency", "lab-demo", "security-only"} <= set(plans)
    assert all(p.is_file() and p.suffix == ".yml" for p in plans.values())
    assert playbook("patch.yml").is_file()
    assert (playbooks_dir() / "library" / "patchpilot_patch.py").is_file()
    with pytest.raises(patchpilot.errors.PatchpilotError, match="missing"):
        playbook("nope.yml")


def test_a_plan_is_a_shipped_name_or_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_plan("canary") == shipped_plans()["canary"]
    mine = tmp_path / "mine.yml"
    mine.write_text("name: mine\n")
    assert resolve_plan("mine.yml") == Path("mine.yml")
    assert resolve_plan(str(mine)) == mine
    # a file of the same name in the working directory wins over the shipped plan
    (tmp_path / "canary").write_text("name: local\n")
    assert resolve_plan("canary") == Path("canary")


def test_an_unknown_plan_says_what_ships(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInputError) as info:
        resolve_plan("canery")
    assert "no shipped plan" in info.value.message
    assert info.value.hint is not None and "canary" in info.value.hint
    # a path to a missing file is a path, never a name; the hint names the shipped plan
    with pytest.raises(BadInputError) as info:
        resolve_plan("plans/canary.yml")
    assert "no such file" in info.value.message
    assert info.value.hint is not None and "give just `canary`" in info.value.hint


def test_every_package_and_shipped_folder_is_in_the_wheel() -> None:
    """A subpackage missing from pyproject's list would be missing from the installed
    patchpilot (and only there)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "patchpilot").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    data_only = {"patchpilot.risk.data", "patchpilot.report.templates"}
    assert on_disk - data_only <= listed
    fleet = "patchpilot.collections.ansible_collections.patchpilot.fleet"
    assert config["package-dir"] == {
        "patchpilot.playbooks": "playbooks",
        "patchpilot.plans": "plans",
        fleet: "playbooks/collection",
        f"{fleet}.plugins.modules": "playbooks/library",
        f"{fleet}.plugins.lookup": "playbooks/lookup_plugins",
    }
    data = config["package-data"]
    assert data[fleet] == ["meta/runtime.yml"]
    assert "*.yml" in data["patchpilot.plans"]
    assert {"*.yml", "library/*.py", "lookup_plugins/*.py"} <= set(data["patchpilot.playbooks"])
    assert {p.parent.name for p in (ROOT / "playbooks").rglob("*.py")} <= {
        "library",
        "lookup_plugins",
    }
