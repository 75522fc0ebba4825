"""job lock holders; lz4 for raw JSON where the server has it

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_locks",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("flow_run_id", sa.Text(), nullable=True),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("backend_pid", sa.Integer(), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # Raw JSON is TOASTed; lz4 compresses it ~2x faster than the default pglz at the same size
    # (docs/benchmarks.md). Servers built without lz4 (the embedded wheel) keep pglz.
    op.execute(
        """DO $$ BEGIN
             ALTER TABLE orders ALTER COLUMN raw SET COMPRESSION lz4;
             ALTER TABLE customers ALTER COLUMN raw SET COMPRESSION lz4;
             ALTER TABLE products ALTER COLUMN raw SET COMPRESSION lz4;
           EXCEPTION WHEN feature_not_supported THEN
             RAISE NOTICE 'lz4 not available on this server: raw JSON stays pglz-compressed';
           END $$"""
    )


def downgrade() -> None:
    op.execute(
        """DO $$ BEGIN
             ALTER TABLE orders ALTER COLUMN raw SET COMPRESSION default;
             ALTER TABLE customers ALTER COLUMN raw SET COMPRESSION default;
             ALTER TABLE products ALTER COLUMN raw SET COMPRESSION default;
           END $$"""
    )
    op.drop_table("job_locks")
