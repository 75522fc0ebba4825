"""``hub settings``: read and change the runtime business rules (the ``settings`` table).

Every command resolves the database like the flows do (``HUB_DATABASE_URL``/``HUB_DB_SCHEMA``) and runs
pending migrations first. A change reaches running flows through the table's NOTIFY trigger.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson
import typer
from pydantic_core import to_jsonable_python
from rich.console import Console

if TYPE_CHECKING:
    from db.settings.service import SettingsService

settings_app = typer.Typer(
    help="Runtime business rules (cancelled statuses, thresholds, …), cached per process.",
    no_args_is_help=True,
)
console = Console(stderr=True, soft_wrap=True)  # messages are not cut at 80 columns


def parse_cli_value(text: str) -> Any:
    """VALUE as JSON (``42``, ``[-4, 7]``, ``"42"``); anything that is not JSON is the string itself."""
    try:
        return orjson.loads(text)  # strict: NaN/Infinity are not JSON, so they stay strings
    except orjson.JSONDecodeError:
        return text


def dumps(value: Any) -> str:
    """A value as JSON; a default that is no JSON type (a date) in its JSON form, as it would be stored."""
    return json.dumps(to_jsonable_python(value), ensure_ascii=False)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


@contextmanager
def _service(*, listen: bool = False) -> Iterator[SettingsService]:
    from db.settings.service import SettingsService
    from flows import runtime
    from flows.config import get_config

    cfg = get_config()
    url = runtime.database_url(cfg)
    runtime.ensure_schema(url, cfg.db_schema)
    with SettingsService(url, cfg.db_schema, listen=listen) as svc:
        yield svc


@settings_app.command("get")
def get_cmd(key: str) -> None:
    """Print KEY's stored value as JSON (exit 1 if it is not set)."""
    from db.settings.rules import RULES

    missing = object()
    with _service() as svc:
        value = svc.get(key, missing, type_=Any)  # as stored: show even a value that fails its rule's type
    if value is missing:
        rule = RULES.get(key)
        hint = f"; flows use the default {dumps(rule.default)}" if rule else ""
        _fail(f"setting {key!r} is not set{hint}")
    typer.echo(dumps(value))


VALUE_ARGUMENT = typer.Argument(..., help='JSON (42, true, [-4, 7], {"a": 1}, "42"); else a string.')


@settings_app.command("set", context_settings={"ignore_unknown_options": True})
def set_cmd(key: str, value: str = VALUE_ARGUMENT) -> None:
    """Store VALUE under KEY; running flows see it at once (negative numbers need no `--`)."""
    from db.settings.service import SettingValueError

    parsed = parse_cli_value(value)
    try:
        with _service() as svc:
            version = svc.set(key, parsed)
            stored = svc.get(key, type_=Any)
    except SettingValueError as exc:
        _fail(str(exc))
    console.print(f"{key} = {dumps(stored)} (version {version})", highlight=False)


@settings_app.command("delete")
def delete_cmd(key: str) -> None:
    """Remove KEY (known rules fall back to their default)."""
    with _service() as svc:
        existed = svc.delete(key)
    if not existed:
        _fail(f"setting {key!r} is not set")
    console.print(f"deleted {key}", highlight=False)


@settings_app.command("list")
def list_cmd() -> None:
    """Print key, version, updated_at and value of every setting; unset known rules show their default."""
    from db.settings.rules import RULES

    with _service() as svc:
        rows = svc.list()
    table = [("key", "version", "updated_at", "value")]
    table += [(r.key, str(r.version), r.updated_at.isoformat(), dumps(r.value)) for r in rows]
    stored = {r.key for r in rows}
    table += [(k, "-", "(default)", dumps(r.default)) for k, r in sorted(RULES.items()) if k not in stored]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:  # the value comes last and is never cut, however long
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])


@settings_app.command("stats")
def stats_cmd() -> None:
    """Warm a cache in this process and print its counters.

    Counters are per process: each flow run or worker has its own cache and its own numbers. This shows
    the shape (one load per key, then hits) and that this process can connect and LISTEN.
    """
    from db.settings.rules import RULES

    with _service(listen=True) as svc:
        listening = svc.wait_listening(10.0)
        keys = sorted({r.key for r in svc.list()} | set(RULES))
        for _ in range(2):  # the first pass loads, the second hits
            for key in keys:
                svc.get(key, type_=Any)
        stats = svc.stats()
    for name, value in stats.as_dict().items():
        typer.echo(f"{name:<14} {value}")
    if not listening:
        _fail("the listener could not connect within 10 s: cross-process invalidation is not working")
