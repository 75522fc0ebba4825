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

import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from db.connection import connection
from db.runs import fail_run, start_run
from db.sync_state import (
    add_run_deletes,
    delete_from_change_log,
    get_state,
    newest_changed_at,
    save_watermark,
)
from flows import runtime
from flows.config import get_config
from flows.entities import Entity
from flows.locks import run_locked
from flows.retrying import TASK_RETRIES, retry_delays, transient_only
from flows.shoptet_api import make_client as make_api_client
from flows.snapshot import ORDER_INCLUDE, apply_snapshot, counters_table
from shoptet.client import CHANGE_KEY, ShoptetClient
from shoptet.errors import NotFoundError
from shoptet.timefmt import parse_datetime

log = logging.getLogger(__name__)

DEFAULT_LOOKBACK_HOURS = 2.0
CHANGE_LOG_HORIZON = timedelta(days=30)  # reference §6, §9.13
DETAIL_WORKERS = 3  # Shoptet allows 3 connections per token (reference §3)
WARNING_STATE = "CompletedWithWarnings"


class FetchFailed(RuntimeError):
    """An incremental fetch failed; the watermark did not move, so the next run redoes the window."""

    def __init__(self, message: str, *, stage: str, run_id: int | None) -> None:
        super().__init__(message)
        self.stage, self.run_id = stage, run_id


class NoStartingPoint(FetchFailed):
    """First fetch of an entity with nothing to start from."""


def sync_key(entity: Entity) -> str:
    return f"fetch:{Entity(entity).value}"


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run
        return log


# --- the window ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    start: datetime
    basis: str  # watermark | since | mirror
    reference: datetime  # the previous watermark (or what stands in for it)
    horizon_exceeded: bool


def plan_window(
    *,
    started: datetime,
    lookback: timedelta,
    watermark: datetime | None,
    since: datetime | None,
    newest_mirrored: datetime | None,
) -> Window:
    """Where this run's window starts; pure, so the first-run rules are testable on their own."""
    if since is not None:
        basis, reference, start = "since", since, since
    elif watermark is not None:
        basis, reference, start = "watermark", watermark, watermark - lookback
    elif newest_mirrored is not None:
        basis, reference, start = "mirror", newest_mirrored, newest_mirrored - lookback
    else:
        raise NoStartingPoint(
            "no watermark yet and the mirror is empty: import a full snapshot first (`hub sync ENTITY`) "
            "or pass --since to fetch everything changed since then",
            stage="plan",
            run_id=None,
        )
    return Window(start, basis, reference, started - reference > CHANGE_LOG_HORIZON)


# --- tasks --------------------------------------------------------------------------------------------

# NO_CACHE: these read the live shop; equal inputs in a later run must still hit the API.
_RETRY: dict[str, Any] = dict(
    retries=TASK_RETRIES, retry_jitter_factor=0.5, retry_condition_fn=transient_only, cache_policy=NO_CACHE
)


@dataclass
class ChangeSet:
    edits: list[str] = field(default_factory=list)  # keys whose last change is an edit (or add)
    deletes: list[tuple[str, datetime]] = field(default_factory=list)  # (key, changeTime)
    malformed: int = 0


@task(name="read-change-log", **_RETRY)
def read_change_log(entity: Entity, since: datetime) -> ChangeSet:
    entity = Entity(entity)
    id_field = CHANGE_KEY[entity.value]
    latest: dict[str, tuple[datetime, str]] = {}
    out = ChangeSet()
    with make_api_client() as client:
        for c in client.iter_changes(entity.value, since):
            key, when = c.get(id_field), parse_datetime(c.get("changeTime"))
            if not key or when is None:
                out.malformed += 1
                continue
            # The log keeps one entry per key, but it can move while we page: keep the latest.
            if key not in latest or when >= latest[key][0]:
                latest[key] = (when, str(c.get("changeType")))
    for key, (when, change_type) in latest.items():
        if change_type == "delete":
            out.deletes.append((key, when))
        else:
            out.edits.append(key)
    _logger().info(
        "%s change log: %d edited, %d deleted, %d malformed entries",
        entity.value, len(out.edits), len(out.deletes), out.malformed,
    )  # fmt: skip
    return out


@task(name="list-changed-orders", **_RETRY)
def list_changed_orders(since: datetime) -> list[str]:
    with make_api_client() as client:
        codes = [str(o["code"]) for o in client.iter_orders({"changeTimeFrom": since}) if o.get("code")]
    _logger().info("order listing: %d orders changed in the window", len(codes))
    return codes


@dataclass(frozen=True)
class FetchedFile:
    path: str
    fetched: int
    vanished: int


@task(name="fetch-details", **_RETRY)
def fetch_details(entity: Entity, keys: list[str]) -> FetchedFile:
    """Stream the details of ``keys`` to a JSON Lines file in the scratch folder."""
    entity = Entity(entity)
    cfg = get_config()
    cfg.scratch_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"fetch-{entity.value}-", suffix=".jsonl", dir=cfg.scratch_dir)
    try:
        with os.fdopen(fd, "wb") as out, make_api_client(cfg) as client:
            fetched, vanished = write_details(detail_getter(client, entity), keys, out)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    _logger().info("%s: fetched %d details, %d vanished since listed", entity.value, fetched, vanished)
    return FetchedFile(name, fetched, vanished)


@task(name="commit-deletes-and-watermark", **_RETRY)
def commit_deletes_and_watermark(
    entity: Entity,
    deletes: list[tuple[str, datetime]],
    run_id: int,
    watermark: datetime,
    details: dict[str, Any],
) -> int:
    """One transaction after the apply committed: change-log deletes, their count, the watermark."""
    entity = Entity(entity)
    cfg = get_config()
    with connection(runtime.database_url(cfg), cfg.db_schema) as conn, conn.transaction():
        deleted = delete_from_change_log(conn, entity.value, deletes)
        add_run_deletes(conn, run_id, deleted)
        save_watermark(conn, sync_key(entity), watermark, {**details, "deleted": deleted})
    _logger().info("%s: %d deleted from the change log; watermark saved", entity.value, deleted)
    return deleted


# --- details, three at a time -------------------------------------------------------------------------

Getter = Callable[[str], dict[str, Any] | None]


def detail_getter(client: ShoptetClient, entity: Entity) -> Getter:
    """Detail of one key in the shape the snapshot lines have; None when it no longer exists."""
    fetch: Callable[[str], dict[str, Any]] = {
        Entity.orders: lambda code: client.get_order(code, include=ORDER_INCLUDE),  # as the snapshots
        Entity.customers: client.get_customer,
        Entity.products: client.get_product,  # products snapshots are requested without include too
    }[Entity(entity)]

    def get(key: str) -> dict[str, Any] | None:
        try:
            return fetch(key)
        except NotFoundError:  # deleted after we listed it: the change log reports it on the next run
            return None

    return get


def write_details(
    get: Getter, keys: Iterable[str], out: BinaryIO, workers: int = DETAIL_WORKERS
) -> tuple[int, int]:
    """Fetch with ``workers`` threads, writing each detail as it arrives; returns (fetched, vanished).

    At most ``2 * workers`` requests are queued, so memory holds a handful of details, never all.
    """
    fetched = vanished = 0
    todo = iter(keys)
    pending: set[Future[dict[str, Any] | None]] = set()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shoptet-detail") as pool:

        def top_up() -> None:
            for key in todo:
                pending.add(pool.submit(get, key))
                if len(pending) >= 2 * workers:
                    return

        try:
            top_up()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    pending.discard(fut)
                    detail = fut.result()
                    if detail is None:
                        vanished += 1
                    else:
                        out.write(orjson.dumps(detail))
                        out.write(b"\n")
                        fetched += 1
                top_up()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return fetched, vanished


# --- flows --------------------------------------------------------------------------------------------


def _shop_now() -> datetime:
    """The client's clock, whole seconds (Shoptet's resolution), rounded down: errs towards overlap."""
    with make_api_client() as client:
        return datetime.fromtimestamp(int(client.clock()), UTC)


def run_fetch(entity: Entity, lookback_hours: float, since: datetime | None) -> dict[str, Any] | State:
    entity = Entity(entity)
    if lookback_hours < 0:
        raise ValueError("lookback_hours must be >= 0")
    if since is not None and since.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    cfg = get_config()
    url = runtime.database_url(cfg)
    runtime.ensure_schema(url, cfg.db_schema)
    lookback = timedelta(hours=lookback_hours)
    with connection(url, cfg.db_schema) as conn:
        state = get_state(conn, sync_key(entity))
        watermark = state.watermark if state else None
        newest = newest_changed_at(conn, entity.value) if watermark is None and since is None else None
    started = _shop_now()
    window = plan_window(started=started, lookback=lookback, watermark=watermark, since=since,
                         newest_mirrored=newest)  # fmt: skip
    logger = _logger()
    logger.info("%s: window from %s (%s), new watermark %s", entity.value, window.start.isoformat(),
                window.basis, started.isoformat())  # fmt: skip
    filters = {
        "window_start": window.start.isoformat(),
        "basis": window.basis,
        "lookback_hours": lookback_hours,
    }
    with connection(url, cfg.db_schema) as conn:
        run_id = start_run(conn, entity.value, source="fetch", full=False, filters=filters,
                           flow_run_id=runtime.current_flow_run_id())  # fmt: skip

    opts = dict(retry_delay_seconds=retry_delays())
    stage, path = "change-log", None
    try:
        # The log holds nothing older than its horizon; asking for less keeps `from` in its documented range.
        changes = read_change_log.with_options(**opts)(
            entity, max(window.start, started - CHANGE_LOG_HORIZON)
        )
        keys = changes.edits
        if entity is Entity.orders:
            stage = "listing"
            listed = list_changed_orders.with_options(**opts)(window.start)
            keys = list(dict.fromkeys([*listed, *changes.edits]))  # union, listing order first
        stage = "details"
        fetched = fetch_details.with_options(**opts)(entity, keys)
        path = fetched.path
        stage = "apply"
        counters = apply_snapshot.with_options(**opts)(entity, Path(path), run_id, False)
        stage = "deletes"
        details = {
            "run_id": run_id,
            "flow_run_id": runtime.current_flow_run_id(),
            "window_start": window.start.isoformat(),
            "basis": window.basis,
            "lookback_hours": lookback_hours,
            "deletes_may_be_missed": window.horizon_exceeded,
            "counters": {k: counters.get(k, 0) for k in ("lines", "inserted", "updated", "unchanged",
                                                         "rejected", "skipped_older")},
            "fetched": fetched.fetched,
            "vanished": fetched.vanished,
        }  # fmt: skip
        if window.horizon_exceeded:
            details["last_horizon_warning"] = {"run_id": run_id, "previous": window.reference.isoformat()}
        deleted = commit_deletes_and_watermark.with_options(**opts)(
            entity, changes.deletes, run_id, started, details
        )
    except Exception as exc:
        with connection(url, cfg.db_schema) as conn:
            fail_run(conn, run_id, f"{stage}: {type(exc).__name__}: {exc}")
        logger.error("%s fetch failed at %s: %s: %s (watermark unchanged)", entity.value, stage,
                     type(exc).__name__, exc)  # fmt: skip
        raise FetchFailed(
            f"{entity.value} fetch failed at stage {stage!r}: {type(exc).__name__}: {exc}. The watermark did "
            "not move; the next run retries the same window",
            stage=stage, run_id=run_id,
        ) from exc  # fmt: skip
    finally:
        if path is not None:
            Path(path).unlink(missing_ok=True)

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
    warning = _horizon_warning(entity, window, started)
    logger.warning(warning)
    _warning_artifact(entity, warning)
    return Completed(name=WARNING_STATE, message=warning, data=result)


def _horizon_warning(entity: Entity, window: Window, started: datetime) -> str:
    age = (started - window.reference).total_seconds() / 86400
    missed = "deletes" if entity is Entity.orders else "edits and deletes"
    return (
        f"{entity.value}: the previous {window.basis} is {age:.1f} days old, beyond the change log's "
        f"30 days; {missed} older than that may have been missed. "
        f"Import a full snapshot (`hub sync {entity.value}`)."
    )


@flow(name="fetch-new-orders", log_prints=True)
def fetch_new_orders(
    lookback_hours: float = DEFAULT_LOOKBACK_HOURS, since: datetime | None = None, lock_wait: float | None = 0
) -> dict[str, Any] | State:
    """Fetch orders created, changed or deleted since the last run; see the module docstring.

    ``since`` overrides the stored watermark (first run on an empty mirror, or a manual re-sync).
    Returns the counters (plus ``deleted``, ``fetched``, ``vanished``, ``watermark`` and
    ``deletes_may_be_missed``); calling the flow always gives the dict, also in the warning state.
    """
    return _locked_fetch(Entity.orders, lookback_hours, since, lock_wait)


@flow(name="fetch-changes", flow_run_name="fetch-{entity.value}-changes", log_prints=True)
def fetch_changes(
    entity: Entity,
    lookback_hours: float = DEFAULT_LOOKBACK_HOURS,
    since: datetime | None = None,
    lock_wait: float | None = 0,
) -> dict[str, Any] | State:
    """The change feed of customers or products (orders: the same run as ``fetch_new_orders``)."""
    return _locked_fetch(Entity(entity), lookback_hours, since, lock_wait)


def _locked_fetch(entity: Entity, lookback_hours: float, since: datetime | None, lock_wait: float | None) -> Any:
    """Fetches write the entity's tables: they take its job lock, like snapshot imports."""
    cfg = get_config()
    url = runtime.database_url(cfg)
    runtime.ensure_schema(url, cfg.db_schema)
    return run_locked(lambda: run_fetch(entity, lookback_hours, since), entity.value, url=url,
                      schema=cfg.db_schema, wait=lock_wait)


# --- artifacts (counts only: no personal data) --------------------------------------------------------


def _artifact(entity: Entity, result: dict[str, Any]) -> None:
    rows = counters_table(result) + [
        {"counter": k, "value": result[k]} for k in ("fetched", "vanished", "deletes_may_be_missed")
    ]
    try:
        create_table_artifact(
            rows,
            key=f"fetch-{entity.value}-counters",
            description=f"Counters of the last {entity.value} fetch (run {result.get('run_id')})",
        )
    except Exception:  # noqa: BLE001 - outside a Prefect run
        pass


def _warning_artifact(entity: Entity, warning: str) -> None:
    try:
        create_markdown_artifact(
            f"**Warning:** {warning}",
            key=f"fetch-{entity.value}-warning",
            description="Change log horizon exceeded",
        )
    except Exception:  # noqa: BLE001 - outside a Prefect run
        pass
