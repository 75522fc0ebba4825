"""erased keys: the order codes and customer GUIDs each erasure blanked, so stale lines never undo it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erased_keys",
        sa.Column("entity", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("erasure_id", sa.BigInteger(), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("entity", "key"),
    )
    # Rows erased before this table existed still carry the erased hash, and synced_at is the erasure's
    # time (nothing rewrote them since, or the hash would differ); which erasure is not known (0).
    for entity, key in (("orders", "code"), ("customers", "guid")):
        op.execute(
            f"INSERT INTO erased_keys (entity, key, erasure_id, erased_at) "
            f"SELECT '{entity}', {key}, 0, coalesce(synced_at, now()) FROM {entity} WHERE content_hash = 'erased'"
        )


def downgrade() -> None:
    op.drop_table("erased_keys")
