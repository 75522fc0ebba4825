"""Split the legacy partition into quarter partitions while writers keep inserting and updating.

Why not move rows out in batches (``DELETE … RETURNING`` into the parent): partition bounds cannot
overlap, so while ``order_items_legacy`` covers ``[MINVALUE, cutover)`` every row of that range is
routed to it; a row can only leave it together with a change of bounds, and a bound change of a
partition that still holds rows needs a scan under ACCESS EXCLUSIVE. Moving a row to a table that is
not yet attached would hide it from readers and lose the updates writers make to it meanwhile.

So the split copies, keeps the copy exact, and swaps the bounds in one catalog-only transaction:

1. prepare (idempotent): a shadow parent ``order_items_split`` (``LIKE order_items INCLUDING ALL``:
   the same columns and indexes), its quarter partitions — created by ``db/partitions/rollover.py`` with a
   CHECK of their range — for every quarter from the oldest legacy row to the cutover, a DEFAULT
   catch-all, a one-row progress table; then an AFTER ROW trigger on the legacy partition that
   mirrors every INSERT/UPDATE/DELETE into the shadow in the writer's own transaction;
2. copy in small batches in primary-key order, up to the last key present once the trigger exists (the
   trigger has every later row) (``… FOR SHARE`` then ``INSERT … ON CONFLICT DO
   NOTHING``), each batch one short transaction that also advances the progress row: resumable
   after a kill. ``FOR SHARE`` makes a writer's update of a row being copied wait for the batch (and
   the batch read the latest version of a row a writer just changed), so the copy and the trigger
   never disagree about a row's last version. A batch waits at most 100 ms for a row a writer holds,
   then rolls back and is retried: it gives way, and is never a writer's deadlock partner;
3. verify: count and checksum of the legacy partition and the shadow in one REPEATABLE READ
   snapshot (the trigger writes in the writer's transaction, so any snapshot sees both alike);
4. flip, one transaction under a short ``lock_timeout`` (retried): drop the trigger, DETACH the
   legacy partition, DETACH each shadow quarter and ATTACH it to ``order_items`` (its CHECK proves
   the range: no scan; its indexes match: adopted), rows a writer dated before the oldest quarter
   (the DEFAULT) go into quarters made for them, the shadow is dropped; the legacy table, detached,
   is marked verified;
5. the detached legacy table is dropped — only when the flip marked it a verified copy.

Cost: the legacy rows are stored twice until the flip (disk), and writers pay one more row write per
write to the legacy range while the trigger exists. A kill at any point leaves either the trigger
keeping the shadow exact (rerun continues the copy) or the flip done (rerun drops the legacy table).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg import sql

from db.dates import DateWindow
from db.ddl_retry import lock_timeout, retry_on_lock_timeout
from db.partitions import rollover as partitions
from db.partitions import shadow_indexes
from db.partitions.checksum import checksum
from db.partitions.migration import KEY, MigrationError, model_table, state
from db.partitions.rollover import LEGACY, PARENT, Quarter

log = logging.getLogger(__name__)

SPLIT = "order_items_split"
SPLIT_DEFAULT = "order_items_split_default"
PROGRESS = "order_items_split_progress"
TRIGGER = "order_items_legacy_sync"
FLIP_LOCK_TIMEOUT = "200ms"  # writers queue behind the waiting flip
SHORT_LOCK_TIMEOUT = "500ms"
BATCH_LOCK_TIMEOUT = "100ms"
BATCH_WAIT_BUDGET = 3600.0  # seconds of pauses a batch waits out a writer's rows (a full apply: up to an hour)
VERIFIED = "verified copy; rows="


def columns() -> list[str]:
    return [c.name for c in model_table().columns]


def _cols(prefix: str | None = None) -> sql.Composable:
    if prefix:
        return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.SQL(prefix), sql.Identifier(c)) for c in columns())
    return sql.SQL(", ").join(map(sql.Identifier, columns()))


def _exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def split_state(conn: psycopg.Connection) -> str:
    """not-migrated | to-prepare | copying | flipped (legacy detached, not yet dropped) | done."""
    st = state(conn)
    if st == "migrated":
        return "copying" if _exists(conn, PROGRESS) else "to-prepare"
    if st == "partitioned":
        return "flipped" if _exists(conn, LEGACY) else "done"
    return "not-migrated"


@dataclass
class Progress:
    rows_copied: int
    batches: int
    last_key: tuple | None
    legacy_estimate: int


def progress(conn: psycopg.Connection) -> Progress | None:
    if not _exists(conn, PROGRESS):
        return None
    r = conn.execute(
        sql.SQL("SELECT rows_copied, batches, last_order_code, last_item_id, last_created_at FROM {}").format(
            sql.Identifier(PROGRESS)
        )
    ).fetchone()
    est = conn.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)", (LEGACY,))
    if r is None:  # a table without its row (a kill inside an old prepare): nothing copied; prepare adds it
        return Progress(0, 0, None, est.fetchone()[0] or 0)
    return Progress(r[0], r[1], tuple(r[2:]) if r[2] is not None else None, est.fetchone()[0] or 0)


# --- 1. prepare ----------------------------------------------------------------------------------------


def prepare(conn: psycopg.Connection, *, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """The shadow, its quarters, the progress row and the sync trigger; each only if missing."""
    if not conn.autocommit:
        raise ValueError("the split needs an autocommit connection")
    if state(conn) != "migrated":
        raise MigrationError(f"there is no attached {LEGACY} partition to split: run `hub migrate-partitions` first")
    cutover = partitions.legacy_bound(conn)
    done = []
    if not _exists(conn, SPLIT):
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING ALL) PARTITION BY RANGE ({})").format(
                sql.Identifier(SPLIT), sql.Identifier(PARENT), sql.Identifier("created_at")
            )
        )
        done.append(f"created {SPLIT}")
    oldest = conn.execute(sql.SQL("SELECT min(created_at) FROM {}").format(sql.Identifier(LEGACY))).fetchone()[0]
    quarters = partitions.quarters_until(Quarter.of(oldest), cutover) if oldest is not None else []
    if quarters:
        wide = DateWindow(quarters[0].start, cutover - timedelta(microseconds=1))
        made = partitions.ensure_partitions(conn, quarters, parent=SPLIT, with_check=True, window=wide, sleep=sleep)
        done += [f"created shadow quarter {n}" for n in made]
    if partitions.create_default_partition(conn, SPLIT, SPLIT_DEFAULT):
        done.append(f"created {SPLIT_DEFAULT}")
    if _ensure_progress_row(conn):
        done.append(f"created {PROGRESS}")
    if _create_trigger(conn, sleep):
        done.append(f"created trigger {TRIGGER} on {LEGACY}")
    # The copy ends at the last key present once the trigger exists: later rows are the trigger's
    # (new orders sort last; a copy chasing them would never end while writers write).
    order_desc = sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(k)) for k in KEY)
    conn.execute(
        sql.SQL(
            "UPDATE {p} SET bounded = true, (end_order_code, end_item_id, end_created_at) = "
            "(SELECT {key} FROM {legacy} ORDER BY {desc} LIMIT 1) WHERE NOT bounded"
        ).format(
            p=sql.Identifier(PROGRESS),
            key=sql.SQL(", ").join(map(sql.Identifier, KEY)),
            legacy=sql.Identifier(LEGACY),
            desc=order_desc,
        )
    )
    return done


def _ensure_progress_row(conn: psycopg.Connection) -> bool:
    """The progress table and its one row, in one transaction (and the row whenever missing: a kill inside an
    older version's prepare left the table empty, on which every rerun failed). True if the table was created."""
    with conn.transaction():
        created = not _exists(conn, PROGRESS)
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (one boolean PRIMARY KEY DEFAULT true CHECK (one), "
                "rows_copied bigint NOT NULL DEFAULT 0, batches integer NOT NULL DEFAULT 0, last_order_code text, "
                "last_item_id bigint, last_created_at timestamptz, bounded boolean NOT NULL DEFAULT false, "
                "end_order_code text, end_item_id bigint, end_created_at timestamptz, "
                "updated_at timestamptz DEFAULT now())"
            ).format(sql.Identifier(PROGRESS))
        )
        conn.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES ON CONFLICT DO NOTHING").format(sql.Identifier(PROGRESS)))
    return created


def _create_trigger(conn: psycopg.Connection, sleep: Callable[[float], None]) -> bool:
    split, key = sql.Identifier(SPLIT), [sql.Identifier(k) for k in KEY]

    def match(rec: str) -> sql.Composable:
        return sql.SQL(" AND ").join(sql.SQL("{} = {}.{}").format(k, sql.SQL(rec), k) for k in key)

    body = sql.SQL(
        "BEGIN\n"
        "  IF TG_OP <> 'INSERT' THEN DELETE FROM {split} WHERE {old}; END IF;\n"
        "  IF TG_OP <> 'DELETE' THEN\n"
        "    DELETE FROM {split} WHERE {new};\n"
        "    INSERT INTO {split} ({cols}) VALUES ({vals});\n"
        "  END IF;\n"
        "  RETURN NULL;\n"
        "END"
    ).format(split=split, old=match("OLD"), new=match("NEW"), cols=_cols(), vals=_cols("NEW"))

    def step() -> bool:
        with conn.transaction(), lock_timeout(conn, SHORT_LOCK_TIMEOUT):
            have = conn.execute(
                "SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s", (LEGACY, TRIGGER)
            ).fetchone()
            if have:
                return False
            conn.execute(
                sql.SQL("CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
                    sql.Identifier(TRIGGER), sql.Literal(body.as_string(conn))
                )
            )
            # SHARE ROW EXCLUSIVE: waits for the writers in flight, so every later write fires it.
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
                ).format(sql.Identifier(TRIGGER), sql.Identifier(LEGACY), sql.Identifier(TRIGGER))
            )
            return True

    return retry_on_lock_timeout("create sync trigger", step, sleep=sleep)


# --- 2. copy -------------------------------------------------------------------------------------------


def copy_batch(
    conn: psycopg.Connection,
    size: int,
    *,
    sleep: Callable[[float], None] = time.sleep,
    wait_budget: float = BATCH_WAIT_BUDGET,
) -> int:
    """Copy the next ``size`` legacy rows (primary-key order) into the shadow; the number read (0: done).

    The batch waits at most ``BATCH_LOCK_TIMEOUT`` for a row a writer holds, then yields (rolls back)
    and is retried, so it is never a writer's deadlock partner. A full orders apply holds the rows it
    replaces for up to an hour: the batch retries (pauses up to 10 s) for ``wait_budget`` s, then
    raises MigrationError; nothing is lost, a rerun resumes from the progress row.
    """
    try:
        return retry_on_lock_timeout(
            "copy batch (a writer holds rows)",
            lambda: _copy_batch(conn, size),
            attempts=None,
            give_up_after=wait_budget,
            sleep=sleep,
        )
    except psycopg.errors.LockNotAvailable:
        raise MigrationError(
            f"a writer has held rows of {LEGACY} the copy needs for over {wait_budget:.0f} s (a long apply?): "
            "the copy stopped where it was; run `hub migrate-partitions --split` again to resume"
        ) from None


def _copy_batch(conn: psycopg.Connection, size: int) -> int:
    p = sql.Identifier(PROGRESS)
    with conn.transaction(), lock_timeout(conn, BATCH_LOCK_TIMEOUT):  # under deadlock_timeout (1 s)
        got = conn.execute(
            sql.SQL(
                "SELECT last_order_code, last_item_id, last_created_at, end_order_code, end_item_id, end_created_at "
                "FROM {} FOR UPDATE"
            ).format(p)
        ).fetchone()
        last, end = got[:3], got[3:]
        if end[0] is None:  # an empty legacy partition when the trigger came: nothing to copy
            return 0
        key = sql.SQL(", ").join(map(sql.Identifier, KEY))
        after = sql.SQL("({}) <= ({}, {}, {})").format(key, *map(sql.Literal, end))
        if last[0] is not None:
            after = sql.SQL("({}) > ({}, {}, {}) AND {}").format(key, *map(sql.Literal, last), after)
        order = sql.SQL(", ").join(map(sql.Identifier, KEY))
        desc = sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(k)) for k in KEY)
        row = conn.execute(
            sql.SQL(
                "WITH src AS (SELECT {cols} FROM {legacy} WHERE {after} ORDER BY {order} LIMIT {n} FOR SHARE), "
                "ins AS (INSERT INTO {split} ({cols}) SELECT {cols} FROM src ON CONFLICT DO NOTHING) "
                "SELECT {order}, count(*) OVER () FROM src ORDER BY {desc} LIMIT 1"
            ).format(
                cols=_cols(),
                legacy=sql.Identifier(LEGACY),
                split=sql.Identifier(SPLIT),
                after=after,
                order=order,
                desc=desc,
                n=sql.Literal(size),
            )
        ).fetchone()
        if row is None:
            return 0
        conn.execute(
            sql.SQL(
                "UPDATE {} SET last_order_code = %s, last_item_id = %s, last_created_at = %s, "
                "rows_copied = rows_copied + %s, batches = batches + 1, updated_at = now()"
            ).format(p),
            row,
        )
        return int(row[3])


# --- 3. verify -----------------------------------------------------------------------------------------


def verify(conn: psycopg.Connection) -> tuple[int, int]:
    """Legacy and shadow equal in one snapshot; (rows, checksum), or MigrationError."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        legacy, shadow = checksum(conn, LEGACY), checksum(conn, SPLIT)
    if legacy != shadow:
        raise MigrationError(
            f"the copy differs from {LEGACY} (rows {legacy[0]} vs {shadow[0]}): nothing was flipped. "
            f"Drop {SPLIT}, {PROGRESS} and the trigger {TRIGGER} on {LEGACY}, then run --split again"
        )
    return legacy


# --- 4. flip -------------------------------------------------------------------------------------------


def flip(conn: psycopg.Connection, verified: tuple[int, int], window: DateWindow) -> list[str]:
    """One transaction: the legacy partition out, the shadow quarters in; the names attached."""
    t = sql.Identifier(PARENT)
    with conn.transaction(), lock_timeout(conn, FLIP_LOCK_TIMEOUT):
        for name in (PARENT, LEGACY, SPLIT):  # the writers' order: parent, partition, then the shadow
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(name)))
        if split_state(conn) != "copying":
            return []
        quarters = sorted(partitions.existing_partitions(conn, SPLIT) - {SPLIT_DEFAULT})
        shadow_indexes.refuse_if_missing(conn, quarters)  # an ATTACH must never build one under this lock
        conn.execute(sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(TRIGGER), sql.Identifier(LEGACY)))
        conn.execute(sql.SQL("DROP FUNCTION {}()").format(sql.Identifier(TRIGGER)))
        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(t, sql.Identifier(LEGACY)))
        attached = []
        for name in quarters:
            quarter = partitions.quarter_of_name(name)
            conn.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(sql.Identifier(SPLIT), sql.Identifier(name))
            )
            conn.execute(
                sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                    t, sql.Identifier(name), sql.Literal(quarter.start), sql.Literal(quarter.end)
                )
            )
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(name), sql.Identifier(partitions.range_check_name(quarter))
                )
            )
            attached.append(name)
        attached += _rehome_default_rows(conn, window)
        conn.execute(sql.SQL("DROP TABLE {}, {}").format(sql.Identifier(SPLIT), sql.Identifier(PROGRESS)))
        conn.execute(
            sql.SQL("COMMENT ON TABLE {} IS {}").format(
                sql.Identifier(LEGACY), sql.Literal(f"{VERIFIED}{verified[0]} checksum={verified[1]}")
            )
        )
    return attached


def _rehome_default_rows(conn: psycopg.Connection, window: DateWindow) -> list[str]:
    """Rows a writer dated before the oldest quarter while the split ran: quarters for them, then the rows."""
    d = sql.Identifier(SPLIT_DEFAULT)
    dates = [r[0] for r in conn.execute(sql.SQL("SELECT DISTINCT created_at FROM {}").format(d))]
    if not dates:
        return []
    made = partitions.ensure_partitions(conn, sorted({Quarter.of(x) for x in dates}), window=window)
    conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(sql.Identifier(PARENT), _cols(), _cols(), d))
    return made


# --- 5. drop the detached legacy table -----------------------------------------------------------------


def drop_legacy(conn: psycopg.Connection) -> int:
    """Drop the detached legacy table when the flip marked it a verified copy; the rows it held at verification.

    The mark is written by the flip in the transaction that detached it: the verification compared it
    with the copy in one snapshot, and the sync trigger kept the copy exact until that very transaction.
    """
    if state(conn) != "partitioned":
        raise MigrationError(f"{LEGACY} is still a partition of order_items: not dropped")
    comment = conn.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (LEGACY,)).fetchone()[0] or ""
    if not comment.startswith(VERIFIED):
        raise MigrationError(f"{LEGACY} is detached but not marked as a verified copy: left in place, check it by hand")
    rows = int(comment[len(VERIFIED) :].split()[0])
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(LEGACY)))
    log.info("dropped the detached %s (%d rows at verification, copied)", LEGACY, rows)
    return rows


def flip_with_retries(
    conn: psycopg.Connection, verified: tuple[int, int], window: DateWindow, *, sleep: Callable[[float], None]
) -> list[str]:
    """The indexes the parent gained since ``prepare`` built on the shadow quarters (concurrently), then the flip."""
    quarters = sorted(partitions.existing_partitions(conn, SPLIT) - {SPLIT_DEFAULT})
    for built in shadow_indexes.build_missing(conn, quarters, sleep=sleep):
        log.info("built %s before the flip", built)
    return retry_on_lock_timeout("flip", lambda: flip(conn, verified, window), sleep=sleep)
