"""What the root command hands to its subcommands: the global options, settings on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import typer
from sqlalchemy.engine import Engine

from patchpilot.settings import Settings, load_settings
from patchpilot.store.db import open_store


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
            self._settings = load_settings(config=self.config, db=self.db)
        return self._settings

    def engine(self) -> Engine:
        """The store, opened (and migrated) on first use only."""
        if self._engine is None:
            self._engine = open_store(self.settings.db)
        return self._engine


def state(ctx: typer.Context) -> AppState:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, AppState) else AppState()
