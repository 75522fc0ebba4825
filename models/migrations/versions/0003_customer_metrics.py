"""customer metrics: identity function, order indexes, change queue, previous segment

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

What ``db.metrics`` needs (its docstring explains the incremental algorithm):

- ``metrics_customer_key(email, customer_guid)``: the one definition of a customer identity,
  ``lower(btrim(email))`` when there is an e-mail, else the customer GUID, else NULL. An inlinable
  IMMUTABLE SQL function calling only pg_catalog functions, so an index can use it and pg_restore
  (which runs with an empty search_path) can rebuild that index.
- ``ix_orders_customer_key`` on that expression: "all orders of these 1 000 identities" is an index
  scan instead of a 2.7M-row seq scan; it also serves ``IS NULL`` (the unattributed orders report).
- ``ix_orders_synced_at``: "orders written since the watermark" (the loader stamps ``synced_at`` on
  every insert and real update; ``changed_at`` is Shoptet's clock and can be older than our watermark).
- ``customer_metrics_queue`` + triggers on ``orders``: the identity an order *left* (its e-mail or
  GUID changed, or it was deleted) can no longer be read from ``orders``, so the change itself records
  it, in the writing transaction. The UPDATE trigger's WHEN compares the raw e-mail and GUID (a
  cheap per-row check; the loader's upserts rarely change them), and its function queues the old key
  only when the identity really changed. A TRUNCATE queues a NULL key: "recompute everything".
- ``customer_metrics``: ``previous_segment`` for the movement report; one index per score in that
  score's ntile order, from which a run reads the four quintile boundaries (an index-only pass instead
  of three 500k-row sorts: 0.15 s instead of 1.4 s at 500k customers); NOT NULL on the measures the
  boundaries compare (nothing wrote this table before, so the DELETE of incomplete rows is a no-op);
  fillfactor 50 so the daily re-score of every row is a HOT update (no index writes), and autovacuum
  after 1 % of rows changed so those index-only scans find a fresh visibility map.

Plain CREATE INDEX (not CONCURRENTLY: Alembic runs this in one transaction). On 2.7M orders both
indexes build in a few seconds (docs/benchmarks.md). On a much larger live table, create them first
with ``CREATE INDEX CONCURRENTLY`` under these names; ``IF NOT EXISTS`` then skips them here.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

KEY_FUNCTION = """
CREATE OR REPLACE FUNCTION metrics_customer_key(email text, customer_guid text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT coalesce(nullif(lower(btrim($1)), ''), nullif($2, '')) $$
"""

# SET search_path FROM CURRENT: the queue is found in the hub's schema whatever the deleting
# session's search_path is (psql, a retention job).
QUEUE_FUNCTIONS = """
CREATE OR REPLACE FUNCTION metrics_queue_moved_order() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    -- A case or spacing edit of the e-mail keeps the identity: nothing to queue.
    IF metrics_customer_key(OLD.email, OLD.customer_guid) IS DISTINCT FROM
       metrics_customer_key(NEW.email, NEW.customer_guid)
       AND metrics_customer_key(OLD.email, OLD.customer_guid) IS NOT NULL THEN
        INSERT INTO customer_metrics_queue (customer_key)
        VALUES (metrics_customer_key(OLD.email, OLD.customer_guid));
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION metrics_queue_deleted_orders() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO customer_metrics_queue (customer_key)
    SELECT DISTINCT metrics_customer_key(g.email, g.customer_guid) FROM gone g
    WHERE metrics_customer_key(g.email, g.customer_guid) IS NOT NULL;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION metrics_queue_truncated_orders() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO customer_metrics_queue (customer_key) VALUES (NULL);
    RETURN NULL;
END $$;
"""

TRIGGERS = """
CREATE TRIGGER metrics_moved_order AFTER UPDATE OF email, customer_guid ON orders
    FOR EACH ROW
    WHEN (OLD.email IS DISTINCT FROM NEW.email OR OLD.customer_guid IS DISTINCT FROM NEW.customer_guid)
    EXECUTE FUNCTION metrics_queue_moved_order();
CREATE TRIGGER metrics_deleted_orders AFTER DELETE ON orders
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION metrics_queue_deleted_orders();
CREATE TRIGGER metrics_truncated_orders AFTER TRUNCATE ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_queue_truncated_orders();
"""


SCORE_INDEXES = {  # name → columns, in the order of each score's ntile (db.metrics.ORDERINGS)
    "ix_customer_metrics_r_order": ["last_order_at", "orders_count", "revenue_with_vat", "customer_key"],
    "ix_customer_metrics_f_order": ["orders_count", "revenue_with_vat", "last_order_at", "customer_key"],
    "ix_customer_metrics_m_order": ["revenue_with_vat", "orders_count", "last_order_at", "customer_key"],
}
NOT_NULL = ("orders_count", "revenue_with_vat", "revenue_without_vat", "first_order_at", "last_order_at")


def upgrade() -> None:
    op.add_column("customer_metrics", sa.Column("previous_segment", sa.Text(), nullable=True))
    # Every row the metrics write has them; row comparisons against the boundaries rely on it.
    op.execute("DELETE FROM customer_metrics WHERE " + " OR ".join(f"{c} IS NULL" for c in NOT_NULL))
    for column in NOT_NULL:
        op.alter_column("customer_metrics", column, nullable=False)
    for name, columns in SCORE_INDEXES.items():
        op.create_index(name, "customer_metrics", columns)
    op.execute("ALTER TABLE customer_metrics SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.01)")
    op.execute(KEY_FUNCTION)
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_orders_customer_key ON orders (metrics_customer_key(email, customer_guid))"
    )
    op.execute("CREATE INDEX IF NOT EXISTS ix_orders_synced_at ON orders (synced_at)")
    # Insert-only from many writers; the run deletes what it read. NULL key: recompute everything.
    op.create_table(
        "customer_metrics_queue",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("customer_key", sa.Text(), nullable=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(QUEUE_FUNCTIONS)
    op.execute(TRIGGERS)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS metrics_truncated_orders ON orders")
    op.execute("DROP TRIGGER IF EXISTS metrics_deleted_orders ON orders")
    op.execute("DROP TRIGGER IF EXISTS metrics_moved_order ON orders")
    op.execute("DROP FUNCTION IF EXISTS metrics_queue_truncated_orders()")
    op.execute("DROP FUNCTION IF EXISTS metrics_queue_deleted_orders()")
    op.execute("DROP FUNCTION IF EXISTS metrics_queue_moved_order()")
    op.execute("DROP TABLE IF EXISTS customer_metrics_queue")
    op.execute("DROP INDEX IF EXISTS ix_orders_synced_at")
    op.execute("DROP INDEX IF EXISTS ix_orders_customer_key")
    op.execute("DROP FUNCTION IF EXISTS metrics_customer_key(text, text)")
    for name in SCORE_INDEXES:
        op.drop_index(name, table_name="customer_metrics")
    op.execute("ALTER TABLE customer_metrics RESET (fillfactor, autovacuum_vacuum_scale_factor)")
    for column in NOT_NULL:
        op.alter_column("customer_metrics", column, nullable=True)
    op.drop_column("customer_metrics", "previous_segment")
