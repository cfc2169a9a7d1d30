"""The `patchpilot` entry point: exit codes, one-line errors with hints, no tracebacks.

Everything goes through the real `patchpilot.cli.main(argv)`. No test here may touch the
machine's lab: the lab directories point into tmp_path, and every real lab action is replaced
by a tripwire that records the call and fails the test.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import patchpilot
from patchpilot import settings as settings_mod
from patchpilot.cli import main
from patchpilot.errors import ExitCode

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
REAL_WHICH = shutil.which
REAL_CONFIG_PATHS = settings_mod.default_config_paths


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, ANSI.sub("", out), ANSI.sub("", err)


def nonblank(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_one_error(err: str, out: str = "") -> tuple[str, str]:
    """Exactly an `error:` line and a `hint:` line on stderr; returns (message, hint)."""
    lines = nonblank(err)
    assert "Traceback" not in err + out
    assert len(lines) == 2, lines
    assert lines[0].startswith("error: "), lines
    assert lines[1].startswith("hint: "), lines
    return lines[0].removeprefix("error: "), lines[1].removeprefix("hint: ")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No user config, no real lab directories, and logging restored after each run."""
    for name in list(os.environ):
        if name.startswith("PATCHPILOT_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATCHPILOT_LAB_DIR", str(tmp_path / "lab"))
    monkeypatch.setenv("PATCHPILOT_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        settings_mod,
        "default_config_paths",
        lambda: [p for p in REAL_CONFIG_PATHS() if p.parts[:2] != ("/", "etc")],
    )
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    pp_level = logging.getLogger("patchpilot").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("patchpilot").setLevel(pp_level)


@pytest.fixture
def lab_tripwire(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace every action that could touch a real lab; returns the names of those reached."""
    reached: list[str] = []

    def trip(name: str):  # type: ignore[no-untyped-def]
        def tripped(*args: object, **kwargs: object) -> None:
            reached.append(name)
            raise AssertionError(f"a unit test reached a real lab action: {name}")

        return tripped

    for target in (
        "patchpilot.lab.system.run",
        "patchpilot.lab.fleet.run",
        "patchpilot.lab.network.run",
        "patchpilot.lab.image.run",
        "patchpilot.lab.access.run",
        "patchpilot.lab.repo.run",
        "patchpilot.lab.fleet._processes",
        "patchpilot.lab.fleet._terminate",
        "patchpilot.lab.fleet.Lab._unmount_under",
        "patchpilot.lab.fleet.Lab._start_supervisor",
        "patchpilot.lab.network.ensure_bridge",
        "patchpilot.lab.network.remove_all",
        "patchpilot.lab.image.ensure_base_image",
        "patchpilot.lab.repo.start_server",
    ):
        monkeypatch.setattr(target, trip(target))
    return reached


# ---- version and help ----------------------------------------------------------------------
def test_version_prints_name_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--version")
    assert code == ExitCode.OK
    assert out == f"patchpilot {patchpilot.__version__}\n"
    assert re.fullmatch(r"patchpilot \d+\.\d+\S*\n", out)
    assert err == ""


def test_help_lists_the_command_groups(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == ExitCode.OK
    assert re.search(r"^\W*lab\s{2,}\S", out, re.MULTILINE), out
    assert re.search(r"^\W*config\s{2,}\S", out, re.MULTILINE), out
    assert "--version" in out and "--config" in out and "--db" in out


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["lab", "up", "--help"]])
def test_help_and_version_work_with_a_broken_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.setenv("PATCHPILOT_CONFIG", "/nonexistent/patchpilot.toml")
    code, out, err = run_cli(capsys, *argv)
    assert code == ExitCode.OK
    assert "error" not in err
    assert out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], "PATCHPILOT_DB"),
        (["--help"], "PATCHPILOT_CONFIG"),
        (["lab", "up", "--help"], "web=6,db=2"),
    ],
)
def test_help_shows_env_vars_and_defaults(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    expected: str,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(capsys, *argv)
    assert code == ExitCode.OK
    assert expected in out


# ---- usage errors --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["nope"], "nope"),
        (["--bogus"], "--bogus"),
        (["config", "show", "--bogus"], "--bogus"),
        (["lab", "frobnicate"], "frobnicate"),
        (["lab", "up", "--hosts", "0"], "--hosts"),
        (["lab", "up", "--hosts", "many"], "--hosts"),
    ],
)
def test_usage_errors_return_bad_input(
    capsys: pytest.CaptureFixture[str], lab_tripwire: list[str], argv: list[str], says: str
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == ExitCode.BAD_INPUT
    assert says in err
    assert "Traceback" not in out + err
    assert lab_tripwire == []


# ---- PatchpilotError becomes one line, a hint and its exit code ------------------------------
def test_missing_config_file_is_bad_input_with_hint(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--config", "/nonexistent.toml", "config", "show")
    assert code == ExitCode.BAD_INPUT
    message, hint = assert_one_error(err, out)
    assert "/nonexistent.toml" in message
    assert "--config" in hint
    assert out == ""


@pytest.mark.parametrize("argv", [["lab", "down"], ["lab", "up", "--hosts", "1"]])
def test_lab_needs_root(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    lab_tripwire: list[str],
    argv: list[str],
) -> None:
    monkeypatch.setattr("patchpilot.lab.system.os.geteuid", lambda: 1000)
    code, out, err = run_cli(capsys, *argv)
    assert code == ExitCode.ENVIRONMENT
    message, hint = assert_one_error(err, out)
    assert "needs root" in message
    assert "sudo" in hint
    assert lab_tripwire == []


@pytest.mark.parametrize("argv", [["lab", "down"], ["lab", "up", "--hosts", "1"]])
def test_lab_names_the_package_of_a_missing_tool(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    lab_tripwire: list[str],
    argv: list[str],
) -> None:
    def which(cmd: str, *args: object, **kwargs: object) -> str | None:
        from patchpilot.lab.system import REQUIRED_TOOLS

        if cmd == "debootstrap":
            return None
        if cmd in REQUIRED_TOOLS:
            return f"/usr/bin/{cmd}"  # the others present, whatever this machine has
        return REAL_WHICH(cmd, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("patchpilot.lab.system.os.geteuid", lambda: 0)
    monkeypatch.setattr("patchpilot.lab.system.shutil.which", which)
    code, out, err = run_cli(capsys, *argv)
    assert code == ExitCode.ENVIRONMENT
    message, hint = assert_one_error(err, out)
    assert message == "missing tools for the lab: debootstrap"
    assert "apt-get install -y debootstrap`" in hint
    assert lab_tripwire == []


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["lab", "up", "--hosts", "2", "--groups", "web=3"], "disagrees"),
        (["lab", "up", "--groups", "Web=2"], "'Web'"),
        (["lab", "up", "--groups", "web=0"], "at least 1"),
        (["lab", "up", "--groups", "web=2,web=1"], "twice"),
        (["lab", "up", "--release", "../x"], "'../x'"),
    ],
)
def test_lab_up_rejects_bad_fleets_before_anything(
    capsys: pytest.CaptureFixture[str], lab_tripwire: list[str], argv: list[str], says: str
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == ExitCode.BAD_INPUT
    message, _ = assert_one_error(err, out)
    assert says in message
    assert lab_tripwire == []


# ---- unexpected exceptions -----------------------------------------------------------------
def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("boom")


def test_unexpected_exception_is_internal_without_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("patchpilot.settings.find_config_file", _boom)
    code, out, err = run_cli(capsys, "config", "show")
    assert code == ExitCode.INTERNAL == 70
    assert "Traceback" not in out + err
    errors = [line for line in nonblank(err) if line.startswith("error: ")]
    assert len(errors) == 1
    assert "RuntimeError" in errors[0] and "boom" in errors[0]
    assert len([line for line in nonblank(err) if "--debug" in line]) == 1
    assert len(nonblank(err)) <= 2


def test_debug_lets_an_unexpected_exception_propagate(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("patchpilot.settings.find_config_file", _boom)
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "config", "show"])


def test_ctrl_c_is_interrupted(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("patchpilot.settings.find_config_file", interrupt)
    code, out, err = run_cli(capsys, "config", "show")
    assert code == ExitCode.INTERRUPTED == 130
    assert "Traceback" not in out + err


# ---- exit codes ----------------------------------------------------------------------------
def test_exit_codes_are_distinct_and_ok_is_zero() -> None:
    # __members__ includes aliases: a duplicated value would silently become an alias.
    members = ExitCode.__members__
    values = [member.value for member in members.values()]
    assert len(values) == len(set(values)), members
    assert ExitCode.OK == 0
    assert [name for name, member in members.items() if member.value == 0] == ["OK"]
    assert all(0 <= v <= 255 for v in values)


# ---- shipped plans and Ansible access options ----------------------------------------------
def test_plans_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    code, out, _err = run_cli(capsys, "plans", "list", "--json")
    assert code == ExitCode.OK
    names = [p["name"] for p in json.loads(out)]
    assert {"canary", "lab-demo", "emergency"} <= set(names)
    assert all(Path(p["path"]).is_file() and p["summary"] for p in json.loads(out))
    code, out, _err = run_cli(capsys, "plans", "show", "canary")
    assert code == ExitCode.OK
    assert "name: canary" in out
    code, out, err = run_cli(capsys, "plans", "show", "canery")
    assert code == ExitCode.BAD_INPUT
    msg, hint = assert_one_error(err, out)
    assert "canery" in msg and "canary" in hint


def test_a_missing_plan_path_names_the_shipped_plan(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    inv = tmp_path / "hosts.ini"
    inv.write_text("web01\n")
    code, out, err = run_cli(capsys, "plan", "plans/canary.yml", "-i", str(inv))
    assert code == ExitCode.BAD_INPUT
    msg, hint = assert_one_error(err, out)
    assert msg == "cannot read plan plans/canary.yml: no such file"
    assert "give just `canary`" in hint


def test_ask_become_pass_needs_a_terminal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = tmp_path / "hosts.ini"
    inv.write_text("web01\n")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, out, err = run_cli(capsys, "inventory", "gather", "-i", str(inv), "-K")
    assert code == ExitCode.BAD_INPUT
    msg, hint = assert_one_error(err, out)
    assert "needs a terminal" in msg and "--vault-password-file" in hint


def test_a_missing_vault_password_file_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    inv = tmp_path / "hosts.ini"
    inv.write_text("web01\n")
    code, out, err = run_cli(
        capsys, "plan", "canary", "-i", str(inv), "--vault-password-file", "/nonexistent/vp"
    )
    assert code == ExitCode.BAD_INPUT
    msg, _hint = assert_one_error(err, out)
    assert "/nonexistent/vp" in msg


def test_a_vault_id_file_is_found_from_the_users_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from patchpilot.cli.access import setup_access
    from patchpilot.ops import ansible_setup

    (tmp_path / "vp.txt").write_text("s3cret\n")
    monkeypatch.chdir(tmp_path)
    try:
        setup = setup_access(vault_id=["prod@vp.txt", "dev@prompt", "vp.txt"])
    finally:
        ansible_setup.reset()
    # Ansible runs the playbooks from a folder of its own: the paths must not be relative.
    assert setup.args == (
        "--vault-id",
        f"prod@{tmp_path / 'vp.txt'}",
        "--vault-id",
        "dev@prompt",
        "--vault-id",
        str(tmp_path / "vp.txt"),
    )


def test_a_vault_id_naming_a_missing_file_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    inv = tmp_path / "hosts.ini"
    inv.write_text("web01\n")
    code, out, err = run_cli(capsys, "plan", "canary", "-i", str(inv), "--vault-id", "prod@nope")
    assert code == ExitCode.BAD_INPUT
    msg, hint = assert_one_error(err, out)
    assert "nope" in msg and "LABEL@prompt" in hint


def test_limit_cannot_change_a_resumed_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "apply", "--resume", "r-1", "--limit", "web")
    assert code == ExitCode.BAD_INPUT
    msg, _hint = assert_one_error(err, out)
    assert "--limit" in msg and "resumed" in msg
