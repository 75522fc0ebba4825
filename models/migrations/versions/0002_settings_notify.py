"""settings: change notifications for the TTL cache

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Every change to ``settings`` (through ``db.settings`` or by hand in psql) sends ``pg_notify`` on the
channel ``hub_settings`` in the writing transaction, so each process's cache drops the key at commit.
The payload is JSON ``{"schema": …, "key": …}``: the schema tells two hubs in one database apart (a
channel per schema could exceed the 63-byte channel-name limit). ``"key": null`` means "drop every key":
sent on TRUNCATE and when the payload would not fit in NOTIFY's 8000 bytes.

Objects are created unqualified: db.migrate puts the hub's schema first on the search_path.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION settings_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    k text;
    payload text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('hub_settings', json_build_object('schema', TG_TABLE_SCHEMA, 'key', NULL)::text);
        RETURN NULL;
    END IF;
    -- An UPDATE may rename the key: both the old and the new one are stale.
    FOREACH k IN ARRAY CASE TG_OP
        WHEN 'INSERT' THEN ARRAY[NEW.key]
        WHEN 'DELETE' THEN ARRAY[OLD.key]
        ELSE ARRAY[OLD.key, NEW.key] END
    LOOP
        payload := json_build_object('schema', TG_TABLE_SCHEMA, 'key', k)::text;
        IF octet_length(payload) >= 8000 THEN
            payload := json_build_object('schema', TG_TABLE_SCHEMA, 'key', NULL)::text;
        END IF;
        -- Identical notifications in one transaction are delivered once: no duplicates per key.
        PERFORM pg_notify('hub_settings', payload);
    END LOOP;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute(FUNCTION)
    op.execute(
        "CREATE TRIGGER settings_notify AFTER INSERT OR UPDATE OR DELETE ON settings "
        "FOR EACH ROW EXECUTE FUNCTION settings_notify()"
    )
    # Row triggers do not fire on TRUNCATE.
    op.execute(
        "CREATE TRIGGER settings_notify_truncate AFTER TRUNCATE ON settings "
        "FOR EACH STATEMENT EXECUTE FUNCTION settings_notify()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS settings_notify_truncate ON settings")
    op.execute("DROP TRIGGER IF EXISTS settings_notify ON settings")
    op.execute("DROP FUNCTION IF EXISTS settings_notify()")
