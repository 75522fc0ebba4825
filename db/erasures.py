"""The erasure log that keeps erasures erased: which keys `hub forget` blanked, and when.

``erased_keys`` holds one row per erased order code and customer GUID (pseudonymous keys the shop
assigned, never an e-mail) with the erasure's ``erased_at``. Two readers:

- the loader (:func:`erased_since`, one query per apply): a line for an erased key is written only on
  evidence that the shop still holds the person: the snapshot was taken after the erasure (its job's
  creation time, a fetch's start), or the line's ``changeTime`` is after it. A retried pre-erasure job,
  a reused result or an old export never writes the person back; the line counts as ``skipped_older``;
- a restore (:func:`read_log`, :func:`reapply`): the erasures recorded after a backup was taken are
  read from the live database and re-applied to what was restored, and the log itself is carried over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

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


@dataclass
class ErasureLog:
    """Erasures (and their keys) recorded since some moment, as read from the live database."""

    erasures: list[tuple] = field(default_factory=list)  # (id, subject_sha256, rows, erased_at)
    keys: list[tuple] = field(default_factory=list)  # (entity, key, erasure_id, erased_at)

    def __bool__(self) -> bool:
        return bool(self.erasures)


def read_log(conn: psycopg.Connection, since: datetime) -> ErasureLog:
    """The erasures recorded at or after ``since`` (a backup's start: those it may not hold)."""
    erasures = conn.execute(
        "SELECT id, subject_sha256, rows, erased_at FROM erasures WHERE erased_at >= %s ORDER BY id", (since,)
    ).fetchall()
    keys = conn.execute(
        "SELECT entity, key, erasure_id, erased_at FROM erased_keys WHERE erased_at >= %s ORDER BY 1, 2", (since,)
    ).fetchall()
    return ErasureLog(erasures, keys)


def reapply(conn: psycopg.Connection, log: ErasureLog) -> dict[str, int]:
    """Re-apply ``log`` to a restored database (one transaction): blank the keys' rows again, drop the
    metrics identities whose e-mail hashes to an erased subject, blank rejects naming an erased key,
    and carry the log over. Returns the rows changed per table."""
    from db.forget import blank_rows  # forget imports this module

    changed: dict[str, int] = {}
    with conn.transaction():
        for erasure_id, subject, rows, erased_at in log.erasures:
            conn.execute(
                """INSERT INTO erasures (id, subject_sha256, rows, erased_at) OVERRIDING SYSTEM VALUE
                   VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO NOTHING""",
                (erasure_id, subject, Jsonb(rows), erased_at),
            )
        if conn.execute("SELECT to_regclass('erased_keys')").fetchone()[0] is not None:  # a pre-0007 backup has none
            for entity, key, erasure_id, erased_at in log.keys:
                record_keys(conn, erasure_id, erased_at, {entity: [key]})
        for entity, (table, key_column) in ERASED_TABLES.items():
            keys = [k for e, k, _, _ in log.keys if e == entity]
            changed[table] = blank_rows(conn, table, key_column, keys)
        subjects = [s for _, s, _, _ in log.erasures]
        digest = sql.SQL("encode(sha256(convert_to(lower(btrim({})), 'UTF8')), 'hex') = ANY(%s)")
        customer_key, email = digest.format(sql.Identifier("customer_key")), digest.format(sql.Identifier("email"))
        changed["customer_metrics"] = conn.execute(
            sql.SQL("DELETE FROM customer_metrics WHERE {}").format(customer_key), (subjects,)
        ).rowcount
        changed["customer_metrics"] += conn.execute(
            sql.SQL("UPDATE customer_metrics SET email = NULL WHERE {}").format(email), (subjects,)
        ).rowcount
        # the queue entries the orders' update triggers just wrote for the e-mail identity (as forget does)
        conn.execute(sql.SQL("DELETE FROM customer_metrics_queue WHERE {}").format(customer_key), (subjects,))
        every_key = [k for _, k, _, _ in log.keys]
        changed["snapshot_rejects"] = conn.execute(
            """UPDATE snapshot_rejects SET line = NULL WHERE line IS NOT NULL
                 AND EXISTS (SELECT FROM unnest(%s::text[]) k WHERE strpos(line, '"' || k || '"') > 0)""",
            (every_key,),
        ).rowcount
        conn.execute("SELECT setval(pg_get_serial_sequence('erasures', 'id'), coalesce(max(id), 1)) FROM erasures")
    return changed
