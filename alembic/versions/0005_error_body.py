"""Provider error bodies: ``requests.error_body`` keeps the provider's error object, so an error read back is the
``openai``-style exception it was (``body``, ``code``, ``param``, ``type``)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: a plain ALTER on Postgres, a copy-and-move on SQLite (embedded mode).
    with op.batch_alter_table("requests") as batch_op:
        batch_op.add_column(
            sa.Column("error_body", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch_op:
        batch_op.drop_column("error_body")
