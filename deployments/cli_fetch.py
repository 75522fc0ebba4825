"""``hub fetch-orders`` and ``hub fetch-changes ENTITY``: the incremental fetch flows (flows/fetch.py).

Typer command functions, registered in ``deployments/cli.py``. Prefect is imported inside the
commands, after the CLI has quietened it.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from deployments.options import fail, parse_when, quiet_prefect
from flows.entities import Entity

console = Console(stderr=True, soft_wrap=True)  # messages are not cut at 80 columns (a log file)

_LOOKBACK = typer.Option(2.0, "--lookback-hours", min=0.0, help="Re-read this much before the watermark.")
_SINCE = typer.Option(
    None, help="Start here instead of the watermark (ISO 8601; UTC if no offset): first run or a re-sync."
)


_WAIT = typer.Option(
    0.0,
    "--wait",
    metavar="SECONDS",
    help="Wait up to SECONDS for the entity's lock; without it a held lock exits at once with code 75.",
)


def fetch_orders_cmd(lookback_hours: float = _LOOKBACK, since: str | None = _SINCE, wait: float = _WAIT) -> None:
    """Fetch orders created, changed or deleted since the last fetch (change log + listing + details)."""
    _run(Entity.orders, lookback_hours, since, wait)


def fetch_changes_cmd(
    entity: Entity, lookback_hours: float = _LOOKBACK, since: str | None = _SINCE, wait: float = _WAIT
) -> None:
    """Apply ENTITY's change feed (edits and deletes) since the last fetch."""
    _run(entity, lookback_hours, since, wait)


def _run(entity: Entity, lookback_hours: float, since: str | None, wait: float) -> None:
    quiet_prefect()
    from flows.fetch import FetchFailed, fetch_changes, fetch_new_orders
    from flows.locks import LockHeld

    start = parse_when(since, "--since")
    try:
        if entity is Entity.orders:
            result = fetch_new_orders(lookback_hours=lookback_hours, since=start, lock_wait=wait)
        else:
            result = fetch_changes(entity, lookback_hours=lookback_hours, since=start, lock_wait=wait)
    except LockHeld as exc:
        fail(str(exc), exc.exit_code)
    except FetchFailed as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - the CLI reports every failure with its reason
        fail(f"{type(exc).__name__}: {exc}")
    _print(entity.value, result)
    if result.get("deletes_may_be_missed"):
        console.print(
            f"[bold yellow]warning:[/] the previous fetch is older than the change log's 30 days; changes "
            f"may have been missed. Run `hub sync {entity.value}` (a full snapshot)."
        )


def _print(entity: str, result: dict[str, Any]) -> None:
    table = Table(title=f"{entity} fetch")
    table.add_column("counter")
    table.add_column("value", justify="right")
    from flows.counters import KEYS, label

    for key in ("lines", *KEYS, "fetched", "vanished"):
        table.add_row(label(key), str(result.get(key, 0)))
    table.add_row("watermark", str(result.get("watermark")))
    Console().print(table)
