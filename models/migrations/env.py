"""Alembic environment. Run through ``db.migrate`` (``hub db upgrade``), which passes a connection.

Runtime-created partitions (``order_items_YYYY_qN``) are invisible to autogenerate.
"""

from __future__ import annotations

import re

from alembic import context

from models.tables import metadata

PARTITION = re.compile(r"^order_items_\d{4}_q[1-4]$")


def include_object(obj, name, type_, reflected, compare_to):  # noqa: ANN001
    if type_ == "table" and name == "alembic_version":
        return False
    if type_ == "table" and name and PARTITION.match(name):
        return False
    if type_ == "index" and getattr(obj, "table", None) is not None and PARTITION.match(obj.table.name):
        return False
    return True


def run_migrations_online() -> None:
    connection = context.config.attributes["connection"]
    schema = context.config.attributes.get("schema", "public")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=schema,
        include_object=include_object,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
