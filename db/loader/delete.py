"""Stage 5, for a full snapshot: delete the stored rows the shop no longer holds — guarded.

The guard counts the rows the snapshot *would delete*, not the rows it holds: a snapshot of another
shop (a wrong token, a sandbox file applied to production) holds as many rows as ours but shares no
key with it. Over the limit the apply is refused and rolled back whole.
"""

from __future__ import annotations

import logging
from datetime import datetime

import psycopg
from psycopg import sql

from db.loader.options import MassDeleteRefusedError
from db.loader.rejects import Rejects
from db.mapping import EntitySpec

log = logging.getLogger(__name__)


def delete_absent(
    main: psycopg.Connection,
    spec: EntitySpec,
    rejects: Rejects,
    *,
    as_of: datetime | None,
    stored_before: int,
    limit: float | None,
) -> tuple[int, str | None]:
    """Hard-delete stored rows whose key the snapshot did not hold (``seen_keys``), with their children.

    Kept: rows changed after the snapshot was taken (``as_of``: a newer sync wrote them) and rows whose
    line was rejected. A rejected line whose key could not be read might be any row, so then nothing
    is deleted. Returns (rows deleted, why deletes were skipped or None); raises
    MassDeleteRefusedError over ``limit`` (a share of ``stored_before``; None: no limit).
    """
    if rejects.unknown_keys:
        reason = f"{rejects.unknown_keys} rejected line(s) without a readable key: deletes skipped this run"
        log.warning(reason)
        return 0, reason
    ident = sql.Identifier
    t, key = ident(spec.table), ident(spec.key)
    main.execute("CREATE INDEX ON seen_keys (key)")
    main.execute("ANALYZE seen_keys")
    main.execute("TRUNCATE stage_written")
    main.execute(
        sql.SQL(
            """WITH d AS (
                 DELETE FROM {t} t WHERE NOT EXISTS (SELECT 1 FROM seen_keys s WHERE s.key = t.{key})
                   AND NOT (t.{key} = ANY(%s))
                   AND (t.changed_at IS NULL OR %s::timestamptz IS NULL OR t.changed_at <= %s::timestamptz)
                 RETURNING t.{key})
               INSERT INTO stage_written (key) SELECT * FROM d"""
        ).format(t=t, key=key),
        (list(rejects.keys), as_of, as_of),
    )
    deleted = main.execute("SELECT count(*) FROM stage_written").fetchone()[0]
    if limit is not None and stored_before and deleted > stored_before * limit:
        raise MassDeleteRefusedError(spec.table, deleted, stored_before, limit)
    if spec.child_table and deleted:
        main.execute(
            sql.SQL("DELETE FROM {ct} x USING stage_written d WHERE x.{ckey} = d.key").format(
                ct=ident(spec.child_table), ckey=ident(spec.child_key)
            )
        )
    return deleted, None
