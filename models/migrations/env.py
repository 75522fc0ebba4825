"""Alembic environment. Run through ``db.migrate`` (``hub db upgrade``), which passes a connection."""

from __future__ import annotations

from alembic import context

from models.autogenerate import include_object
from models.tables import metadata


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
