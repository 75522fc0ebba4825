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

    api = _running_server()
    console.print(f"Prefect: the running server {api}" if api else "Prefect: ephemeral mode (a throwaway server)…")
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
    for line in next_steps(url, api):
        console.print(line, soft_wrap=True)
    return 0


def _running_server() -> str | None:
    """The Prefect API the flows will use: PREFECT_API_URL (set by the CLI when `hub serve` is up), or none.

    None too for the temporary server the CLI started itself (``deployments.ephemeral``): its runs go with it."""
    from prefect.settings import PREFECT_API_URL

    from deployments import ephemeral

    if ephemeral.running() is not None:
        return None
    return PREFECT_API_URL.value() or None


def next_steps(url: str, api: str | None) -> list[str]:
    """Where to look at what the demo did: the UI (or how to get one), and the commands on its database."""
    if api:
        ui = api.removesuffix("/").removesuffix("/api")
        lines = [f"Prefect UI: {ui}/runs (the demo's flow runs, their logs and artifacts)"]
    else:
        lines = ["Prefect ran in ephemeral mode: its runs are gone. `hub serve` keeps them in a UI (then re-run)."]
    from psycopg.conninfo import conninfo_to_dict

    secret = bool(conninfo_to_dict(url).get("password"))
    lines += [
        f"The other commands act on {runtime.DEFAULT_DATABASE}; on the demo's database set HUB_DATABASE_URL:",
        f"  export HUB_DATABASE_URL='{mask_url(url) if secret else url}'" + ("  # password masked" * secret),
        "  hub status; hub metrics; hub backup",
        "  unset HUB_DATABASE_URL   # back to the hub's own database",
    ]
    return lines


def _warm_up(console: Console) -> None:
    """Start Prefect's ephemeral server (if one is needed) before the progress bars, so they time only the
    imports. A client's health check does it; a throwaway flow would be listed among the user's flows."""
    from prefect.client.orchestration import get_client

    from deployments import ephemeral

    ephemeral.wait_ready(console)

    with get_client(sync_client=True) as client:
        client.api_healthcheck()


def _summary(console: Console, url: str, schema: str, results: dict[str, dict]) -> None:
    from flows.counters import KEYS, label

    table = Table(title="Snapshot import")
    for col in ("entity", "lines", *map(label, KEYS), "apply s", "total s"):
        table.add_column(col, justify="right" if col != "entity" else "left")
    for entity, c in results.items():
        table.add_row(
            entity,
            *(f"{c.get(k, 0):,}" for k in ("lines", *KEYS)),
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
