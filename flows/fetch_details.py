"""Details of changed entities, three at a time on one shared client, streamed to a JSON Lines file.

The shared client's limiter holds Shoptet's 3-connections-per-token cap, the leaky bucket and 429
pauses for every thread. A detail that 404s was deleted after it was listed: counted as vanished.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO

import orjson

from flows.entities import Entity
from flows.snapshot_tasks import ORDER_INCLUDE
from shoptet.client import ShoptetClient
from shoptet.errors import NotFoundError

DETAIL_WORKERS = 3  # Shoptet allows 3 connections per token (reference §3)

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


def write_details(get: Getter, keys: Iterable[str], out: BinaryIO, workers: int = DETAIL_WORKERS) -> tuple[int, int]:
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
