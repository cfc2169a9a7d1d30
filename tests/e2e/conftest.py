"""The e2e fixture: one real lab fleet for the whole session, torn down at the end.

The lab is a machine-wide resource (bridge, namespaces): these tests take it over. In CI
(CI=true) a machine that cannot run the lab fails the suite instead of skipping it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import yaml

from patchpilot.lab.system import missing_tools
from tests.e2e.helpers import LabFleet, files_holding, pp, secret_search_roots

LAB_GROUPS = "web=6,db=2"  # 8 hosts


def _can_run_lab() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    missing = missing_tools()
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return None


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabFleet]:
    reason = _can_run_lab()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"e2e tests must run in CI, but {reason}")
        pytest.skip(reason)
    inventory = tmp_path_factory.mktemp("lab") / "lab.yml"
    pp("lab", "down")  # whatever an earlier run left behind
    pp(
        "lab",
        "up",
        "--groups",
        LAB_GROUPS,
        "--with-debian-updates",
        "-i",
        str(inventory),
        timeout=1800,
    )
    data = yaml.safe_load(inventory.read_text())
    groups = {g: list(v["hosts"]) for g, v in data["all"]["children"].items()}
    hosts = {
        name: vars_["ansible_host"]
        for g in data["all"]["children"].values()
        for name, vars_ in g["hosts"].items()
    }
    fleet = LabFleet(inventory, hosts, groups)
    try:
        yield fleet
    finally:
        pp("lab", "down", check=False)
        # After the whole suite: no password a test gave patchpilot is in any store, log or
        # file left under the state and artifact folders.
        if fleet.secrets:
            roots = secret_search_roots(tmp_path_factory.getbasetemp())
            found, _checked = files_holding(fleet.secrets, roots, fleet.secret_files)
            assert not found, f"secrets left after the e2e suite in: {found}"
