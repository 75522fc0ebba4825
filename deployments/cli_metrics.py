"""``hub metrics [--full]``: recompute customer metrics and print customers per segment and movement."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from deployments.options import fail, parse_when, quiet_prefect

EX_TEMPFAIL = 75  # sysexits.h "try again later", as for the other jobs' locks

console = Console(stderr=True, soft_wrap=True)  # messages are not cut at 80 columns (a log file)


def metrics(
    full: bool = typer.Option(
        False, "--full", help="Recompute every customer, not only those changed since the last run."
    ),
    as_of: str | None = typer.Option(
        None, "--as-of", help="ISO 8601 time recency is measured from (UTC if no offset); default now."
    ),
    wait: float = typer.Option(
        0.0,
        "--wait",
        metavar="SECONDS",
        help="Wait up to SECONDS for the metrics lock; without it a held lock exits at once with code 75.",
    ),
) -> None:
    """Recompute customer metrics and RFM segments (incremental unless --full)."""
    quiet_prefect()
    from db.metrics.compute import MetricsBusyError
    from db.metrics.rules import MetricsSettingsError
    from flows.locks import LockHeld
    from flows.metrics import recalculate_customer_metrics, segments_with_total

    when = parse_when(as_of, "--as-of")
    try:
        out = recalculate_customer_metrics(full=full, as_of=when, lock_wait=wait)
    except LockHeld as exc:
        fail(str(exc), exc.exit_code)
    except MetricsBusyError as exc:
        fail(str(exc), EX_TEMPFAIL)
    except MetricsSettingsError as exc:
        fail(f"{exc} (fix it with `hub settings set …`)")
    print_result(out, segments_with_total(out))


def print_result(out: dict[str, Any], segments: list[dict[str, Any]]) -> None:
    as_of = datetime.fromisoformat(out["as_of"]).strftime("%Y-%m-%d %H:%M %z")
    # Short headers and no vertical rules: the seven columns fit an 80-column terminal.
    table = Table(
        title=f"Customer segments ({out['mode']} run, as of {as_of})",
        box=box.SIMPLE_HEAD,
        caption="in / out: moved from / to another segment since the last run",
    )
    headers = ("segment", "customers", "last run", "in", "out", "new", "removed")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for r in segments:
        table.add_row(
            r["segment"], *(str(r[k]) for k in ("customers", "previous", "moved_in", "moved_out", "new", "removed"))
        )
    out_console = Console(soft_wrap=True)  # the summary line stays whole in a log file
    out_console.print(table)
    out_console.print(
        f"{out['moved']} customers moved between segments; {out['recomputed']} recomputed, {out['removed']} removed "
        f"({out['reason']}, {out['seconds']:.2f} s). Unattributed orders (no e-mail, no customer GUID): "
        f"{out['unattributed_orders']}, revenue {out['unattributed_revenue']} {out.get('currency') or ''}".rstrip()
        + "."
    )
