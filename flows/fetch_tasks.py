"""The incremental fetch's steps, one Prefect task each (``flows/fetch.py`` has the recipe)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from db.connection import connection
from db.sync_state import add_run_deletes, delete_from_change_log, save_watermark
from flows import runtime
from flows.entities import Entity
from flows.fetch_details import detail_getter, write_details
from flows.reporting import logger
from flows.retrying import RETRIES
from flows.runs import failed_at
from flows.shoptet_api import make_client
from shoptet.client import CHANGE_KEY
from shoptet.timefmt import parse_datetime


def sync_key(entity: Entity) -> str:
    return f"fetch:{Entity(entity).value}"


# NO_CACHE: these read the live shop; equal inputs in a later run must still hit the API.
_RETRY: dict[str, Any] = dict(RETRIES, cache_policy=NO_CACHE)


@dataclass
class ChangeSet:
    edits: list[str] = field(default_factory=list)  # keys whose last change is an edit (or add)
    deletes: list[tuple[str, datetime]] = field(default_factory=list)  # (key, changeTime)
    malformed: int = 0


@task(name="read-change-log", on_failure=[failed_at("change-log")], **_RETRY)
def read_change_log(entity: Entity, since: datetime) -> ChangeSet:
    entity = Entity(entity)
    id_field = CHANGE_KEY[entity.value]
    latest: dict[str, tuple[datetime, str]] = {}
    out = ChangeSet()
    with make_client() as client:
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
    logger().info(
        "%s change log: %d edited, %d deleted, %d malformed entries",
        entity.value,
        len(out.edits),
        len(out.deletes),
        out.malformed,
    )
    return out


@task(name="list-changed-orders", on_failure=[failed_at("listing")], **_RETRY)
def list_changed_orders(since: datetime) -> list[str]:
    with make_client() as client:
        codes = [str(o["code"]) for o in client.iter_orders({"changeTimeFrom": since}) if o.get("code")]
    logger().info("order listing: %d orders changed in the window", len(codes))
    return codes


@dataclass(frozen=True)
class FetchedFile:
    path: str
    fetched: int
    vanished: int


@task(name="fetch-details", on_failure=[failed_at("details")], **_RETRY)
def fetch_details(entity: Entity, keys: list[str]) -> FetchedFile:
    """Stream the details of ``keys`` to a JSON Lines file in the scratch folder."""
    entity = Entity(entity)
    cfg = runtime.hub().cfg
    cfg.scratch_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"fetch-{entity.value}-", suffix=".jsonl", dir=cfg.scratch_dir)
    try:
        with os.fdopen(fd, "wb") as out, make_client(cfg) as client:
            fetched, vanished = write_details(detail_getter(client, entity), keys, out)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    logger().info("%s: fetched %d details, %d vanished since listed", entity.value, fetched, vanished)
    return FetchedFile(name, fetched, vanished)


@task(name="commit-deletes-and-watermark", on_failure=[failed_at("deletes")], **_RETRY)
def commit_deletes_and_watermark(
    entity: Entity,
    deletes: list[tuple[str, datetime]],
    run_id: int,
    watermark: datetime,
    details: dict[str, Any],
) -> int:
    """One transaction after the apply committed: change-log deletes, their count, the watermark."""
    entity = Entity(entity)
    hub = runtime.hub()
    with connection(hub.url, hub.schema) as conn, conn.transaction():
        deleted = delete_from_change_log(conn, entity.value, deletes)
        add_run_deletes(conn, run_id, deleted)
        save_watermark(conn, sync_key(entity), watermark, {**details, "deleted": deleted})
    logger().info("%s: %d deleted from the change log; watermark saved", entity.value, deleted)
    return deleted


@contextmanager
def fetched_details(entity: Entity, keys: list[str]) -> Iterator[FetchedFile]:
    """The details file for the block; deleted afterwards, applied or not."""
    fetched = fetch_details(entity, keys)
    try:
        yield fetched
    finally:
        Path(fetched.path).unlink(missing_ok=True)
