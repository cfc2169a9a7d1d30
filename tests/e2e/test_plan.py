"""`patchpilot plan` against the real lab: waves, a frozen plan, and hostile plans refused
before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.helpers import LabFleet, pp

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gathered(lab: LabFleet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("plan") / "pp.db"
    pp("--db", str(db), "inventory", "gather", "-i", str(lab.inventory), "--no-refresh")
    return db


def test_plan_prints_the_waves_and_writes_a_frozen_plan(
    lab: LabFleet, gathered: Path, tmp_path: Path
) -> None:
    out = tmp_path / "canary.json"
    proc = pp(
        "--db",
        str(gathered),
        "plan",
        str(ROOT / "plans" / "canary.yml"),
        "-i",
        str(lab.inventory),
        "--out",
        str(out),
    )
    text = proc.stdout
    for word in ("validation", "canary", "rest", "failure budget", "rollback sequence"):
        assert word in text
    assert "window: none (runs whenever started)" in text  # canary.yml sets no window
    assert "reboot: if_needed; " in text
    frozen = json.loads(out.read_text())
    assert frozen["format"] == "patchpilot-frozen-plan/1" and len(frozen["sha256"]) == 64
    planned = {h["name"] for h in frozen["expansion"]["hosts"]}
    assert planned and planned <= set(lab.hosts)
    # Every update is pinned to the exact version the host was offered.
    pending = json.loads(pp("--db", str(gathered), "patches", "list", "--json").stdout)
    offered = {(u["host"], u["package"]): u["candidate_version"] for u in pending}
    for h in frozen["expansion"]["hosts"]:
        for u in h["updates"]:
            assert offered[(h["name"], u["package"])] == u["to"]
    # The canary covers both groups of the lab.
    canary = [h for h in frozen["expansion"]["hosts"] if h["stage"] == "canary"]
    assert {g for h in canary for g in h["groups"]} >= {"web", "db"}
    # A frozen plan edited by hand is refused.
    frozen["expansion"]["hosts"][0]["updates"][0]["to"] = "9.9-9"
    out.write_text(json.dumps(frozen))
    bad = pp(
        "--db", str(gathered), "apply", str(out), "-i", str(lab.inventory), "--yes", check=False
    )
    assert bad.returncode == 2 and "modified after it was written" in bad.stderr


HOSTILE = {
    "python-object": (
        "name: x\nstages:\n  - name: all\n    hosts: rest\n"
        "evil: !!python/object/apply:os.system ['touch /tmp/pp-pwned']\n",
        "unsupported YAML tag",
    ),
    "shell-in-package": (
        "name: x\nselect:\n  include: ['foo;rm -rf /']\nstages:\n  - name: all\n    hosts: rest\n",
        "select.include[0]",
    ),
    "dash-package": (
        "name: x\nselect:\n  include: ['--force-yes']\nstages:\n  - name: all\n    hosts: rest\n",
        "select.include[0]",
    ),
    "jinja": (
        "name: x\nstages:\n  - name: all\n    hosts: rest\n    health:\n"
        "      - check: command\n"
        "        params: {cmd: \"{{ lookup('pipe', 'touch /tmp/pp-pwned') }}\"}\n",
        "template expressions are not allowed",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_plans_are_refused_before_anything_runs(
    lab: LabFleet, gathered: Path, tmp_path: Path, name: str
) -> None:
    text, message = HOSTILE[name]
    plan = tmp_path / f"{name}.yml"
    plan.write_text(text)
    Path("/tmp/pp-pwned").unlink(missing_ok=True)
    runs_before = pp("--db", str(gathered), "runs", "list", "--json").stdout
    for cmd in ("plan", "apply"):
        proc = (
            pp(
                "--db",
                str(gathered),
                cmd,
                str(plan),
                "-i",
                str(lab.inventory),
                "--yes",
                check=False,
            )
            if cmd == "apply"
            else pp("--db", str(gathered), cmd, str(plan), "-i", str(lab.inventory), check=False)
        )
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and f"{plan}:" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not Path("/tmp/pp-pwned").exists()
    assert pp("--db", str(gathered), "runs", "list", "--json").stdout == runs_before
