"""Online migration of a plain (pre-partitioning) ``order_items`` into the partitioned layout.

The old table becomes one big partition, ``order_items_legacy``, covering ``[MINVALUE, cutover)``;
no row moves (reference §2b). Writers keep inserting and updating throughout:

1. ``CREATE UNIQUE INDEX CONCURRENTLY order_items_legacy_pkey (order_code, item_id, created_at)``: the
   partitioned table's primary key must include the partition key, and ATTACH adopts a primary key
   only (a plain unique index would make it build a new one, under the lock);
2. every index the model declares on ``order_items`` that the old table lacks, ``CONCURRENTLY``
   (ATTACH adopts a matching index; a missing one it would build under the lock);
3. ``ADD CONSTRAINT order_items_legacy_range CHECK (created_at IS NOT NULL AND created_at < cutover)
   NOT VALID`` (a brief lock, no scan), then ``VALIDATE`` (a full scan under SHARE UPDATE EXCLUSIVE:
   reads and writes go on). The cutover is the start of the quarter after the accepted dates
   (``db.dates.DateWindow``), so no row a writer may legally write violates it meanwhile;
4. one short transaction under ``SET LOCAL lock_timeout``: rename the old table, swap its primary key
   for the pre-built index (``USING INDEX``: no build; the validated CHECK proves NOT NULL, no scan),
   create the partitioned ``order_items`` exactly as the model compiles it, and ``ATTACH`` the old
   table ``FOR VALUES FROM (MINVALUE) TO (cutover)`` — the validated CHECK lets ATTACH skip its scan.
   Statements queued on the old table's lock re-resolve the name and go to the new parent.

Quarters from the cutover on are created as usual by ``db/partitions/rollover.py`` (rollover, loader); the
quarters below it are held by the legacy partition until ``--split`` (``db/partitions/split.py``).

Idempotent: each step checks the catalog first (an index present and valid, the constraint present,
validated, the table partitioned), so a rerun after a kill continues where the last one stopped; an
INVALID index left by a killed concurrent build is dropped and rebuilt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from db.dates import DateWindow
from db.ddl_retry import lock_timeout, retry_on_lock_timeout
from db.indexes.build import build_concurrently
from db.partitions.rollover import LEGACY, PARENT, Quarter
from models.tables import metadata

log = logging.getLogger(__name__)

KEY = ("order_code", "item_id", "created_at")
LEGACY_PKEY = f"{LEGACY}_pkey"
RANGE_CHECK = f"{LEGACY}_range"
SWAP_LOCK_TIMEOUT = "200ms"  # writers queue behind the waiting swap: keep their wait well under 1 s
SHORT_LOCK_TIMEOUT = "500ms"  # ADD CONSTRAINT … NOT VALID: a brief ACCESS EXCLUSIVE
CONCURRENT_LOCK_TIMEOUT = "30s"  # VALIDATE: its wait never holds writers up


class MigrationError(Exception):
    """The migration cannot go on; the message says why and what to do."""


@dataclass
class Step:
    name: str
    done: bool
    detail: str = ""


@dataclass
class MigrationPlan:
    state: str  # absent | plain | migrated (legacy attached) | partitioned (nothing to migrate)
    cutover: datetime | None
    steps: list[Step] = field(default_factory=list)

    def describe(self) -> list[str]:
        if self.state == "partitioned":
            return ["order_items is already partitioned (no legacy partition): nothing to migrate"]
        if self.state == "absent":
            return ["there is no order_items table: nothing to migrate"]
        return [f"{'done' if s.done else 'todo'}: {s.name}{' — ' + s.detail if s.detail else ''}" for s in self.steps]


def model_table() -> sa.Table:
    return metadata.tables[PARENT]


def state(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (PARENT,)).fetchone()
    if row is None:
        return "absent"
    if row[0] != "p":
        return "plain"
    attached = conn.execute(
        """SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = to_regclass(%s) AND c.relname = %s""",
        (PARENT, LEGACY),
    ).fetchone()
    return "migrated" if attached else "partitioned"


@dataclass(frozen=True)
class TableIndex:
    name: str
    valid: bool
    unique: bool
    primary: bool
    method_keys: str  # "btree (product_guid)": what ATTACH compares, without the names


def table_indexes(conn: psycopg.Connection, table: str) -> list[TableIndex]:
    rows = conn.execute(
        """SELECT c.relname, i.indisvalid, i.indisunique, i.indisprimary, pg_get_indexdef(i.indexrelid)
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE i.indrelid = to_regclass(%s)""",
        (table,),
    ).fetchall()
    return [TableIndex(n, v, u, p, d.split(" USING ", 1)[1]) for n, v, u, p, d in rows]


@dataclass(frozen=True)
class Needed:
    """An index the partitioned parent has, and the name it gets on the old table when we build it."""

    name: str
    build_as: str
    unique: bool
    method_keys: str
    keys: sql.Composable  # what follows the table in its CREATE INDEX


def needed_indexes() -> list[Needed]:
    dialect = postgresql.dialect()
    on = f" ON {PARENT} "
    pkey = sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Identifier, KEY)))
    out = [Needed("order_items_pkey", LEGACY_PKEY, True, "btree (" + ", ".join(KEY) + ")", pkey)]
    for ix in sorted(model_table().indexes, key=lambda i: i.name):
        keys = str(CreateIndex(ix).compile(dialect=dialect)).split(on, 1)[1].strip()
        using = sql.SQL("USING btree {}").format(sql.SQL(keys))  # the model's own declaration, not data
        out.append(Needed(ix.name, f"{ix.name}_legacy", bool(ix.unique), f"btree {keys}", using))
    return out


def matching(indexes: list[TableIndex], need: Needed) -> TableIndex | None:
    """A valid index of the old table that ATTACH would adopt for ``need`` (primary key: only a primary key)."""
    for ix in indexes:
        if not ix.valid or ix.method_keys != need.method_keys or ix.unique != need.unique:
            continue
        if need.name == "order_items_pkey" and not (ix.primary or ix.name == LEGACY_PKEY):
            continue
        return ix
    return None


def cutover_for(window: DateWindow) -> datetime:
    """The start of the quarter after the last accepted date: no legal write reaches it."""
    return Quarter.of(window.latest).end


def _constraint(conn: psycopg.Connection, table: str, name: str) -> tuple[bool, str | None] | None:
    row = conn.execute(
        """SELECT convalidated, obj_description(oid, 'pg_constraint') FROM pg_constraint
            WHERE conrelid = to_regclass(%s) AND conname = %s""",
        (table, name),
    ).fetchone()
    return (bool(row[0]), row[1]) if row else None


def check_columns(conn: psycopg.Connection) -> None:
    have = {
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (PARENT,),
        )
    }
    want = {c.name for c in model_table().columns}
    if have != want:
        missing, extra = sorted(want - have), sorted(have - want)
        raise MigrationError(
            f"order_items does not have the model's columns (missing: {', '.join(missing) or '-'}; "
            f"extra: {', '.join(extra) or '-'}): bring it to the model's columns first, then migrate"
        )


def make_plan(conn: psycopg.Connection, window: DateWindow) -> MigrationPlan:
    st = state(conn)
    if st in ("absent", "partitioned"):
        return MigrationPlan(st, None)
    if st == "migrated":
        from db.partitions.rollover import legacy_bound

        bound = legacy_bound(conn)
        return MigrationPlan(st, bound, [Step(f"{LEGACY} attached for [MINVALUE, {bound:%Y-%m-%d})", True)])
    check_columns(conn)
    con = _constraint(conn, PARENT, RANGE_CHECK)
    cutover = datetime.fromisoformat(con[1]) if con and con[1] else cutover_for(window)
    indexes = table_indexes(conn, PARENT)
    steps = []
    for need in needed_indexes():
        have = matching(indexes, need)
        what = f"index for {need.name}: {'have ' + have.name if have else 'build ' + need.build_as + ' CONCURRENTLY'}"
        steps.append(Step(what, have is not None))
    steps.append(Step(f"add CHECK {RANGE_CHECK} (created_at < {cutover:%Y-%m-%d}) NOT VALID", con is not None))
    steps.append(Step(f"validate {RANGE_CHECK} (full scan; writes go on)", bool(con and con[0])))
    steps.append(
        Step(
            f"swap: rename to {LEGACY}, create the partitioned order_items, attach [MINVALUE, {cutover:%Y-%m-%d})",
            False,
        )
    )
    return MigrationPlan(st, cutover, steps)


# --- the steps -----------------------------------------------------------------------------------------


def migrate(
    conn: psycopg.Connection, window: DateWindow, *, sleep: Callable[[float], None] = time.sleep
) -> MigrationPlan:
    """Carry out every step not yet done; return the plan as it was found. ``conn`` must be autocommit."""
    if not conn.autocommit:
        raise ValueError("the migration needs an autocommit connection (CONCURRENTLY refuses a transaction)")
    plan = make_plan(conn, window)
    if plan.state != "plain":
        return plan
    assert plan.cutover is not None
    for need in needed_indexes():
        build_index(conn, need, sleep=sleep)
    add_range_check(conn, plan.cutover, sleep=sleep)
    validate_range_check(conn, sleep=sleep)
    retry_on_lock_timeout("swap", lambda: swap(conn, plan.cutover), sleep=sleep)
    return plan


def build_index(conn: psycopg.Connection, need: Needed, *, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Build ``need`` on the old table CONCURRENTLY unless a matching valid index is there; True if built.

    ``db.indexes.build`` does the build: an INVALID index left by a killed or timed-out build is dropped first.
    """
    if matching(table_indexes(conn, PARENT), need):
        return False
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    return build_concurrently(conn, schema, PARENT, need.build_as, need.keys, unique=need.unique, sleep=sleep)


def add_range_check(
    conn: psycopg.Connection, cutover: datetime, *, sleep: Callable[[float], None] = time.sleep
) -> None:
    def step() -> None:
        with conn.transaction(), lock_timeout(conn, SHORT_LOCK_TIMEOUT):
            if _constraint(conn, PARENT, RANGE_CHECK) is not None:
                return
            conn.execute(
                sql.SQL("ALTER TABLE {t} ADD CONSTRAINT {c} CHECK ({k} IS NOT NULL AND {k} < {v}) NOT VALID").format(
                    t=sql.Identifier(PARENT),
                    c=sql.Identifier(RANGE_CHECK),
                    k=sql.Identifier("created_at"),
                    v=sql.Literal(cutover),
                )
            )
            # The cutover travels with the constraint: a rerun on another day keeps the same one.
            conn.execute(
                sql.SQL("COMMENT ON CONSTRAINT {} ON {} IS {}").format(
                    sql.Identifier(RANGE_CHECK), sql.Identifier(PARENT), sql.Literal(cutover.isoformat())
                )
            )

    retry_on_lock_timeout("add range check", step, sleep=sleep)


def validate_range_check(conn: psycopg.Connection, *, sleep: Callable[[float], None] = time.sleep) -> None:
    con = _constraint(conn, PARENT, RANGE_CHECK)
    if con is None or con[0]:
        return
    stmt = sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(sql.Identifier(PARENT), sql.Identifier(RANGE_CHECK))
    try:
        with lock_timeout(conn, CONCURRENT_LOCK_TIMEOUT):
            retry_on_lock_timeout("validate range check", lambda: conn.execute(stmt), sleep=sleep)
    except psycopg.errors.CheckViolation as exc:
        raise MigrationError(
            f"some order_items rows have no created_at or one on/after the cutover {con[1]}: such rows cannot "
            "go into a partition. Fix or remove them (or widen the accepted dates and drop the constraint "
            f"{RANGE_CHECK} so the next run sets a later cutover), then run again"
        ) from exc


def swap(conn: psycopg.Connection, cutover: datetime) -> bool:
    """The one short transaction: the old table becomes the legacy partition of a new partitioned parent."""
    t, legacy = sql.Identifier(PARENT), sql.Identifier(LEGACY)
    with conn.transaction(), lock_timeout(conn, SWAP_LOCK_TIMEOUT):
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(t))
        if state(conn) != "plain":
            return False
        con = _constraint(conn, PARENT, RANGE_CHECK)
        if not (con and con[0]):
            raise MigrationError(f"{RANGE_CHECK} is missing or not validated: the swap would scan under its lock")
        needs = needed_indexes()
        indexes = table_indexes(conn, PARENT)
        adopted = {need.name: matching(indexes, need) for need in needs}
        lacking = [n for n, ix in adopted.items() if ix is None]
        if lacking:
            raise MigrationError(
                f"indexes not built yet ({', '.join(lacking)}): the ATTACH would build them under lock"
            )
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(t, legacy))
        _swap_primary_key(conn, adopted["order_items_pkey"])
        # Free the names the new parent's indexes take (index names are per schema).
        for ix in table_indexes(conn, LEGACY):
            if ix.name in adopted and ix.name != "order_items_pkey":
                new = f"{ix.name}_legacy" if adopted[ix.name] == ix else f"{ix.name}_old"
                conn.execute(
                    sql.SQL("ALTER INDEX {} RENAME TO {}").format(sql.Identifier(ix.name), sql.Identifier(new))
                )
        create_parent(conn)
        conn.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM (MINVALUE) TO ({})").format(
                t, legacy, sql.Literal(cutover)
            )
        )
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(legacy, sql.Identifier(RANGE_CHECK)))
    log.info("order_items is partitioned; %s attached for [MINVALUE, %s)", LEGACY, cutover.isoformat())
    return True


def _swap_primary_key(conn: psycopg.Connection, pk_index: TableIndex) -> None:
    """Give the legacy table the primary key the parent's matches: the pre-built index, no build."""
    row = conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'p'", (LEGACY,)
    ).fetchone()
    legacy = sql.Identifier(LEGACY)
    if row and pk_index.primary:  # it already has the right key: only the name must go
        if row[0] != LEGACY_PKEY:
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                    legacy, sql.Identifier(row[0]), sql.Identifier(LEGACY_PKEY)
                )
            )
        return
    if row:  # the old key (without created_at): the new one includes its columns and the partition key
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(legacy, sql.Identifier(row[0])))
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}").format(
            legacy, sql.Identifier(LEGACY_PKEY), sql.Identifier(pk_index.name)
        )
    )


def create_parent(conn: psycopg.Connection, name: str = PARENT) -> None:
    """The partitioned ``order_items`` (or a twin named ``name``) exactly as the model compiles it, indexes included.

    Created empty, so its indexes are instant and valid; ATTACH then adopts the partition's matching ones.
    """
    dialect = postgresql.dialect()
    table = model_table()
    if name != PARENT:
        table = table.to_metadata(sa.MetaData(), name=name)
    conn.execute(sql.SQL(str(CreateTable(table).compile(dialect=dialect))))  # the model's DDL, no data in it
    for ix in sorted(table.indexes, key=lambda i: i.name):
        if name != PARENT:
            ix.name = f"{name}_{ix.name}"
        conn.execute(sql.SQL(str(CreateIndex(ix).compile(dialect=dialect))))
