"""Small shared pieces of the CLI."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)  # messages are not cut at 80 columns (a log file)


def quiet_prefect() -> None:
    """Before a command imports Prefect: no analytics, and only warnings in the terminal.

    Only the console handler is raised to WARNING: the loggers stay at INFO, so the runs' INFO lines still
    reach the Prefect API (each run's logs in the UI). Workers started by `hub serve` inherit both.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def _not_a_run_failure(record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and record.name.startswith(("prefect.flow_runs", "prefect.task_runs")))


@contextmanager
def run_failures_off_the_terminal() -> Iterator[None]:
    """Prefect's ERROR records of a failing flow or task run (its state, the traceback) stay off the
    terminal: the command prints the one error itself. They still reach the Prefect API (the run's logs)."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    for h in handlers:
        h.addFilter(_not_a_run_failure)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(_not_a_run_failure)


def fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def parse_when(value: str | None, flag: str) -> datetime | None:
    """An ISO 8601 option value as an aware datetime (UTC when it has no offset)."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{flag} {value!r} is not an ISO 8601 date-time (e.g. 2026-11-01T00:00:00+01:00)")
    return when if when.tzinfo else when.replace(tzinfo=UTC)
