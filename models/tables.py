"""SQLModel tables: the one schema truth (columns, keys, declared indexes).

Tables carry no schema name: connections put ``HUB_DB_SCHEMA`` first on the ``search_path`` and
Alembic creates them there. Money is ``numeric``; times are ``timestamptz``. No foreign keys between
shop tables: guest orders have no customer and snapshot files arrive in any order.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSON, JSONB
from sqlmodel import Field, SQLModel

# Raw entity JSON as ``json``, not ``jsonb``: measured (benchmarks/snapshot_apply.py, docs/benchmarks.md),
# COPYing ~1 GB of order JSON took about twice as long into jsonb, which parses into a tree, as into
# json, which only validates. Raw JSON is the lossless archive; analysts query the typed columns, and
# ``raw::jsonb`` or an expression index serves the rare deep query.
RAW_JSON = JSON


def _col(type_: Any, **kw: Any) -> Any:
    return Field(default=None, sa_column=sa.Column(type_, **kw))


def _ts(**kw: Any) -> Any:
    return _col(sa.DateTime(timezone=True), **kw)


def _money(**kw: Any) -> Any:
    return _col(sa.Numeric, **kw)


def _text(**kw: Any) -> Any:
    return _col(sa.Text, **kw)


ONLINE = "built_by_ensure_indexes"  # the Index.info key that marks an online_index()


def online_index(name: str, *keys: Any, **kw: Any) -> sa.Index:
    """A strategic index that no migration creates: the ``ensure_indexes`` flow builds it CONCURRENTLY.

    A migration's ``CREATE INDEX`` holds a SHARE lock (every write waits) for the whole build, minutes
    on the original's 8M items; the flow builds it without blocking writes, and autogenerate leaves it
    alone (``models/autogenerate.py``).
    """
    return sa.Index(name, *keys, info={ONLINE: True}, **kw)


def _now() -> Any:
    return Field(
        default=None,
        sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


class Order(SQLModel, table=True):
    __tablename__ = "orders"

    code: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    guid: Optional[str] = _text()  # null on some old orders
    external_code: Optional[str] = _text()
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    changed_at: Optional[datetime] = _ts()
    status_id: Optional[int] = _col(sa.Integer)
    status_name: Optional[str] = _text()
    source_name: Optional[str] = _text()
    email: Optional[str] = _text()
    phone: Optional[str] = _text()
    customer_guid: Optional[str] = _text()
    currency_code: Optional[str] = _text()
    exchange_rate: Optional[Decimal] = _money()
    price_with_vat: Optional[Decimal] = _money()
    price_without_vat: Optional[Decimal] = _money()
    price_vat: Optional[Decimal] = _money()
    price_to_pay: Optional[Decimal] = _money()
    paid: Optional[bool] = _col(sa.Boolean)
    vat_payer: Optional[bool] = _col(sa.Boolean)
    cash_desk_order: Optional[bool] = _col(sa.Boolean)
    billing_method_id: Optional[int] = _col(sa.Integer)
    billing_method_name: Optional[str] = _text()
    payment_method_guid: Optional[str] = _text()
    payment_method_name: Optional[str] = _text()
    shipping_guid: Optional[str] = _text()
    shipping_name: Optional[str] = _text()
    billing_company: Optional[str] = _text()
    billing_full_name: Optional[str] = _text()
    billing_street: Optional[str] = _text()
    billing_house_number: Optional[str] = _text()
    billing_city: Optional[str] = _text()
    billing_zip: Optional[str] = _text()
    billing_country_code: Optional[str] = _text()
    billing_company_id: Optional[str] = _text()
    billing_vat_id: Optional[str] = _text()
    delivery_company: Optional[str] = _text()
    delivery_full_name: Optional[str] = _text()
    delivery_street: Optional[str] = _text()
    delivery_house_number: Optional[str] = _text()
    delivery_city: Optional[str] = _text()
    delivery_zip: Optional[str] = _text()
    delivery_country_code: Optional[str] = _text()
    content_hash: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    raw: Optional[Any] = _col(RAW_JSON)
    run_id: Optional[int] = _col(sa.BigInteger)
    synced_at: Optional[datetime] = _now()

    __table_args__ = (
        sa.Index("ix_orders_changed_at", "changed_at"),
        sa.Index("ix_orders_created_at", "created_at"),
        sa.Index("ix_orders_customer_guid", "customer_guid"),
        # Customer identity (lower(trim(email)), else the GUID) for metrics; the function is in migration 0003.
        sa.Index("ix_orders_customer_key", sa.text("metrics_customer_key(email, customer_guid)")),
        sa.Index("ix_orders_synced_at", "synced_at"),
        # order by code: the primary key (orders_pkey) serves it.
        # a customer's order history (their last 50 orders, newest first), by the identity above.
        online_index(
            "ix_orders_customer_history",
            sa.text("metrics_customer_key(email, customer_guid)"),
            sa.text("created_at DESC"),
        ),
        # The loader skips the lines a stored row holds byte for byte, found by their hash before they
        # are parsed (db/loader/known.py): a probe per line of a re-applied snapshot. Without it (a
        # database before `hub indexes`) the loader parses every line.
        online_index("ix_orders_content_hash", "content_hash"),
    )


class OrderItem(SQLModel, table=True):
    """One line of an order as sent (all item types), range-partitioned by quarter on ``created_at``.

    ``created_at`` is the order's creation time. ``item_id`` is Shoptet's ``itemId``; when a line has
    none, the negative line position stands in (``-1`` for the first line) so it can never collide.
    """

    __tablename__ = "order_items"

    order_code: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    item_id: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), primary_key=True))
    position: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    item_type: Optional[str] = _text()
    product_guid: Optional[str] = _text()
    code: Optional[str] = _text()
    ean: Optional[str] = _text()
    name: Optional[str] = _text()
    variant_name: Optional[str] = _text()
    brand: Optional[str] = _text()
    amount: Optional[Decimal] = _money()
    amount_unit: Optional[str] = _text()
    price_ratio: Optional[Decimal] = _money()
    status_id: Optional[int] = _col(sa.Integer)
    unit_price_with_vat: Optional[Decimal] = _money()
    unit_price_without_vat: Optional[Decimal] = _money()
    item_price_with_vat: Optional[Decimal] = _money()
    item_price_without_vat: Optional[Decimal] = _money()
    item_price_vat: Optional[Decimal] = _money()
    vat_rate: Optional[Decimal] = _money()

    # items per order: the primary key (order_code, item_id, created_at) leads with order_code.
    __table_args__ = (
        sa.Index("ix_order_items_product_guid", "product_guid"),
        # a variant's sales lines: items by variant code (per partition, attached to the parent index).
        online_index("ix_order_items_code", "code"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )


class Customer(SQLModel, table=True):
    __tablename__ = "customers"

    guid: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))  # any string, not only UUIDs
    created_at: Optional[datetime] = _ts()
    changed_at: Optional[datetime] = _ts()
    email: Optional[str] = _text()  # the main account's e-mail: customers have no top-level e-mail
    full_name: Optional[str] = _text()
    phone: Optional[str] = _text()
    customer_group_id: Optional[int] = _col(sa.Integer)
    customer_group_name: Optional[str] = _text()
    price_list_id: Optional[int] = _col(sa.Integer)
    price_list_name: Optional[str] = _text()
    disabled_orders: Optional[bool] = _col(sa.Boolean)
    billing_company: Optional[str] = _text()
    billing_full_name: Optional[str] = _text()
    billing_street: Optional[str] = _text()
    billing_house_number: Optional[str] = _text()
    billing_city: Optional[str] = _text()
    billing_zip: Optional[str] = _text()
    billing_country_code: Optional[str] = _text()
    billing_company_id: Optional[str] = _text()
    billing_vat_id: Optional[str] = _text()
    content_hash: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    raw: Optional[Any] = _col(RAW_JSON)
    run_id: Optional[int] = _col(sa.BigInteger)
    synced_at: Optional[datetime] = _now()

    __table_args__ = (
        sa.Index("ix_customers_email", "email"),
        # customer e-mail lookup as `hub forget` and support ask it: lower(btrim(email)) = normalized e-mail.
        online_index("ix_customers_email_normalized", sa.text("lower(btrim(email))")),
    )


class Product(SQLModel, table=True):
    __tablename__ = "products"

    guid: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    type: Optional[str] = _text()
    name: Optional[str] = _text()
    visibility: Optional[str] = _text()
    brand_code: Optional[str] = _text()
    brand_name: Optional[str] = _text()
    supplier_name: Optional[str] = _text()
    default_category_guid: Optional[str] = _text()
    default_category_name: Optional[str] = _text()
    url: Optional[str] = _text()
    created_at: Optional[datetime] = _ts()
    changed_at: Optional[datetime] = _ts()
    content_hash: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    raw: Optional[Any] = _col(RAW_JSON)
    run_id: Optional[int] = _col(sa.BigInteger)
    synced_at: Optional[datetime] = _now()


class ProductVariant(SQLModel, table=True):
    __tablename__ = "product_variants"

    code: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    product_guid: str = Field(sa_column=sa.Column(sa.Text, nullable=False, index=True))
    position: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    ean: Optional[str] = _text()
    name: Optional[str] = _text()
    price: Optional[Decimal] = _money()
    common_price: Optional[Decimal] = _money()
    action_price: Optional[Decimal] = _money()
    including_vat: Optional[bool] = _col(sa.Boolean)
    vat_rate: Optional[Decimal] = _money()
    currency_code: Optional[str] = _text()
    stock: Optional[Decimal] = _money()
    unit: Optional[str] = _text()
    visible: Optional[bool] = _col(sa.Boolean)

    # variant by code: the primary key serves it (single and 1 000-code batches).
    # variant matching by EAN (barcode scans, marketplace feeds).
    __table_args__ = (online_index("ix_product_variants_ean", "ean"),)


class CustomerMetric(SQLModel, table=True):
    """One row per customer identity: lower(trim(email)) when known, else the customer GUID.

    Written only by ``db.metrics.compute`` (see its docstring). ``previous_segment`` is the segment before the
    last run, so ``segment <> previous_segment`` lists who moved; NULL for customers new in that run.
    """

    __tablename__ = "customer_metrics"

    customer_key: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    customer_guid: Optional[str] = _text()
    email: Optional[str] = _text()
    orders_count: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    revenue_with_vat: Decimal = Field(sa_column=sa.Column(sa.Numeric, nullable=False))
    revenue_without_vat: Decimal = Field(sa_column=sa.Column(sa.Numeric, nullable=False))
    avg_order_value: Optional[Decimal] = _money()
    first_order_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    last_order_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    days_since_last_order: Optional[int] = _col(sa.Integer)
    avg_days_between_orders: Optional[Decimal] = _money()
    r_score: Optional[int] = _col(sa.SmallInteger)
    f_score: Optional[int] = _col(sa.SmallInteger)
    m_score: Optional[int] = _col(sa.SmallInteger)
    segment: Optional[str] = _text()
    previous_segment: Optional[str] = _text()
    updated_at: Optional[datetime] = _now()

    # One per score, in its ntile order: a run reads the quintile boundaries off them (db.metrics.compute).
    __table_args__ = (
        sa.Index("ix_customer_metrics_r_order", "last_order_at", "orders_count", "revenue_with_vat", "customer_key"),
        sa.Index("ix_customer_metrics_f_order", "orders_count", "revenue_with_vat", "last_order_at", "customer_key"),
        sa.Index("ix_customer_metrics_m_order", "revenue_with_vat", "orders_count", "last_order_at", "customer_key"),
        # metrics by segment and recency ("at-risk customers, most recent first"). Only a row whose
        # segment or last order changes loses its HOT update; the daily recency re-score keeps it.
        online_index("ix_customer_metrics_segment_recency", "segment", sa.text("last_order_at DESC")),
        # Half-empty pages: a re-score rewrites every row once a day (recency), and with room on the page
        # those updates are HOT (no index writes; none of the rewritten columns is indexed). Vacuumed
        # after 1 % of rows changed, not 20 %: the boundary lookup's index-only scans need a fresh
        # visibility map (benchmarks/customer_metrics.py).
        {"postgresql_with": {"fillfactor": 50, "autovacuum_vacuum_scale_factor": 0.01}},
    )


class CustomerMetricsQueue(SQLModel, table=True):
    """Identities that lost an order (e-mail/GUID changed, order deleted), queued by triggers on orders."""

    __tablename__ = "customer_metrics_queue"

    id: Optional[int] = Field(default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True))
    customer_key: Optional[str] = _text()
    queued_at: Optional[datetime] = _now()


class Setting(SQLModel, table=True):
    __tablename__ = "settings"

    key: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    value: Any = Field(sa_column=sa.Column(JSONB, nullable=False))
    version: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, server_default="1"))
    updated_at: Optional[datetime] = _now()


class SnapshotRun(SQLModel, table=True):
    """One apply of one snapshot file (from the API or a local file), with its counters."""

    __tablename__ = "snapshot_runs"

    id: Optional[int] = Field(default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True))
    entity: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    source: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # api | file | fetch
    full: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    filters: Optional[Any] = _col(JSONB)
    job_id: Optional[str] = _text()
    flow_run_id: Optional[str] = _text()
    status: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # running | succeeded | failed
    started_at: Optional[datetime] = _now()
    finished_at: Optional[datetime] = _ts()
    lines: Optional[int] = _col(sa.BigInteger)
    inserted: Optional[int] = _col(sa.BigInteger)
    updated: Optional[int] = _col(sa.BigInteger)
    unchanged: Optional[int] = _col(sa.BigInteger)
    rejected: Optional[int] = _col(sa.BigInteger)
    skipped_older: Optional[int] = _col(sa.BigInteger)
    deleted: Optional[int] = _col(sa.BigInteger)
    child_rows: Optional[int] = _col(sa.BigInteger)
    error: Optional[str] = _text()
    # Detail polls of this run's job so far: Shoptet answers the 11th with 403, and task retries must not reset it.
    job_detail_polls: int = Field(sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))


class FailedSnapshot(SQLModel, table=True):
    __tablename__ = "failed_snapshots"

    id: Optional[int] = Field(default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True))
    entity: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    filters: Optional[Any] = _col(JSONB)
    full: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false()))
    job_id: Optional[str] = _text()
    stage: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    error_class: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    error_message: Optional[str] = _text()
    attempts: int = Field(sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    next_attempt_at: Optional[datetime] = _ts()
    status: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # pending | recovered | gave_up
    run_id: Optional[int] = _col(sa.BigInteger)
    recovered_run_id: Optional[int] = _col(sa.BigInteger)
    created_at: Optional[datetime] = _now()
    updated_at: Optional[datetime] = _now()

    __table_args__ = (sa.Index("ix_failed_snapshots_status", "status", "next_attempt_at"),)


class SnapshotReject(SQLModel, table=True):
    __tablename__ = "snapshot_rejects"

    id: Optional[int] = Field(default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True))
    run_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    line_no: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    reason: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    line: Optional[str] = _text()  # first 2 000 characters
    created_at: Optional[datetime] = _now()

    # One reject per line of a run: a retried apply does not write its rejects twice.
    __table_args__ = (sa.Index("ux_snapshot_rejects_run_line", "run_id", "line_no", unique=True),)


class SyncState(SQLModel, table=True):
    __tablename__ = "sync_state"

    key: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    watermark: Optional[datetime] = _ts()
    details: Optional[Any] = _col(JSONB)
    updated_at: Optional[datetime] = _now()


class JobLock(SQLModel, table=True):
    """Who holds each job lock (Prefect 3.9 does not expose concurrency-limit holders)."""

    __tablename__ = "job_locks"

    name: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    flow_run_id: Optional[str] = _text()
    host: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    pid: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    backend_pid: Optional[int] = _col(sa.Integer)
    since: Optional[datetime] = _now()
    lease_id: Optional[str] = _text()  # the Prefect lease of the slot: `hub locks release` revokes it
    pid_started_at: Optional[datetime] = _ts()  # with pid: a reused pid is not the holder


class HubInstance(SQLModel, table=True):
    """The one row naming this hub instance (database + schema): its Prefect limits carry this id."""

    __tablename__ = "hub_instance"

    id: str = Field(
        sa_column=sa.Column(
            sa.Text, primary_key=True, server_default=sa.text("substr(md5(gen_random_uuid()::text), 1, 8)")
        )
    )
    created_at: Optional[datetime] = _now()
    singleton: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.true()))

    __table_args__ = (
        sa.UniqueConstraint("singleton", name="uq_hub_instance_singleton"),
        sa.CheckConstraint("singleton", name="ck_hub_instance_singleton"),
    )


class Erasure(SQLModel, table=True):
    """`hub forget`: one row per erasure; the subject only as the sha256 of the normalized e-mail."""

    __tablename__ = "erasures"

    id: Optional[int] = Field(default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True))
    subject_sha256: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    rows: Any = Field(sa_column=sa.Column(JSONB, nullable=False))
    erased_at: Optional[datetime] = _now()


class ErasedKey(SQLModel, table=True):
    """The order codes and customer GUIDs an erasure blanked: the loader never writes them back from a
    line older than ``erased_at`` (db/erasures.py)."""

    __tablename__ = "erased_keys"

    entity: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    key: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    erasure_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    erased_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))


metadata = SQLModel.metadata


# --- issue 10: partition retention (flows/partitions.py) ---------------------------------------------


class PartitionArchive(SQLModel, table=True):
    """An ``order_items`` quarter archived with pg_dump (file, checksum, rows) before retention drops it.

    Rows with ``dropped_at`` set and no ``restored_at`` are the retention horizon: no import re-creates
    that quarter's partition or re-inserts its items (``db.partitions.rollover.archived_quarters``).
    """

    __tablename__ = "partition_archives"

    id: Optional[int] = Field(default=None, sa_column=sa.Column(sa.BigInteger, sa.Identity(), primary_key=True))
    partition: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    year: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    quarter: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    range_start: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    range_end: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    rows: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    sha256: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    path: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    pg_dump_version: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    archived_at: Optional[datetime] = _now()
    dropped_at: Optional[datetime] = _ts()
    restored_at: Optional[datetime] = _ts()
