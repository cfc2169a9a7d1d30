"""Alembic environment: runs on the connection patchpilot hands over (see store.db)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import patchpilot.store.models  # noqa: F401  (registers the tables)

config = context.config
target_metadata = SQLModel.metadata

connection = config.attributes.get("connection")
if connection is None:  # `alembic` run by hand, e.g. revision --autogenerate
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
    connection = engine.connect()

context.configure(
    connection=connection, target_metadata=target_metadata, render_as_batch=True, compare_type=True
)
with context.begin_transaction():
    context.run_migrations()
