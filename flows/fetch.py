"""Incremental fetch: change log (+ order listing) → details → JSON Lines → the snapshot loader → deletes.

One recipe for every entity (``fetch_new_orders`` is ``fetch_changes("orders")``):

1. ``started`` = the client's clock *before* the first API call; it becomes the new watermark.
2. window start = stored watermark − ``lookback`` (default 2 h). Without a watermark: ``since`` if
   given, else the newest ``changed_at`` already mirrored (a prior snapshot import); with neither the
   run refuses to guess and tells the user to import a snapshot or pass ``since``.
3. read ``/api/{entity}/changes?from=<window start>`` (last change per key); for orders also list
   ``/api/orders?changeTimeFrom=<window start>`` and take the union (the listing also covers edits older
   than the change log's 30 days; the log is the only source of deletes).
4. fetch each changed entity's detail, three at a time on one shared client (its limiter holds the
   connection cap, the leaky bucket and 429 pauses for every thread), streaming each as one line to a
   temp file; a detail that 404s was deleted meanwhile and is counted as ``vanished``.
5. apply that file with ``apply_snapshot_file`` (an incremental apply): the snapshot loader's counters, rejects,
   reject threshold and never-roll-back rule, recorded as a ``snapshot_runs`` row with source 'fetch'.
6. after that commit, one transaction: delete what the log reports deleted (not newer than the stored
   row), count them on the run, save the watermark. Any failure before leaves the watermark unmoved;
   the next run redoes the window, which is idempotent.

Clock skew: the watermark comes from this host's clock (injected in tests), while Shoptet stamps
``changeTime`` with its own. A host clock ahead of Shoptet's by d would skip changes made in the last
d before the run started; the lookback re-reads that much, so skew up to ``lookback`` (2 h, versus
seconds with NTP) and Shoptet's commit lag are harmless. A host clock behind only widens the overlap.

Horizon: the change logs keep 30 days. When the previous watermark (or ``since``) is older than that,
the run still completes but returns a ``CompletedWithWarnings`` state, logs a warning, writes a
markdown artifact and sets ``deletes_may_be_missed`` in the result and in ``sync_state.details``
(for customers and products, edits may be missed too): import a full snapshot.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, State

from db.connection import connection
from db.sync_state import get_state, newest_changed_at
from flows import runtime
from flows.entities import Entity
from flows.fetch_details import write_details
from flows.fetch_tasks import (
    commit_deletes_and_watermark,
    fetched_details,
    list_changed_orders,
    read_change_log,
    sync_key,
)
from flows.fetch_window import CHANGE_LOG_HORIZON, FetchFailed, NoStartingPoint, Window, horizon_warning, plan_window
from flows.locks import job_lock
from flows.params import EntityName, LockWait, OptionalTime
from flows.reporting import logger, table_artifact
from flows.run_names import MINUTE, run_name
from flows.runs import recorded_run
from flows.shoptet_api import make_client
from flows.snapshot_tasks import apply_snapshot, counters_table

__all__ = [
    "FetchFailed",
    "NoStartingPoint",
    "WARNING_STATE",
    "fetch_changes",
    "fetch_new_orders",
    "plan_window",
    "write_details",
]

DEFAULT_LOOKBACK_HOURS = 2.0
WARNING_STATE = "CompletedWithWarnings"


@flow(name="fetch-new-orders", flow_run_name=run_name("fetch-orders", when=MINUTE), log_prints=True)
def fetch_new_orders(
    lookback_hours: float = DEFAULT_LOOKBACK_HOURS, since: OptionalTime = None, lock_wait: LockWait = 0
) -> dict[str, Any] | State:
    """Fetch orders created, changed or deleted since the last run; see the module docstring.

    Returns the counters (plus ``deleted``, ``fetched``, ``vanished``, ``watermark`` and
    ``deletes_may_be_missed``); calling the flow always gives the dict, also in the warning state.

    Args:
        lookback_hours: Hours before the stored watermark to fetch again (late changes are not lost).
        since: Fetch from this time instead of the stored watermark (first run, or a manual re-sync).
        lock_wait: Seconds to wait for the job lock when another job holds it (0: fail at once, null: wait forever).
    """
    return _fetch(Entity.orders, lookback_hours, since, lock_wait)


@flow(name="fetch-changes", flow_run_name="fetch-{entity.value}-changes", log_prints=True)
def fetch_changes(
    entity: EntityName,
    lookback_hours: float = DEFAULT_LOOKBACK_HOURS,
    since: OptionalTime = None,
    lock_wait: LockWait = 0,
) -> dict[str, Any] | State:
    """The change feed of customers or products (orders: the same run as ``fetch_new_orders``).

    Args:
        entity: customers or products.
        lookback_hours: Hours before the stored watermark to fetch again (late changes are not lost).
        since: Fetch from this time instead of the stored watermark (first run, or a manual re-sync).
        lock_wait: Seconds to wait for the job lock when another job holds it (0: fail at once, null: wait forever).
    """
    return _fetch(Entity(entity), lookback_hours, since, lock_wait)


def _fetch(entity: Entity, lookback_hours: float, since: datetime | None, lock_wait: float | None) -> Any:
    """The recipe of the module docstring, under the entity's job lock (fetches write its tables)."""
    if lookback_hours < 0:
        raise ValueError("lookback_hours must be >= 0")
    if since is not None and since.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    with job_lock(entity.value, wait=lock_wait):
        started = _shop_now()
        window = _plan(entity, started, timedelta(hours=lookback_hours), since)
        filters = {"window_start": window.start.isoformat(), "basis": window.basis, "lookback_hours": lookback_hours}
        with recorded_run(
            entity,
            full=False,
            filters=filters,
            what=f"{entity.value} fetch",
            failure=FetchFailed,
            advice=". The watermark did not move; the next run retries the same window",
        ) as run:
            run_id = run.start(source="fetch")
            # The log holds nothing older than its horizon; asking for less keeps `from` in its documented range.
            changes = read_change_log(entity, max(window.start, started - CHANGE_LOG_HORIZON))
            keys = changes.edits
            if entity is Entity.orders:  # the union, listing order first
                keys = list(dict.fromkeys([*list_changed_orders(window.start), *changes.edits]))
            with fetched_details(entity, keys) as fetched:
                counters = apply_snapshot(entity, Path(fetched.path), run_id, False, as_of=started)  # fetched after it
            details = _watermark_details(run_id, window, lookback_hours, counters, fetched)
            deleted = commit_deletes_and_watermark(entity, changes.deletes, run_id, started, details)
    result = {
        **counters,
        "deleted": deleted,
        "fetched": fetched.fetched,
        "vanished": fetched.vanished,
        "window_start": window.start.isoformat(),
        "watermark": started.isoformat(),
        "deletes_may_be_missed": window.horizon_exceeded,
    }
    _artifact(entity, result)
    if not window.horizon_exceeded:
        return result
    warning = horizon_warning(entity, window, started)
    logger().warning(warning)
    _warning_artifact(entity, warning)
    return Completed(name=WARNING_STATE, message=warning, data=result)


def _plan(entity: Entity, started: datetime, lookback: timedelta, since: datetime | None) -> Window:
    hub = runtime.hub()
    with connection(hub.url, hub.schema) as conn:
        state = get_state(conn, sync_key(entity))
        watermark = state.watermark if state else None
        newest = newest_changed_at(conn, entity.value) if watermark is None and since is None else None
    window = plan_window(started=started, lookback=lookback, watermark=watermark, since=since, newest_mirrored=newest)
    logger().info(
        "%s: window from %s (%s), new watermark %s",
        entity.value,
        window.start.isoformat(),
        window.basis,
        started.isoformat(),
    )
    return window


def _watermark_details(
    run_id: int, window: Window, lookback_hours: float, counters: dict[str, Any], fetched: Any
) -> dict[str, Any]:
    """What ``sync_state.details`` keeps about the run that moved the watermark."""
    details = {
        "run_id": run_id,
        "flow_run_id": runtime.current_flow_run_id(),
        "window_start": window.start.isoformat(),
        "basis": window.basis,
        "lookback_hours": lookback_hours,
        "deletes_may_be_missed": window.horizon_exceeded,
        "counters": {
            k: counters.get(k, 0) for k in ("lines", "inserted", "updated", "unchanged", "rejected", "skipped_older")
        },
        "fetched": fetched.fetched,
        "vanished": fetched.vanished,
    }
    if window.horizon_exceeded:
        details["last_horizon_warning"] = {"run_id": run_id, "previous": window.reference.isoformat()}
    return details


def _shop_now() -> datetime:
    """The client's clock, whole seconds (Shoptet's resolution), rounded down: errs towards overlap."""
    with make_client() as client:
        return datetime.fromtimestamp(int(client.clock()), UTC)


# --- artifacts (counts only: no personal data) --------------------------------------------------------


def _artifact(entity: Entity, result: dict[str, Any]) -> None:
    rows = counters_table(result) + [
        {"counter": k, "value": result[k]} for k in ("fetched", "vanished", "deletes_may_be_missed")
    ]
    table_artifact(
        rows,
        key=f"fetch-{entity.value}-counters",
        description=f"Counters of the last {entity.value} fetch (run {result.get('run_id')})",
    )


def _warning_artifact(entity: Entity, warning: str) -> None:
    try:
        create_markdown_artifact(
            f"**Warning:** {warning}", key=f"fetch-{entity.value}-warning", description="Change log horizon exceeded"
        )
    except Exception as exc:  # noqa: BLE001 - a report: the fetch itself is done
        logger().warning("could not store the warning artifact: %s", exc)
