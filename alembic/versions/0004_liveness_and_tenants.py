"""Liveness and tenants: worker heartbeats, which worker holds a request, each job's queue, the api_base permission

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.Text(), nullable=False, server_default=""),
        sa.Column("concurrency", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("stopping_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index("ix_workers_heartbeat_at", "workers", ["heartbeat_at"], unique=False)
    # Batch mode: a plain ALTER on Postgres, a copy-and-move on SQLite (embedded mode).
    with op.batch_alter_table("requests") as batch_op:
        batch_op.add_column(sa.Column("worker_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("lost", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(sa.Column("can_set_api_base", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("queue", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("idempotency_fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("idempotency_fingerprint")
        batch_op.drop_column("queue")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_column("can_set_api_base")
    with op.batch_alter_table("requests") as batch_op:
        batch_op.drop_column("lost")
        batch_op.drop_column("worker_id")
    op.drop_index("ix_workers_heartbeat_at", table_name="workers")
    op.drop_table("workers")
