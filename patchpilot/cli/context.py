"""What the root command hands to its subcommands: the global options, settings on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # the store, settings and risk model load only when a command needs them
    from sqlalchemy.engine import Engine

    from patchpilot.risk.score import Thresholds
    from patchpilot.settings import Settings


@dataclass
class AppState:
    db: str | None = None
    config: Path | None = None
    debug: bool = False
    _settings: Settings | None = field(default=None, repr=False)
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from patchpilot.settings import load_settings

            self._settings = load_settings(config=self.config, db=self.db)
            from patchpilot.ops.workdir import use_state_dir

            use_state_dir(self._settings.state_dir)  # where Ansible's working folders go
        return self._settings

    def engine(self) -> Engine:
        """The store, opened (and migrated) on first use only."""
        if self._engine is None:
            from patchpilot.store.db import open_store

            self._engine = open_store(self.settings.db)
        return self._engine


def risk_thresholds(ctx: typer.Context) -> Thresholds:
    """The risk levels' cut-offs from the settings (risk_medium, risk_high)."""
    from patchpilot.risk.score import Thresholds

    s = state(ctx).settings
    return Thresholds(medium=s.risk_medium, high=s.risk_high)


def state(ctx: typer.Context) -> AppState:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, AppState) else AppState()
