"""OpenAI batches as OpenAI's: a batch's model, usage, window extension, output expiry, Idempotency-Key

A second create with the same input file makes a new batch (the one-batch-per-file constraint goes);
an ``Idempotency-Key`` header makes a retried create return the first batch instead.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSONB = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # Batch mode: a plain ALTER on Postgres, a copy-and-move on SQLite (embedded mode).
    with op.batch_alter_table("batches") as batch_op:
        batch_op.drop_constraint("uq_batches_owner_id_input_file_id", type_="unique")
        batch_op.add_column(sa.Column("model", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("usage", _JSONB, nullable=True))
        batch_op.add_column(sa.Column("window_override", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("output_expires_after_s", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("idempotency_key", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("idempotency_fingerprint", sa.String(length=64), nullable=True))
    op.create_index(
        "uq_batches_owner_idempotency_key",
        "batches",
        ["owner_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("ix_files_expires_at", "files", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_files_expires_at", table_name="files")
    op.drop_index(
        "uq_batches_owner_idempotency_key",
        table_name="batches",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    with op.batch_alter_table("batches") as batch_op:
        batch_op.drop_column("idempotency_fingerprint")
        batch_op.drop_column("idempotency_key")
        batch_op.drop_column("output_expires_after_s")
        batch_op.drop_column("window_override")
        batch_op.drop_column("usage")
        batch_op.drop_column("model")
    # Several batches may now share an input file: the old constraint comes back only where it holds.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DELETE FROM batches AS b USING batches AS a WHERE a.owner_id = b.owner_id "
            "AND a.input_file_id = b.input_file_id AND (a.created_at, a.id) < (b.created_at, b.id)"
        )
    with op.batch_alter_table("batches") as batch_op:
        batch_op.create_unique_constraint("uq_batches_owner_id_input_file_id", ["owner_id", "input_file_id"])
