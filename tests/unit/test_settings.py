"""Settings: defaults < config file < PATCHPILOT_* environment < command-line flags.

Every test runs in an empty working directory with HOME in tmp_path, no PATCHPILOT_* variables
and without /etc/patchpilot, so a user's own configuration can never leak in.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from patchpilot import settings as settings_mod
from patchpilot.cli import main
from patchpilot.errors import BadInputError, ExitCode
from patchpilot.settings import load_settings

REAL_CONFIG_PATHS = settings_mod.default_config_paths
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(autouse=True)
def clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in list(os.environ):
        if name.startswith("PATCHPILOT_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # /etc/patchpilot/config.toml is the machine's, not this test's: leave it out of discovery.
    monkeypatch.setattr(
        settings_mod,
        "default_config_paths",
        lambda: [p for p in REAL_CONFIG_PATHS() if p.parts[:2] != ("/", "etc")],
    )
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    pp_level = logging.getLogger("patchpilot").level
    yield work
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("patchpilot").setLevel(pp_level)


def toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- defaults ------------------------------------------------------------------------------
def test_defaults(tmp_path: Path) -> None:
    s = load_settings()
    assert s.lab_repo_port == 8800
    assert s.lab_subnet == "10.213.0.0/24"
    assert s.db == f"sqlite:///{tmp_path / 'home' / '.local/share/patchpilot/patchpilot.db'}"


def test_default_db_is_under_xdg_data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_settings().db == f"sqlite:///{tmp_path / 'xdg' / 'patchpilot' / 'patchpilot.db'}"


# ---- precedence ----------------------------------------------------------------------------
LAYERS = ["file", "env", "flag"]
COMBINATIONS = [
    (),
    ("file",),
    ("env",),
    ("flag",),
    ("file", "env"),
    ("file", "flag"),
    ("env", "flag"),
    ("file", "env", "flag"),
]


@pytest.mark.parametrize("present", COMBINATIONS, ids=lambda p: "+".join(p) or "none")
def test_precedence_of_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, present: tuple[str, ...]
) -> None:
    paths = {layer: tmp_path / f"{layer}.db" for layer in LAYERS}
    config = None
    if "file" in present:
        config = toml(tmp_path / "c.toml", f'db = "{paths["file"]}"\n')
    if "env" in present:
        monkeypatch.setenv("PATCHPILOT_DB", str(paths["env"]))
    flag = str(paths["flag"]) if "flag" in present else None

    s = load_settings(config=config, db=flag)

    winner = next((layer for layer in reversed(LAYERS) if layer in present), None)
    expected = (
        f"sqlite:///{paths[winner]}"
        if winner
        else f"sqlite:///{tmp_path / 'home/.local/share/patchpilot/patchpilot.db'}"
    )
    assert s.db == expected


@pytest.mark.parametrize("present", COMBINATIONS, ids=lambda p: "+".join(p) or "none")
def test_precedence_of_lab_repo_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, present: tuple[str, ...]
) -> None:
    ports = {"file": 9001, "env": 9002, "flag": 9003}
    config = None
    if "file" in present:
        config = toml(tmp_path / "c.toml", f"lab_repo_port = {ports['file']}\n")
    if "env" in present:
        monkeypatch.setenv("PATCHPILOT_LAB_REPO_PORT", str(ports["env"]))
    flags = {"lab_repo_port": ports["flag"]} if "flag" in present else {}

    s = load_settings(config=config, **flags)

    winner = next((layer for layer in reversed(LAYERS) if layer in present), None)
    assert s.lab_repo_port == (ports[winner] if winner else 8800)


def test_a_flag_not_given_does_not_hide_the_file(tmp_path: Path) -> None:
    """The CLI passes None for options the user did not give."""
    config = toml(tmp_path / "c.toml", f'db = "{tmp_path / "f.db"}"\nlab_repo_port = 9001\n')
    s = load_settings(config=config, db=None, lab_repo_port=None)
    assert s.db == f"sqlite:///{tmp_path / 'f.db'}"
    assert s.lab_repo_port == 9001


def test_file_sets_only_what_it_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = toml(tmp_path / "c.toml", "lab_repo_port = 9001\n")
    monkeypatch.setenv("PATCHPILOT_LAB_SUBNET", "10.99.0.0/24")
    s = load_settings(config=config)
    assert (s.lab_repo_port, s.lab_subnet) == (9001, "10.99.0.0/24")
    assert s.lab_dir == Path("/var/lib/patchpilot/lab")


# ---- config file discovery -----------------------------------------------------------------
def test_patchpilot_toml_in_the_working_directory_is_used(clean: Path) -> None:
    toml(clean / "patchpilot.toml", "lab_repo_port = 9101\n")
    assert load_settings().lab_repo_port == 9101


def test_user_config_is_used_when_there_is_no_local_one(tmp_path: Path) -> None:
    toml(tmp_path / "home/.config/patchpilot/config.toml", "lab_repo_port = 9102\n")
    assert load_settings().lab_repo_port == 9102


def test_local_config_beats_user_config(tmp_path: Path, clean: Path) -> None:
    toml(tmp_path / "home/.config/patchpilot/config.toml", "lab_repo_port = 9102\n")
    toml(clean / "patchpilot.toml", "lab_repo_port = 9101\n")
    assert load_settings().lab_repo_port == 9101


def test_patchpilot_config_env_names_the_file(
    tmp_path: Path, clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml(clean / "patchpilot.toml", "lab_repo_port = 9101\n")
    named = toml(tmp_path / "named.toml", "lab_repo_port = 9103\n")
    monkeypatch.setenv("PATCHPILOT_CONFIG", str(named))
    assert load_settings().lab_repo_port == 9103
    explicit = toml(tmp_path / "explicit.toml", "lab_repo_port = 9104\n")
    assert load_settings(config=explicit).lab_repo_port == 9104


# ---- db values -----------------------------------------------------------------------------
def test_a_relative_db_path_becomes_an_absolute_sqlite_url(clean: Path) -> None:
    s = load_settings(db="data/pp.db")
    assert s.db == f"sqlite:///{clean / 'data' / 'pp.db'}"
    assert s.db.startswith("sqlite:////")


def test_a_db_path_with_tilde_is_expanded(tmp_path: Path) -> None:
    assert load_settings(db="~/pp.db").db == f"sqlite:///{tmp_path / 'home' / 'pp.db'}"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://pp:secret@db.example.org:5432/patchpilot",
        "sqlite:////var/lib/patchpilot/pp.db",
        "sqlite:///relative.db",
    ],
)
def test_a_url_stays_as_it_is(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(db=url).db == url
    monkeypatch.setenv("PATCHPILOT_DB", url)
    assert load_settings().db == url


# ---- errors --------------------------------------------------------------------------------
def test_invalid_toml_is_bad_input_naming_the_file(tmp_path: Path) -> None:
    config = toml(tmp_path / "broken.toml", "lab_repo_port = \n")
    with pytest.raises(BadInputError) as info:
        load_settings(config=config)
    assert str(config) in info.value.message
    assert "TOML" in info.value.message
    assert info.value.exit_code == ExitCode.BAD_INPUT


def test_unknown_key_is_bad_input(tmp_path: Path) -> None:
    config = toml(tmp_path / "c.toml", "lab_repo_prot = 9000\n")
    with pytest.raises(BadInputError) as info:
        load_settings(config=config)
    assert "lab_repo_prot" in info.value.message
    assert str(config) in info.value.message


def test_wrong_type_is_bad_input_naming_the_setting(tmp_path: Path) -> None:
    config = toml(tmp_path / "c.toml", 'lab_repo_port = "x"\n')
    with pytest.raises(BadInputError) as info:
        load_settings(config=config)
    assert "'lab_repo_port'" in info.value.message
    assert str(config) in info.value.message
    assert info.value.hint


def test_wrong_type_in_the_environment_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHPILOT_LAB_REPO_PORT", "x")
    with pytest.raises(BadInputError, match="lab_repo_port"):
        load_settings()


def test_patchpilot_config_naming_a_missing_file_is_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.toml"
    monkeypatch.setenv("PATCHPILOT_CONFIG", str(missing))
    with pytest.raises(BadInputError) as info:
        load_settings()
    assert str(missing) in info.value.message
    assert "PATCHPILOT_CONFIG" in (info.value.hint or "")


def test_explicit_missing_config_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not found"):
        load_settings(config=tmp_path / "missing.toml")


# ---- `patchpilot config show --json` ---------------------------------------------------------
def config_show(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    code = main([*argv, "config", "show", "--json"])
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, err
    data: dict[str, object] = json.loads(out)
    return data


def test_config_show_json_reports_each_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = toml(tmp_path / "c.toml", 'lab_repo_port = 9100\nlab_subnet = "10.55.0.0/24"\n')
    monkeypatch.setenv("PATCHPILOT_LAB_DIR", str(tmp_path / "labdir"))
    monkeypatch.setenv("PATCHPILOT_LAB_SUBNET", "10.66.0.0/24")  # env beats the file
    data = config_show(capsys, "--config", str(config), "--db", str(tmp_path / "flag.db"))

    assert data["config_file"] == str(config)
    settings = data["settings"]
    assert isinstance(settings, dict)
    assert settings["db"] == {"value": f"sqlite:///{tmp_path / 'flag.db'}", "source": "flag"}
    assert settings["lab_repo_port"] == {"value": "9100", "source": f"file {config}"}
    assert settings["lab_subnet"] == {"value": "10.66.0.0/24", "source": "env"}
    assert settings["lab_dir"] == {"value": str(tmp_path / "labdir"), "source": "env"}
    assert settings["lab_cache"] == {"value": "/var/cache/patchpilot/lab", "source": "default"}
    assert set(settings) == set(settings_mod.Settings.model_fields)


def test_config_show_json_with_no_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = config_show(capsys)
    assert data["config_file"] is None
    settings = data["settings"]
    assert isinstance(settings, dict)
    assert {v["source"] for v in settings.values()} == {"default"}
    assert settings["db"]["value"] == (
        f"sqlite:///{tmp_path / 'home/.local/share/patchpilot/patchpilot.db'}"
    )


def test_config_show_json_finds_the_file_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = toml(tmp_path / "env.toml", "lab_repo_port = 9200\n")
    monkeypatch.setenv("PATCHPILOT_CONFIG", str(config))
    data = config_show(capsys)
    assert data["config_file"] == str(config)
    settings = data["settings"]
    assert isinstance(settings, dict)
    assert settings["lab_repo_port"] == {"value": "9200", "source": f"file {config}"}


def test_config_show_table_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["config", "show"])
    out = ANSI.sub("", capsys.readouterr().out)
    assert code == ExitCode.OK
    for name in settings_mod.Settings.model_fields:
        assert name in out
