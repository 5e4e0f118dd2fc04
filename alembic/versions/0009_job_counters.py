"""Sharded job counters: ``job_counters`` and ``jobs.open_shards``

On Postgres an active job's counters (``succeeded``, ``failed``, ``cancelled``, ``expired``) move in
``JOB_COUNTER_SHARDS`` (16) rows of ``job_counters`` instead of the one ``jobs`` row, so the stores of a
wave of completions stop queueing on one row lock (issue #16). A job's counts are its ``jobs`` columns
plus its shards' sums; finalizing folds the shards into the ``jobs`` row. ``jobs.open_shards`` counts the
shards still counting open requests: the statement that takes it to 0 completed the job.

Jobs active during the upgrade keep what they counted so far on their ``jobs`` row and get one shard
per slice with open requests, whose ``total`` is those open requests. SQLite keeps its counters on the
``jobs`` row (one writer at a time): the table is created, and stays empty.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SHARDS = 16
"""``batcher._db.contract.JOB_COUNTER_SHARDS`` as of this revision."""
_ACTIVE = "('queued', 'running', 'cancelling')"


def upgrade() -> None:
    op.create_table(
        "job_counters",
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("succeeded", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cancelled", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("expired", sa.Integer(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_counters_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "shard", name=op.f("pk_job_counters")),
    )
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("open_shards", sa.Integer(), nullable=False, server_default="0"))
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        INSERT INTO job_counters (job_id, shard, total)
        SELECT r.job_id, mod(r.idx, {_SHARDS}), count(*)
          FROM requests AS r JOIN jobs AS j ON j.id = r.job_id
         WHERE j.state IN {_ACTIVE} AND r.state IN ('queued', 'running', 'retrying')
         GROUP BY 1, 2
        """
    )
    op.execute(
        "UPDATE jobs SET open_shards = (SELECT count(*) FROM job_counters AS c WHERE c.job_id = jobs.id) "
        f"WHERE state IN {_ACTIVE}"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            UPDATE jobs SET succeeded = jobs.succeeded + s.succeeded, failed = jobs.failed + s.failed,
                            cancelled = jobs.cancelled + s.cancelled, expired = jobs.expired + s.expired
              FROM (SELECT job_id, sum(succeeded) AS succeeded, sum(failed) AS failed,
                           sum(cancelled) AS cancelled, sum(expired) AS expired
                      FROM job_counters GROUP BY job_id) AS s
             WHERE jobs.id = s.job_id
            """
        )
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("open_shards")
    op.drop_table("job_counters")
