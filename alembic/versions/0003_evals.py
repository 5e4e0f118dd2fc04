"""evaluation runs: schedules, runs, items, results, response cache

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSONB = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_NOW = sa.func.now()


def upgrade() -> None:
    op.create_table(
        "eval_schedules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("suite_name", sa.Text(), nullable=False),
        sa.Column("suite_path", sa.Text(), nullable=False),
        sa.Column("cron", sa.Text(), nullable=False),
        sa.Column("timezone", sa.Text(), nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("active_since", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_schedules")),
        sa.UniqueConstraint("suite_path", "cron", "timezone", name="uq_eval_schedules_suite_cron_tz"),
    )
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("suite_name", sa.Text(), nullable=False),
        sa.Column("suite_path", sa.Text(), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("config", _JSONB, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("schedule_id", sa.Uuid(), nullable=True),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.Column("item_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("summary", _JSONB, nullable=True),
        sa.Column("comparison", _JSONB, nullable=True),
        sa.Column("regressed", sa.Boolean(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("submitting_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'answering', 'judging', 'completed', 'failed')", name=op.f("ck_eval_runs_state")
        ),
        sa.CheckConstraint("trigger IN ('manual', 'schedule')", name=op.f("ck_eval_runs_trigger")),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["eval_schedules.id"],
            name=op.f("fk_eval_runs_schedule_id_eval_schedules"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_runs")),
        sa.UniqueConstraint("schedule_id", "scheduled_for", name="uq_eval_runs_schedule_tick"),
    )
    op.create_index("ix_eval_runs_suite_created", "eval_runs", ["suite_name", "created_at"], unique=False)
    op.create_index(
        "ix_eval_runs_active",
        "eval_runs",
        ["state"],
        unique=False,
        postgresql_where=sa.text("state IN ('pending', 'answering', 'judging')"),
    )
    op.create_table(
        "eval_run_jobs",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["eval_runs.id"], name=op.f("fk_eval_run_jobs_run_id_eval_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_eval_run_jobs_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "job_id", name=op.f("pk_eval_run_jobs")),
    )
    op.create_table(
        "eval_items",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Text(), nullable=False),
        sa.Column("messages", _JSONB, nullable=False),
        sa.Column("expected", _JSONB, nullable=True),
        sa.Column("item_metadata", _JSONB, nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["eval_runs.id"], name=op.f("fk_eval_items_run_id_eval_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "idx", name=op.f("pk_eval_items")),
    )
    op.create_table(
        "eval_results",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("model_idx", sa.Integer(), nullable=False),
        sa.Column("item_idx", sa.Integer(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error_type", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=True),
        sa.Column("cached", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("scores", _JSONB, nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["eval_runs.id"], name=op.f("fk_eval_results_run_id_eval_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "model_idx", "item_idx", name=op.f("pk_eval_results")),
    )
    op.create_table(
        "eval_responses",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_eval_responses")),
    )


def downgrade() -> None:
    op.drop_table("eval_responses")
    op.drop_table("eval_results")
    op.drop_table("eval_items")
    op.drop_table("eval_run_jobs")
    op.drop_index(
        "ix_eval_runs_active",
        table_name="eval_runs",
        postgresql_where=sa.text("state IN ('pending', 'answering', 'judging')"),
    )
    op.drop_index("ix_eval_runs_suite_created", table_name="eval_runs")
    op.drop_table("eval_runs")
    op.drop_table("eval_schedules")
