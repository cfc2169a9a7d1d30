"""The host's preflight compares the plan's from-versions with what is installed now: a host
where a package moved since the plan was made is refused before anything changes on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from patchpilot.ops import executor, workdir
from patchpilot.ops.fleetops import plan_request
from tests.unit.host_modules import load

pm = load("patchpilot_patch")
BEFORE = {"demoweb": ("1.0-2", "all", False), "libfoo": ("2.0-1", "amd64", False)}


@pytest.mark.parametrize(
    ("expect", "saved", "problems"),
    [
        ({"demoweb": "1.0-2", "libfoo": "2.0-1"}, {}, []),
        (
            {"demoweb": "1.0-1"},
            {},
            ["demoweb is 1.0-2 now, the plan was made for 1.0-1 (gather and plan again)"],
        ),
        (
            {"libnew": ""},
            {},
            [],
        ),  # not installed then, not installed now
        (
            {"libfoo": ""},
            {},
            ["libfoo is 2.0-1 now, the plan was made for not installed (gather and plan again)"],
        ),
        (
            {"gone": "3.0-1"},
            {},
            ["gone is not installed now, the plan was made for 3.0-1 (gather and plan again)"],
        ),
        # This run touched demoweb before (a resume after a crash mid-install): not compared.
        ({"demoweb": "1.0-1"}, {"demoweb": {"from": "1.0-1", "to": "1.1-1"}}, []),
    ],
)
def test_moved_since_planned(
    expect: dict[str, str], saved: dict[str, Any], problems: list[str]
) -> None:
    targets = {"demoweb": "1.1-1", "libfoo": "2.0-2", "libnew": "1.0", "gone": "3.0-2"}
    assert pm.moved_since_planned(expect, BEFORE, saved, targets) == problems


def test_the_request_carries_each_hosts_from_versions() -> None:
    data = {
        "spec": {},
        "expansion": {
            "stages": [{"name": "canary", "settings": {"timeout": "10m"}}],
            "hosts": [
                {
                    "name": "web01",
                    "stage": "canary",
                    "batch": 0,
                    "updates": [
                        {"package": "demoweb", "from": "1.0-1", "to": "1.1-1"},
                        {"package": "libnew", "from": "", "to": "1.0"},
                    ],
                }
            ],
        },
    }
    request = plan_request(data, run_id="r-1", check=True)
    assert request.expect == (("web01", (("demoweb", "1.0-1"), ("libnew", ""))),)
    assert request == plan_request(data, run_id="r-1", check=True)  # the warm start adopts it


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs a Debian controller")
def test_a_real_preflight_refuses_a_host_whose_package_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """patch.yml in check mode on this machine: bash is installed at some version; a plan
    made for another one is refused at the preflight, naming the package."""
    monkeypatch.setattr(workdir, "_STATE_DIR", tmp_path / "state")
    bash = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "bash"], capture_output=True, text=True
    ).stdout.strip()
    inventory = tmp_path / "inv.yml"
    inventory.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
    )
    base = {
        "patchpilot_install": {"localhost": [f"bash={bash}"]},
        "patchpilot_rollback_dir": str(tmp_path / "rollback"),
        "patchpilot_lock_timeout": 5,
        "patchpilot_min_free_mb": 1,
        "patchpilot_reboot": "never",
    }
    moved = executor.run_playbook(
        "patch.yml",
        inventory,
        hosts=["localhost"],
        check=True,
        extravars={**base, "patchpilot_expect": {"localhost": {"bash": "0.0-planned"}}},
    )
    outcome = moved.hosts["localhost"]
    assert outcome.status == "failed", moved
    assert f"bash is {bash} now, the plan was made for 0.0-planned" in (outcome.message or "")
    same = executor.run_playbook(
        "patch.yml",
        inventory,
        hosts=["localhost"],
        check=True,
        extravars={**base, "patchpilot_expect": {"localhost": {"bash": bash}}},
    )
    assert same.hosts["localhost"].status == "ok", same
    assert not os.path.exists(tmp_path / "rollback")  # check mode wrote nothing
