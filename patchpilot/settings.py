"""Settings resolution: defaults < config file < PATCHPILOT_* environment < command-line flags.

The config file is TOML. It is the one named by ``--config`` or ``PATCHPILOT_CONFIG``; otherwise
the first that exists of ``./patchpilot.toml``, ``~/.config/patchpilot/config.toml`` and
``/etc/patchpilot/config.toml``. A named file that does not exist is an error; a missing
default one is not.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from patchpilot.errors import BadInputError

ENV_PREFIX = "PATCHPILOT_"


def default_config_paths() -> list[Path]:
    return [
        Path("patchpilot.toml"),
        Path.home() / ".config" / "patchpilot" / "config.toml",
        Path("/etc/patchpilot/config.toml"),
    ]


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "patchpilot"


def default_db_url() -> str:
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return f"sqlite:///{data_home / 'patchpilot' / 'patchpilot.db'}"


class Settings(BaseSettings):
    """Everything patchpilot can be configured with; field names are the TOML keys."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    db: str = ""
    """Store location: an SQLAlchemy URL, or a plain path to an SQLite file."""
    state_dir: Path = Field(default_factory=lambda: default_state_dir())
    """patchpilot's own working files (Ansible's working folders), owner-only."""
    lab_dir: Path = Path("/var/lib/patchpilot/lab")
    """Where the lab keeps its hosts, keys, package repository and state."""
    lab_cache: Path = Path("/var/cache/patchpilot/lab")
    """Where base images are built once and reused."""
    lab_subnet: str = "10.213.0.0/24"
    """The lab bridge's network; the bridge takes the first address."""
    lab_repo_port: int = 8800
    """TCP port of the lab's package repository on the bridge address."""
    risk_medium: float = 0.05
    """Risk probability from which a pending update is 'medium' (canary strategy)."""
    risk_high: float = 0.10
    """Risk probability from which a pending update is 'high' (manual review)."""
    rollback_keep_days: int = Field(default=30, ge=0)
    """Days a finished run's rollback artifacts stay on its hosts; `apply` prunes older
    ones on the hosts it patched when it ends (0: never automatically)."""
    metrics_textfile_dir: Path | None = None
    """Where `apply` keeps node_exporter's textfile (patchpilot.prom) up to date; unset: off."""
    metrics_pushgateway: str | None = None
    """A Prometheus Pushgateway URL the metrics are also pushed to; unset: off."""

    @field_validator("db")
    @classmethod
    def _normalise_db(cls, value: str) -> str:
        return db_url(value) if value else default_db_url()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (init) beat the environment, which beats the config file (merged in by load()).
        return (init_settings, env_settings)


def db_url(value: str) -> str:
    """A URL stays a URL; anything else is a path to an SQLite file."""
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    named = explicit or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise BadInputError(
                f"config file not found: {path}",
                hint="pass an existing TOML file with --config, or unset PATCHPILOT_CONFIG",
            )
        return path
    return next((p for p in default_config_paths() if p.is_file()), None)


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise BadInputError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{path}: invalid TOML: {exc}", hint="see docs/operations.md") from exc
    return data


def load_settings(*, config: str | os.PathLike[str] | None = None, **flags: Any) -> Settings:
    """Resolve settings; ``flags`` holds only the options the user actually passed."""
    path = find_config_file(config)
    file_values = read_config_file(path) if path else {}
    env_keys = {
        name for name in Settings.model_fields if f"{ENV_PREFIX}{name.upper()}" in os.environ
    }
    # File values go in as defaults for what neither the environment nor a flag sets.
    init = {k: v for k, v in file_values.items() if k not in env_keys}
    init.update({k: v for k, v in flags.items() if v is not None})
    try:
        return Settings(**init)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        if field in flags and flags[field] is not None:
            where = f"--{field.replace('_', '-')}: "
        elif field in env_keys:
            where = f"{ENV_PREFIX}{field.upper()}: "
        else:
            where = f"{path}: " if path and field in file_values else ""
        raise BadInputError(
            f"{where}setting {field!r}: {err['msg']}",
            hint="see docs/operations.md for the settings and their types",
        ) from exc
