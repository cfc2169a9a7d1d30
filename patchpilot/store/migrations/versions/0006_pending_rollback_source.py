"""pending update rollback source: where each update's rollback artifact will come from

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 08:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Unknown (NULL) for updates gathered before: the next gather fills them in.
    with op.batch_alter_table("pendingupdate", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("rollback_source", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("rollback_note", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("pendingupdate", schema=None) as batch_op:
        batch_op.drop_column("rollback_note")
        batch_op.drop_column("rollback_source")
