"""The erasure log that keeps erasures erased: which keys `hub forget` blanked, and when.

``erased_keys`` holds one row per erased order code and customer GUID (pseudonymous keys the shop
assigned, never an e-mail) with the erasure's ``erased_at``. Two readers:

- the loader (:func:`erased_since`, one query per apply): a line for an erased key is written only if
  its ``changeTime`` is after the erasure, the one evidence that the shop changed the record since
  (and so still holds the person). A retried pre-erasure job, a reused result or an old export never
  writes the person back; the line counts as ``skipped_older``;
- a restore (:func:`read_log`, :func:`reapply`): the erasures recorded after a backup was taken are
  read from the live database and re-applied to what was restored, and the log itself is carried over.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

# entity → (table, key column) of what `hub forget` blanks
ERASED_TABLES = {"customers": ("customers", "guid"), "orders": ("orders", "code")}


def record_keys(conn: psycopg.Connection, erasure_id: int, erased_at: datetime, keys: dict[str, list[str]]) -> None:
    """Note the keys one erasure blanked (in the erasure's own transaction)."""
    for entity, entity_keys in keys.items():
        if entity_keys:
            conn.execute(
                """INSERT INTO erased_keys (entity, key, erasure_id, erased_at)
                   SELECT %s, k, %s, %s FROM unnest(%s::text[]) AS k
                   ON CONFLICT (entity, key) DO UPDATE SET erasure_id = EXCLUDED.erasure_id,
                       erased_at = greatest(erased_keys.erased_at, EXCLUDED.erased_at)""",
                (entity, erasure_id, erased_at, entity_keys),
            )


def erased_since(conn: psycopg.Connection, entity: str) -> dict[str, datetime]:
    """Every erased key of ``entity`` with the time of its (latest) erasure; empty for most shops."""
    if entity not in ERASED_TABLES:
        return {}
    return dict(conn.execute("SELECT key, erased_at FROM erased_keys WHERE entity = %s", (entity,)).fetchall())
