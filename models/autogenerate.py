"""What Alembic's autogenerate compares: runtime-created partitions are not part of the schema truth."""

from __future__ import annotations

import re

PARTITION = re.compile(r"^order_items_\d{4}_q[1-4]$")


def include_object(obj, name, type_, reflected, compare_to) -> bool:  # noqa: ANN001 - Alembic's hook signature
    if type_ == "table" and name == "alembic_version":
        return False
    if type_ == "table" and name and PARTITION.match(name):
        return False
    table = getattr(obj, "table", None)
    if type_ == "index" and table is not None and PARTITION.match(table.name):
        return False
    return True
