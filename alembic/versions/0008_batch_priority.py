"""An OpenAI batch's priority (batcher's extension ``batcher_priority``)

``batches.priority``: 0-9, higher first (default 5), given at ``batches.create`` and carried over to the
job the batch's validation stores (``jobs.priority``, migration 0007).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.add_column(sa.Column("priority", sa.SmallInteger(), nullable=False, server_default="5"))
        batch_op.create_check_constraint(op.f("ck_batches_priority"), "priority BETWEEN 0 AND 9")


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch_op:
        batch_op.drop_constraint(op.f("ck_batches_priority"), type_="check")
        batch_op.drop_column("priority")
