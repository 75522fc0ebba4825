"""``hub status [--json] [--no-prefect]``: what needs attention, for people and for monitors."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from deployments import ephemeral
from deployments.options import quiet_prefect

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def status_cmd(
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout (schema hub-status/1)."),
    no_prefect: bool = typer.Option(
        False, "--no-prefect", help="Only the database: no limit states, no runs of flows that only Prefect records."
    ),
) -> None:
    """Show the hub's health: last runs, open failed snapshots, partition runway, settings cache, locks.

    Exit code, for cron and monitors (`hub status --json > status.json || alert`):

    0: every check ok.

    1 (warn, needs attention soon): a failed snapshot awaiting its retry, a partition runway below
    partition_runway_quarters, a lock limit inactive, a slot in use with no holder recorded, no verified
    backup in 26 h, no restore test in 8 days.

    2 (fail, needs attention now): a failed or stuck last run, a failed snapshot given up or overdue,
    the current quarter's partition missing, a lock held by a dead holder, no verified backup in 50 h,
    the last backup's verification or test restore failed, a check that could not run.

    3: the database could not be read.
    """
    quiet_prefect()
    if not no_prefect:
        ephemeral.start()  # before the imports: the server starts while they run
    from db.connection import mask_url
    from deployments.options import fail
    from flows import runtime
    from flows.config import get_config
    from flows.status import EXIT_UNKNOWN, gather

    cfg = get_config()
    try:
        url = runtime.database_url(cfg)
        runtime.ensure_schema(url, cfg.db_schema)
        _wait_for_prefect(no_prefect)
        report = gather(url, cfg.db_schema, prefect=not no_prefect, backup_dir=cfg.backup_path)
    except Exception as exc:  # noqa: BLE001 - a monitor needs "unknown", not a traceback
        if as_json:
            print(json.dumps({"schema": "hub-status/1", "level": "unknown", "exit_code": EXIT_UNKNOWN,
                              "error": f"{type(exc).__name__}: {exc}"}))  # fmt: skip
            raise typer.Exit(EXIT_UNKNOWN) from None
        fail(f"cannot read the hub's database: {type(exc).__name__}: {exc}", EXIT_UNKNOWN)
    if as_json:
        print(json.dumps(report.as_dict(), default=str))
    else:
        _print(report, mask_url(url))
    raise typer.Exit(report.exit_code)


def _wait_for_prefect(no_prefect: bool) -> None:
    """A temporary server that does not start leaves Prefect unreadable: ``gather`` reports that as a warning."""
    if no_prefect:
        return
    try:
        ephemeral.wait_ready()
    except RuntimeError as exc:
        Console(stderr=True).print(f"[yellow]warning:[/] {exc}")


def _print(report, where: str) -> None:  # noqa: ANN001 - flows.status.Report, imported lazily
    console = Console(width=140)
    level = report.level
    console.print(f"hub {report.instance} ({where}): [{STYLE[level]}]{level.upper()}[/]")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_column(overflow="fold")
    for c in report.checks:
        table.add_row(c.name, f"[{STYLE[c.level]}]{c.level}[/]", c.detail)
    console.print(table)
    runs = next((c for c in report.checks if c.name == "runs"), None)
    if runs and runs.data.get("items"):
        t = Table(title="last runs", title_justify="left")
        for col in ("run", "state", "finished", "duration", "counters"):
            t.add_column(col)
        for i in runs.data["items"]:
            when = (i["finished_at"] or i["started_at"] or "")[:19].replace("T", " ")
            counters = ", ".join(f"{k} {v:,}" for k, v in i["counters"].items() if v)
            dur = "" if i["duration_s"] is None else f"{i['duration_s']:.1f} s"
            t.add_row(i["run"], f"[{STYLE[i['level']]}]{i['state']}[/]", when, dur, counters)
        console.print(t)
