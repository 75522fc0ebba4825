"""pg_dump / pg_restore see no secret in argv or their environment, only a 0600 service file (review L9)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from db import pg_tools
from db.backups import dump, restore, verify
from db.connection import database_conninfo, libpq_url

SECRETS = ("s3cret-pw", "keypass-77", "tok-shoptet-99")
FAKE = """#!{python}
import json, os, stat, sys
record = {{"argv": sys.argv, "env": dict(os.environ)}}
service = os.environ.get("PGSERVICEFILE")
if service:
    record["mode"] = stat.S_IMODE(os.stat(service).st_mode)
    record["dir_mode"] = stat.S_IMODE(os.stat(os.path.dirname(service)).st_mode)
    record["service"] = open(service).read()
with open({log!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


@pytest.fixture
def seen(tmp_path, monkeypatch, conn):
    """pg_dump/pg_restore replaced by wrappers that record argv, environment and service file, then exec the tool."""
    log = tmp_path / "tools.jsonl"
    real_find = pg_tools.find_tool
    major = pg_tools.server_major(conn)

    def find(name: str, m: int) -> Path:
        fake = tmp_path / name
        if not fake.exists():
            fake.write_text(FAKE.format(python=sys.executable, log=str(log), real=str(real_find(name, major))))
            fake.chmod(0o700)
        return fake

    monkeypatch.setattr(pg_tools, "find_tool", find)
    monkeypatch.setenv("HUB_SHOPTET_TOKEN", SECRETS[2])
    monkeypatch.setenv("HUB_DATABASE_URL", "postgresql://hub:tok-shoptet-99@elsewhere/shop")
    monkeypatch.setenv("PGSSLMODE", "prefer")  # the hub's own PG* settings reach the tools by the service file

    def records() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()]

    return records


def test_tools_get_a_minimal_environment_and_the_secrets_only_in_a_0600_service_file(db_url, tmp_path, seen):
    # The embedded server trusts local sockets: the password and key passphrase travel but are not needed.
    url = make_conninfo(libpq_url(db_url), password=SECRETS[0], sslpassword=SECRETS[1])
    path, manifest = dump.take_backup(url, "public", tmp_path / "backups")
    verify.verify_backup(path)  # pg_restore -f /dev/null: no connection, still the minimal environment
    target = f"hub_envprobe_{os.getpid()}"
    try:
        restore.restore_into(url, path, target)
    finally:
        with psycopg.connect(database_conninfo(db_url, "postgres"), autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target)))
    connected = [r for r in seen() if "--dbname" in r["argv"]]
    assert {Path(r["argv"][0]).name for r in connected} == {"pg_dump", "pg_restore"}
    for r in seen():
        assert not any(s in arg for s in SECRETS for arg in r["argv"]), r["argv"]
        assert not any(s in value for s in SECRETS for value in r["env"].values())
        assert {k for k in r["env"] if not k.startswith("LC_")} <= {*pg_tools._KEEP_ENV, "PGSERVICEFILE"}
    for r in connected:
        assert r["argv"][r["argv"].index("--dbname") + 1] == "service=hub"
        assert r["mode"] == 0o600 and r["dir_mode"] == 0o700
        assert f"password={SECRETS[0]}\n" in r["service"] and f"sslpassword={SECRETS[1]}\n" in r["service"]
        assert "sslmode=prefer\n" in r["service"]
        assert not Path(r["env"]["PGSERVICEFILE"]).exists()  # removed once the tool is done
