"""The job locks' names and ``hub locks``' table: what status and ``hub locks`` read, without importing Prefect.

``flows/locks.py`` takes and releases the locks (and imports Prefect's concurrency machinery to do so).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from db import locks as dblocks
from db.connection import connection
from flows.prefect_read import PrefectReader

# The fixed acquisition order when a job needs several (the retry flow takes its own lock, then an
# entity's): every job takes locks in this order, so no two jobs can wait on each other in a cycle.
GROUPS = ("retry-failed-snapshots", "orders", "customers", "products", "customer-metrics", "db-maintenance")
PREFIX = "hub-"


def limit_name(group: str, instance: str) -> str:
    """The Prefect limit of ``group`` for the hub instance ``instance`` (``db.locks.instance_id``)."""
    if group not in GROUPS:
        raise ValueError(f"unknown lock group {group!r}; known: {', '.join(GROUPS)}")
    return f"{PREFIX}{instance}-{group}"


def instance(url: str, schema: str) -> str:
    """This hub instance's id (database + schema), as its limit names carry it."""
    with connection(url, schema, autocommit=True) as conn:
        return dblocks.instance_id(conn)


def release_command(name: str) -> str:
    """The command that frees the lock ``name`` (a limit name or a group) once its holder is dead."""
    group = name.split("-", 2)[2] if name.startswith(PREFIX) and name.count("-") >= 2 else name
    return f"hub locks release {group}"


def lock_table(url: str, schema: str, reader: PrefectReader | None = None) -> list[dict[str, Any]]:
    """`hub locks`: each lock of this hub instance with its limit's state and the recorded holder."""
    with (
        PrefectReader() if reader is None else nullcontext(reader) as prefect,
        connection(url, schema, autocommit=True) as conn,
    ):
        inst = dblocks.instance_id(conn)
        holders = dblocks.read_holders(conn)
        rows = []
        for g in GROUPS:
            name = limit_name(g, inst)
            st = prefect.limit_status(name)
            h = holders.get(name)
            rows.append(
                {
                    "lock": name,
                    "exists": st.exists,
                    "active": st.active,
                    "limit": st.limit,
                    "slots_in_use": st.active_slots,
                    "holder": h.describe() if h else None,
                    "holder_alive": dblocks.holder_alive(conn, h) if h else None,
                    # With no holder alive, a slot in use and no session here: a crashed job's slot.
                    "advisory_lock": dblocks.advisory_lock_backend(conn, name),
                }
            )
    return rows
