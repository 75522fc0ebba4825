"""SQL for the ``settings`` table: one function per statement, each taking a psycopg connection.

Values travel as JSON text (``value::text`` / ``%s::jsonb``) so the cache can keep the exact bytes and hand
out fresh copies; NOTIFY is sent by the trigger from migration 0002, never from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql

CHANNEL = "hub_settings"  # the trigger's pg_notify channel (migration 0002)
TABLE = "settings"


@dataclass(frozen=True)
class SettingRow:
    key: str
    value: Any
    version: int
    updated_at: datetime


@dataclass(frozen=True)
class Change:
    """One notification. ``key is None``: every key may have changed; ``schema is None``: in every schema."""

    schema: str | None
    key: str | None

    def concerns(self, schema: str) -> bool:
        return self.schema is None or self.schema == schema


def _table(schema: str) -> sql.Composable:
    return sql.Identifier(schema, TABLE)


def fetch_json(conn: psycopg.Connection, schema: str, key: str) -> bytes | None:
    """The stored value as JSON bytes, or None when the key is absent."""
    row = conn.execute(sql.SQL("SELECT value::text FROM {} WHERE key = %s").format(_table(schema)), (key,)).fetchone()
    return None if row is None else row[0].encode()


def upsert(conn: psycopg.Connection, schema: str, key: str, value_json: str) -> int:
    """Insert or replace one value, bumping ``version`` and ``updated_at``; returns the new version."""
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {t} AS s (key, value) VALUES (%s, %s::jsonb) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, version = s.version + 1, "
            "updated_at = now() RETURNING version"
        ).format(t=_table(schema)),
        (key, value_json),
    ).fetchone()
    assert row is not None
    return int(row[0])


def delete(conn: psycopg.Connection, schema: str, key: str) -> bool:
    cur = conn.execute(sql.SQL("DELETE FROM {} WHERE key = %s").format(_table(schema)), (key,))
    return cur.rowcount > 0


def list_rows(conn: psycopg.Connection, schema: str) -> list[SettingRow]:
    rows = conn.execute(
        sql.SQL("SELECT key, value::text, version, updated_at FROM {} ORDER BY key").format(_table(schema))
    ).fetchall()
    return [SettingRow(k, orjson.loads(v), int(ver), ts) for k, v, ver, ts in rows]


def listen(conn: psycopg.Connection) -> None:
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))


EVERYTHING = Change(None, None)


def parse_payload(payload: str) -> Change:
    """The trigger's ``{"schema": …, "key": …}``.

    Anything else (e.g. a bare ``NOTIFY hub_settings`` typed in psql) drops every cached key: when in
    doubt, reload rather than serve a stale rule.
    """
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return EVERYTHING
    if not isinstance(data, dict) or not isinstance(data.get("schema"), str):
        return EVERYTHING
    key = data.get("key")
    return Change(data["schema"], key if isinstance(key, str) else None)
