"""The backlog lives in Postgres: requests released to the broker a window at a time; priorities, shares, quotas

- ``requests.dispatched_at``: when the request's message was released to the broker (``NULL``: still
  in the backlog). ``requests.est_tokens``: its estimated size (prompt + completion budget), what fair
  sharing charges.
- ``jobs.priority``: 0-9, higher first (default 5).
- ``api_keys.weight`` (share of the cluster against other keys), ``max_concurrent_requests`` and
  ``max_queued_prompts`` (quotas; ``NULL``: none).

Jobs already published by an earlier version keep their messages: their requests are marked
released, so the dispatcher does not send them twice.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BACKLOG = "state = 'queued' AND dispatched_at IS NULL"
_WINDOW = "dispatched_at IS NOT NULL AND state IN ('queued', 'running', 'retrying')"


def upgrade() -> None:
    with op.batch_alter_table("requests") as batch_op:
        batch_op.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("est_tokens", sa.Integer(), nullable=True))
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("priority", sa.SmallInteger(), nullable=False, server_default="5"))
        batch_op.create_check_constraint(op.f("ck_jobs_priority"), "priority BETWEEN 0 AND 9")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(sa.Column("weight", sa.Float(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("max_concurrent_requests", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_queued_prompts", sa.Integer(), nullable=True))
    # What an earlier version published is in the broker already: count it as released.
    op.execute("UPDATE requests SET dispatched_at = CURRENT_TIMESTAMP WHERE state IN ('queued', 'running', 'retrying')")
    op.create_index(
        "ix_requests_backlog",
        "requests",
        ["job_id", "idx"],
        unique=False,
        postgresql_where=sa.text(_BACKLOG),
        sqlite_where=sa.text(_BACKLOG),
    )
    op.create_index(
        "ix_requests_window",
        "requests",
        ["job_id"],
        unique=False,
        postgresql_where=sa.text(_WINDOW),
        sqlite_where=sa.text(_WINDOW),
    )


def downgrade() -> None:
    op.drop_index("ix_requests_window", table_name="requests", postgresql_where=sa.text(_WINDOW))
    op.drop_index("ix_requests_backlog", table_name="requests", postgresql_where=sa.text(_BACKLOG))
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_column("max_queued_prompts")
        batch_op.drop_column("max_concurrent_requests")
        batch_op.drop_column("weight")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_priority"), type_="check")
        batch_op.drop_column("priority")
    with op.batch_alter_table("requests") as batch_op:
        batch_op.drop_column("est_tokens")
        batch_op.drop_column("dispatched_at")
