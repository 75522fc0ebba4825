"""``hub demo``: the whole pipeline on embedded defaults, offline and re-runnable.

Embedded PostgreSQL (its own ``shoptet_hub_demo`` database, never the one a real shop is synced into),
migrations, the sandbox Shoptet API on a free localhost port, then snapshot imports of customers,
products and orders through the real flows under Prefect's ephemeral mode.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from db.connection import connection, ensure_database, mask_url
from db.embedded import embedded_server_url, pgdata_dir
from flows import progress as progress_hooks
from flows import runtime
from flows.config import get_config

DEMO_DATABASE = "shoptet_hub_demo"
DEMO_WEBHOOK = "https://hub.invalid/shoptet/job-finished"  # the sandbox never calls it; we poll
ENTITIES = ("customers", "products", "orders")
TABLES = ("customers", "products", "product_variants", "orders", "order_items", "snapshot_rejects")


def run_demo(orders: int = 20_000, seed: int = 42, console: Console | None = None) -> int:
    from flows.snapshot import Entity, SnapshotFailed, import_snapshot
    from shoptet.client import ShoptetClient
    from shoptet.sandbox import REFERENCE, RealClock
    from shoptet.sandbox.server import SandboxServer

    console = console or (Console() if sys.stdout.isatty() else Console(width=110))
    cfg = get_config()
    console.print(f"[bold]Shoptet Commerce Hub demo[/] — {orders:,} sandbox orders")
    console.print(f"embedded PostgreSQL data: {pgdata_dir(cfg.home)}")
    url = ensure_database(embedded_server_url(cfg.home), DEMO_DATABASE)
    console.print(f"database: {mask_url(url)}")
    runtime.ensure_schema(url, cfg.db_schema)

    console.print("starting Prefect (ephemeral mode)…")
    _warm_up(console)
    results: dict[str, dict] = {}
    # Fixed data reference (not "today"): a re-run on another day serves the same shop, so it is unchanged.
    # The sandbox's clock runs 10x fast and the client sleeps on it: job waits take a tenth of the time.
    with SandboxServer(
        orders=orders, seed=seed, job_seconds=5.0, clock=RealClock(scale=10.0), reference=REFERENCE
    ) as sb:
        console.print(f"sandbox Shoptet API: {sb.base_url}")

        def client() -> ShoptetClient:
            return ShoptetClient(sb.base_url, sb.token, clock=sb.clock.time, sleep=sb.clock.sleep)

        with runtime.override(database_url=url, client_factory=client, webhook_url=DEMO_WEBHOOK):
            with Progress(
                TextColumn("{task.description:<10}"),
                BarColumn(),
                TextColumn("{task.fields[lines]:>9,} lines"),
                TimeElapsedColumn(),
                console=console,
            ) as bar:
                for entity in ENTITIES:
                    task_id = bar.add_task(entity, total=1.0, lines=0)

                    def on_progress(lines: int, done: int, total: int, _t=task_id) -> None:
                        bar.update(_t, completed=done / total if total else 1.0, lines=lines)

                    unsubscribe = progress_hooks.subscribe(on_progress)
                    started = time.perf_counter()
                    try:
                        counters = import_snapshot(Entity(entity))
                    except SnapshotFailed as exc:
                        console.print(f"[red]{entity} failed:[/] {exc}")
                        return 1
                    finally:
                        unsubscribe()
                    counters["wall_seconds"] = time.perf_counter() - started
                    bar.update(task_id, completed=1.0)
                    results[entity] = counters

    _summary(console, url, cfg.db_schema, results)
    console.print(f"Data lives in {pgdata_dir(cfg.home)} (database {DEMO_DATABASE}); re-run to see it unchanged.")
    return 0


def _warm_up(console: Console) -> None:
    """Start Prefect's ephemeral server before the progress bars, so they time only the imports."""
    from deployments import ephemeral

    ephemeral.wait_ready(console)
    from prefect import flow

    with console.status("Prefect: a first flow run (warm-up)…"):
        flow(name="hub-demo-warm-up")(lambda: None)()


def _summary(console: Console, url: str, schema: str, results: dict[str, dict]) -> None:
    table = Table(title="Snapshot import")
    for col in ("entity", "lines", "new", "updated", "same", "rejected", "deleted", "apply s", "total s"):
        table.add_column(col, justify="right" if col != "entity" else "left")
    for entity, c in results.items():
        table.add_row(
            entity,
            *(f"{c[k]:,}" for k in ("lines", "inserted", "updated", "unchanged", "rejected", "deleted")),
            f"{c['seconds']:.1f}",
            f"{c['wall_seconds']:.1f}",
        )
    console.print(table)

    counts = Table(title="Rows per table")
    counts.add_column("table")
    counts.add_column("rows", justify="right")
    from psycopg import sql

    with connection(url, schema) as conn:
        for t in TABLES:
            n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
            counts.add_row(t, f"{n:,}")
    console.print(counts)
    o = results.get("orders")
    if o and o["seconds"]:
        items = o["child_rows"]
        if items:
            console.print(f"order items written: {items:,} ({items / o['seconds']:,.0f} items/s in the apply)")
        else:
            console.print("order items written: 0 (nothing changed since the last run)")
