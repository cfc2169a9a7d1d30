"""`plan`, `apply`, `approve`, `abort`, `rollback` and `runs`: bad input is one line, exit 2,
and nothing is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchpilot.cli import main
from patchpilot.errors import ExitCode
from patchpilot.planning import is_frozen_file

PLAN = "name: p\nstages:\n  - name: all\n    hosts: rest\n"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    inv = tmp_path / "inv.yml"
    inv.write_text("all:\n  hosts:\n    web01:\n")
    plan = tmp_path / "p.yml"
    plan.write_text(PLAN)
    return {"inv": inv, "plan": plan, "db": tmp_path / "pp.db"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["apply"], "apply needs a plan and an inventory"),
        (["apply", "{plan}", "-i", "{inv}", "--resume", "r-x"], "not both"),
        (["apply", "--resume", "r-nope"], "no run 'r-nope'"),
        (["approve", "r-nope"], "no run 'r-nope'"),
        (["abort", "r-nope"], "no run 'r-nope'"),
        (["rollback", "r-nope"], "no run 'r-nope'"),
        (["runs", "show", "r-nope"], "no run 'r-nope'"),
        (["runs", "show", "last"], "no runs yet"),
        (["plan", "{missing}", "-i", "{inv}"], "cannot read"),
        (["plan", "{plan}", "-i", "{inv}"], "none of the 1 targeted hosts is in the store"),
        (["apply", "{plan}", "-i", "{inv}"], "none of the 1 targeted hosts is in the store"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    args = [
        a.format(plan=files["plan"], inv=files["inv"], missing=tmp_path / "nope.yml") for a in argv
    ]
    capsys.readouterr()
    assert main(["--db", str(files["db"]), *args]) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.count("error:") == 1


def test_frozen_plans_are_told_from_plan_files(tmp_path: Path) -> None:
    frozen = tmp_path / "f.json"
    frozen.write_text('  {"format": "patchpilot-frozen-plan/1"}')
    plan = tmp_path / "p.yml"
    plan.write_text(PLAN)
    assert is_frozen_file(frozen) and not is_frozen_file(plan)
    assert not is_frozen_file(tmp_path / "missing")
