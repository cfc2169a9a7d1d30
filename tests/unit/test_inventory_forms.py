"""Ansible inventories in every form Ansible accepts, read through Ansible itself.

The same small fleet is written as an INI file, a YAML file, a directory splitting it across
an INI and a YAML file, and an executable dynamic inventory script. `executor.list_inventory`
and `executor.match_hosts` run the real `ansible-inventory` / `ansible` through
ansible-runner; the calls run concurrently once per module to keep the file fast.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from patchpilot.errors import BadInputError, ExitCode
from patchpilot.ops import executor
from patchpilot.ops.executor import InventoryHost

FORMS = ("ini", "yaml", "directory", "script")
PATTERNS = {
    "web": ["web01", "web02"],
    "prod:!db": ["web01", "web02"],
    "db01": ["db01"],
    "nosuch": [],
}
EXPECTED_HOSTS = [
    InventoryHost("db01", "192.0.2.21", ("db", "prod")),
    InventoryHost("web01", "192.0.2.11", ("prod", "web")),
    InventoryHost("web02", "192.0.2.12", ("prod", "web")),
]

INI = """\
[web]
web01 ansible_host=192.0.2.11
web02 ansible_host=192.0.2.12

[db]
db01 ansible_host=192.0.2.21

[prod:children]
web
db
"""

YAML = """\
all:
  children:
    prod:
      children:
        web:
          hosts:
            web01:
              ansible_host: 192.0.2.11
            web02:
              ansible_host: 192.0.2.12
        db:
          hosts:
            db01:
              ansible_host: 192.0.2.21
"""

# The directory form: web hosts in INI, db hosts and the parent group in YAML.
DIR_WEB_INI = """\
[web]
web01 ansible_host=192.0.2.11
web02 ansible_host=192.0.2.12
"""
DIR_DB_YAML = """\
all:
  children:
    db:
      hosts:
        db01:
          ansible_host: 192.0.2.21
    prod:
      children:
        web: {}
        db: {}
"""

SCRIPT_DATA: dict[str, Any] = {
    "_meta": {
        "hostvars": {
            "web01": {"ansible_host": "192.0.2.11"},
            "web02": {"ansible_host": "192.0.2.12"},
            "db01": {"ansible_host": "192.0.2.21"},
        }
    },
    "all": {"children": ["prod", "ungrouped"]},
    "prod": {"children": ["web", "db"]},
    "web": {"hosts": ["web01", "web02"]},
    "db": {"hosts": ["db01"]},
}

BROKEN_YAML = "all: [1, 2\n"


def _script() -> str:
    return textwrap.dedent(
        f"""\
        #!{sys.executable}
        import json
        import sys

        DATA = {json.dumps(SCRIPT_DATA)}

        if len(sys.argv) > 1 and sys.argv[1] == "--list":
            print(json.dumps(DATA))
        elif len(sys.argv) > 2 and sys.argv[1] == "--host":
            print("{{}}")
        else:
            sys.exit("usage: fleet.py --list | --host HOST")
        """
    )


def _write_forms(root: Path) -> dict[str, Path]:
    ini = root / "fleet.ini"
    ini.write_text(INI)
    yaml = root / "fleet.yml"
    yaml.write_text(YAML)
    directory = root / "fleet.d"
    directory.mkdir()
    # No extension: Ansible before 2.19 skips *.ini files in an inventory directory.
    (directory / "web").write_text(DIR_WEB_INI)
    (directory / "db.yml").write_text(DIR_DB_YAML)
    script = root / "fleet.py"
    script.write_text(_script())
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return {"ini": ini, "yaml": yaml, "directory": directory, "script": script}


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _write_forms(tmp_path_factory.mktemp("inventories"))


@pytest.fixture(scope="module")
def answers(forms: dict[str, Path]) -> dict[tuple[str, str | None], Any]:
    """Every Ansible call of the form tests, run concurrently: (form, None) holds the
    list_inventory result, (form, pattern) the match_hosts one (or the exception)."""
    jobs: dict[tuple[str, str | None], Any] = {}

    def call(form: str, pattern: str | None) -> Any:
        try:
            if pattern is None:
                return executor.list_inventory(forms[form])
            return executor.match_hosts(forms[form], pattern)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=4) as pool:
        for form in FORMS:
            for pattern in (None, *PATTERNS):
                jobs[(form, pattern)] = pool.submit(call, form, pattern)
        return {key: future.result() for key, future in jobs.items()}


def _ok(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


def test_script_inventory_runs_on_its_own(forms: dict[str, Path]) -> None:
    out = subprocess.run(
        [str(forms["script"]), "--list"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == SCRIPT_DATA
    host = subprocess.run(
        [str(forms["script"]), "--host", "web01"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(host) == {}


@pytest.mark.parametrize("form", FORMS)
def test_list_inventory_every_form(form: str, answers: dict[tuple[str, str | None], Any]) -> None:
    hosts = _ok(answers[(form, None)])
    assert hosts == EXPECTED_HOSTS
    for host in hosts:
        assert "prod" in host.groups
        assert "all" not in host.groups and "ungrouped" not in host.groups


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("form", FORMS)
def test_match_hosts_every_form(
    form: str, pattern: str, answers: dict[tuple[str, str | None], Any]
) -> None:
    hosts = _ok(answers[(form, pattern)])
    assert sorted(hosts) == PATTERNS[pattern]
    assert len(hosts) == len(set(hosts))


# ---- errors -----------------------------------------------------------------------------
def test_missing_inventory_is_bad_input(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-inventory.ini"
    for call in (
        lambda: executor.list_inventory(missing),
        lambda: executor.match_hosts(missing, "all"),
        lambda: executor.check_inventory_path(missing),
    ):
        with pytest.raises(BadInputError) as info:
            call()
        assert info.value.exit_code == ExitCode.BAD_INPUT
        assert str(missing) in info.value.message
        assert info.value.hint and "-i" in info.value.hint


def test_check_inventory_path_resolves(
    forms: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(forms["ini"].parent)
    assert executor.check_inventory_path("fleet.ini") == forms["ini"].resolve()
    assert executor.check_inventory_path("fleet.d") == forms["directory"].resolve()


@pytest.mark.parametrize("pattern", ["-i", "--version", "-web"])
def test_pattern_starting_with_dash_is_bad_input(forms: dict[str, Path], pattern: str) -> None:
    with pytest.raises(BadInputError) as info:
        executor.match_hosts(forms["ini"], pattern)
    assert info.value.exit_code == ExitCode.BAD_INPUT
    assert repr(pattern) in info.value.message


def test_broken_yaml_inventory_is_bad_input(tmp_path: Path) -> None:
    # Ansible alone would only warn and answer with an empty inventory; a sysadmin wants the
    # typo reported, not a smaller fleet.
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_YAML)
    with pytest.raises(BadInputError) as info:
        executor.list_inventory(broken)
    assert "Failed to parse" in info.value.message and info.value.hint


def test_broken_yaml_inventory_matches_no_hosts(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_YAML)
    try:
        hosts = executor.match_hosts(broken, "all")
    except BadInputError:
        return
    assert hosts == []


def test_directory_with_one_broken_file_is_bad_input(tmp_path: Path) -> None:
    directory = tmp_path / "inv.d"
    directory.mkdir()
    (directory / "hosts.ini").write_text(INI)
    (directory / "extra.yml").write_text(BROKEN_YAML)
    with pytest.raises(BadInputError):
        executor.match_hosts(directory, "web")


def test_a_limit_can_be_a_file_of_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = tmp_path / "fleet.ini"
    inventory.write_text(INI)
    (tmp_path / "hosts.txt").write_text("web02\ndb01\n")
    monkeypatch.chdir(tmp_path)  # `@hosts.txt` as a user types it, from their directory
    assert sorted(executor.match_hosts(inventory, "all", limit="@hosts.txt")) == ["db01", "web02"]
    assert executor.match_hosts(inventory, "web", limit="@hosts.txt") == ["web02"]
