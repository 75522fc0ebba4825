"""Customer metrics flow: read the business settings → recompute → publish segments and movement.

Also a plain function for notebooks: ``recalculate_customer_metrics(full=True)``. The SQL and the
algorithm are in ``db.metrics.compute``; the rules and their settings keys in ``db.metrics.rules``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, task

from db.connection import connection
from db.metrics import compute as db_metrics
from db.metrics.currency import base_currency
from db.metrics.rules import (
    DEFAULT_CANCELLED_STATUSES,
    DEFAULT_SEGMENT_RULES,
    SETTING_CANCELLED,
    SETTING_SEGMENTS,
    SegmentRule,
    parse_cancelled_statuses,
    parse_segment_rules,
    rules_as_json,
)
from flows import runtime
from flows.locks import job_lock
from flows.params import LockWait, OptionalInts, OptionalRecords, OptionalTime
from flows.reporting import logger, table_artifact
from flows.retrying import RETRIES
from flows.run_names import run_name

SEGMENT_COLUMNS = ("segment", "customers", "previous", "moved_in", "moved_out", "new", "removed")


def business_settings(url: str, schema: str) -> tuple[tuple[int, ...], tuple[SegmentRule, ...]]:
    """``cancelled_statuses`` and ``rfm_segments`` from the settings service, else the defaults.

    The service (``db.settings.service``, TTL-cached) is optional: without it the defaults apply. A malformed
    value raises ``MetricsSettingsError`` rather than silently computing with other rules.
    """
    try:
        from db.settings.registry import get_settings_service
    except ImportError:
        return DEFAULT_CANCELLED_STATUSES, DEFAULT_SEGMENT_RULES
    svc = get_settings_service(url, schema)
    return (
        parse_cancelled_statuses(svc.get(SETTING_CANCELLED, None)),
        parse_segment_rules(svc.get(SETTING_SEGMENTS, None)),
    )


@task(name="recalculate-metrics", **RETRIES)
def recalculate_metrics(
    full: bool, as_of: datetime | None, cancelled_statuses: list[int], segment_rules: list[dict[str, Any]]
) -> dict[str, Any]:
    hub = runtime.hub()
    rules = parse_segment_rules(segment_rules)
    result = db_metrics.recalculate(
        hub.url, schema=hub.schema, full=full, as_of=as_of, cancelled_statuses=cancelled_statuses, segment_rules=rules
    )
    out = result.as_dict()
    with connection(hub.url, hub.schema, autocommit=True) as conn:
        out["currency"] = base_currency(conn)  # what the revenue figures are in
    out["segments"] = result.segment_rows([r.segment for r in rules])
    out["movement"] = result.movement_rows()
    return out


@flow(name="recalculate-customer-metrics", flow_run_name=run_name("metrics", choice=("full", "full", "incremental")))
def recalculate_customer_metrics(
    full: bool = False,
    as_of: OptionalTime = None,
    cancelled_statuses: OptionalInts = None,
    segment_rules: OptionalRecords = None,
    lock_wait: LockWait = 0,
) -> dict[str, Any]:
    """Recompute customer metrics and RFM segments (incrementally unless ``full``), under its job lock.

    Returns the counters, ``segments`` (customers per segment and movement) and ``movement`` (from → to).

    Args:
        full: Recompute every customer instead of only those whose orders changed.
        as_of: The "today" of recency (default: now).
        cancelled_statuses: Order status ids that do not count as sales, for this run only (null: the
            settings table's; format: see db.metrics.rules).
        segment_rules: RFM segment rules for this run only (null: the settings table's).
        lock_wait: Seconds to wait for the job lock when another job holds it (0: fail at once, null: wait forever).
    """
    hub = runtime.hub()
    if cancelled_statuses is None or segment_rules is None:
        stored_cancelled, stored_rules = business_settings(hub.url, hub.schema)
        cancelled_statuses = list(stored_cancelled) if cancelled_statuses is None else cancelled_statuses
        segment_rules = rules_as_json(stored_rules) if segment_rules is None else segment_rules
    parse_cancelled_statuses(cancelled_statuses)  # fail before the lock with the settings message
    parse_segment_rules(segment_rules)
    with job_lock("customer-metrics", wait=lock_wait):
        out = recalculate_metrics(full, as_of, list(cancelled_statuses), segment_rules)
    logger().info(
        "customer metrics %s (%s): %d customers, %d recomputed, %d removed, %d moved between segments, "
        "%d unattributed orders (revenue %s %s), %.2f s",
        out["mode"],
        out["reason"],
        out["customers"],
        out["recomputed"],
        out["removed"],
        out["moved"],
        out["unattributed_orders"],
        out["unattributed_revenue"],
        out.get("currency") or "",
        out["seconds"],
    )
    _artifacts(out)
    return out


def summary_rows(out: dict[str, Any]) -> list[dict[str, Any]]:
    keys = (
        "mode",
        "reason",
        "customers",
        "recomputed",
        "inserted",
        "updated",
        "removed",
        "moved",
        "rescored",
        "unattributed_orders",
        "unattributed_revenue",
        "seconds",
    )
    return [{"counter": k, "value": out[k]} for k in keys]


def segments_with_total(out: dict[str, Any]) -> list[dict[str, Any]]:
    rows = list(out["segments"])
    total = {c: sum(r[c] for r in rows) for c in SEGMENT_COLUMNS[1:]}
    return rows + [{"segment": "total", **total}]


def _artifacts(out: dict[str, Any]) -> None:
    table_artifact(
        segments_with_total(out),
        key="customer-metrics-segments",
        description=f"Customers per RFM segment and movement since the last run ({out['mode']} run, "
        f"as of {out['as_of']})",
    )
    table_artifact(
        out["movement"] or [{"from": "-", "to": "-", "customers": 0}],
        key="customer-metrics-movement",
        description="Customers who changed segment since the last run, per (from, to)",
    )
    table_artifact(
        summary_rows(out),
        key="customer-metrics-summary",
        description="Counters of the last customer metrics run (counts only)",
    )
