"""What Alembic's autogenerate compares: runtime-created partitions and online indexes are not migrations' business.

Online indexes (``models.tables.online_index``) are declared on the models but built by the
``ensure_indexes`` flow with ``CREATE INDEX CONCURRENTLY`` (``db/indexes/ensure.py``), never by a migration:
a migration's plain ``CREATE INDEX`` would block every write to the table for the whole build. So
autogenerate neither proposes to create them (absent) nor to drop them (present, possibly still
INVALID while the flow builds them).
"""

from __future__ import annotations

import re

from models.tables import ONLINE, metadata

PARTITION = re.compile(r"^order_items_(\d{4}_q[1-4]|legacy)$")
# ``hub migrate-partitions --split`` while it runs: the shadow parent, its default and its progress row.
MIGRATION_TABLES = frozenset({"order_items_split", "order_items_split_default", "order_items_split_progress"})
ONLINE_INDEXES = frozenset(ix.name for t in metadata.tables.values() for ix in t.indexes if ix.info.get(ONLINE))


def include_object(obj, name, type_, reflected, compare_to) -> bool:  # noqa: ANN001 - Alembic's hook signature
    if type_ == "table" and name == "alembic_version":
        return False
    if type_ == "table" and name and (PARTITION.match(name) or name in MIGRATION_TABLES):
        return False
    if type_ == "index" and name in ONLINE_INDEXES:
        return False
    table = getattr(obj, "table", None)
    if type_ == "index" and table is not None and (PARTITION.match(table.name) or table.name in MIGRATION_TABLES):
        return False
    return True
