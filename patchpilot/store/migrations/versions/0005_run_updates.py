"""run updates: each run's planned updates as narrow rows, for the fleet report

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 16:45:00

"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "runupdate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("host", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("package", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("security", sa.Boolean(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("runupdate", schema=None) as batch_op:
        batch_op.create_index("ix_runupdate_run_host", ["run_id", "host"], unique=False)
    # The runs already in the store: their rows from their frozen plans, one run at a time.
    conn = op.get_bind()
    for run_id, plan in conn.execute(sa.text("SELECT id, plan FROM run")):
        doc: Any = json.loads(plan) if isinstance(plan, str | bytes) else plan
        rows = [
            {
                "run_id": run_id,
                "host": str(h.get("name", "")),
                "package": str(u.get("package", "")),
                "security": bool(u.get("security")),
                "probability": u.get("probability"),
            }
            for h in ((doc or {}).get("expansion") or {}).get("hosts") or []
            for u in h.get("updates") or []
        ]
        if rows:
            conn.execute(sa.insert(table), rows)


def downgrade() -> None:
    with op.batch_alter_table("runupdate", schema=None) as batch_op:
        batch_op.drop_index("ix_runupdate_run_host")
    op.drop_table("runupdate")
