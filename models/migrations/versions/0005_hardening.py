"""hardening: rejects unique per (run, line); job detail polls kept per run; hub instance id; erasure log

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A retried apply used to write its rejects again under the same run: keep the first of each.
    op.execute(
        """DELETE FROM snapshot_rejects r USING snapshot_rejects o
            WHERE r.run_id = o.run_id AND r.line_no = o.line_no AND r.id > o.id"""
    )
    op.drop_index("ix_snapshot_rejects_run_id", table_name="snapshot_rejects")
    op.create_index("ux_snapshot_rejects_run_line", "snapshot_rejects", ["run_id", "line_no"], unique=True)
    # Shoptet answers the 11th detail poll of a job with 403: the count survives task retries.
    op.add_column("snapshot_runs", sa.Column("job_detail_polls", sa.Integer(), server_default="0", nullable=False))
    # One row per hub instance (database + schema): names its Prefect concurrency limits, so two hubs
    # on one Prefect server never share a lock.
    op.create_table(
        "hub_instance",
        sa.Column("id", sa.Text(), server_default=sa.text("substr(md5(gen_random_uuid()::text), 1, 8)"),
                  nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("singleton", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("singleton", name="uq_hub_instance_singleton"),
        sa.CheckConstraint("singleton", name="ck_hub_instance_singleton"),
    )
    op.execute("INSERT INTO hub_instance DEFAULT VALUES")
    # Job lock holders: the Prefect lease (`hub locks release` revokes it, so a dead holder cannot give
    # back the next holder's slot) and the process start time (a reused pid is not the holder).
    op.add_column("job_locks", sa.Column("lease_id", sa.Text(), nullable=True))
    op.add_column("job_locks", sa.Column("pid_started_at", sa.DateTime(timezone=True), nullable=True))
    # `hub forget EMAIL`: what was erased and when; the e-mail itself only as a sha256 of its
    # normalized form, so the log holds no personal data.
    op.create_table(
        "erasures",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("subject_sha256", sa.Text(), nullable=False),
        sa.Column("rows", JSONB(), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("erasures")
    op.drop_column("job_locks", "pid_started_at")
    op.drop_column("job_locks", "lease_id")
    op.drop_table("hub_instance")
    op.drop_column("snapshot_runs", "job_detail_polls")
    op.drop_index("ux_snapshot_rejects_run_line", table_name="snapshot_rejects")
    op.create_index("ix_snapshot_rejects_run_id", "snapshot_rejects", ["run_id"])
