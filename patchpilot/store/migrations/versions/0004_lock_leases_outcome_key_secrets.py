"""lock leases, one outcome per run, host and package, store secrets

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hostlock", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("heartbeat_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
        )
    # Outcomes a resumed run recorded twice: keep the first of each.
    op.execute(
        "DELETE FROM patchoutcome WHERE run_id IS NOT NULL AND id NOT IN ("
        "SELECT MIN(id) FROM patchoutcome WHERE run_id IS NOT NULL "
        "GROUP BY run_id, host, package, arch)"
    )
    with op.batch_alter_table("patchoutcome", schema=None) as batch_op:
        batch_op.create_index(
            "uq_patchoutcome_run_host_package", ["run_id", "host", "package", "arch"], unique=True
        )
    op.create_table(
        "storesecret",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("value", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("storesecret")
    with op.batch_alter_table("patchoutcome", schema=None) as batch_op:
        batch_op.drop_index("uq_patchoutcome_run_host_package")
    with op.batch_alter_table("hostlock", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("heartbeat_at")
