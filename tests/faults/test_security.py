"""Security checks (issue 8 §4): secrets and personal data stay out of logs, artifacts, error messages,
bookkeeping rows and worker processes; the sandbox refuses bad tokens as Shoptet does; the token never
goes to the result host; identifiers cannot inject SQL."""

from __future__ import annotations

import ast
import http.server
import logging
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import psycopg
import pytest
from prefect.client.orchestration import get_client
from psycopg import sql

from db import loader
from db.connection import libpq_url, mask_url, with_database
from db.loader import ApplyOptions
from db.loader import apply as loader_apply
from db.loader import workers as chunk_workers
from flows import runtime
from flows.config import get_config
from flows.entities import Entity
from flows.snapshot import SnapshotFailed, import_snapshot
from shoptet.client import ShoptetClient
from shoptet.sandbox import REFERENCE, ManualClock
from shoptet.sandbox.server import SandboxServer

ROOT = Path(__file__).resolve().parents[2]
SENTINEL_TOKEN = "sentinel-token-" + "7" * 26  # 41 chars, alnum + '-', shaped like a private token
SENTINEL_PASSWORD = "sentinel-pw-" + uuid.uuid4().hex[:12]


# --- the sandbox refuses bad tokens exactly as Shoptet does (reference §2, §11.1) -----------------------


@pytest.fixture(scope="module")
def plain_sandbox():
    clock = ManualClock(REFERENCE + timedelta(days=1))
    tokens = {SENTINEL_TOKEN: None, "orders-only-token-" + "1" * 22: {"orders"}}
    with SandboxServer(orders=20, seed=3, clock=clock, reference=REFERENCE, tokens=tokens) as sb:
        sb.state.limits.enabled = False
        yield sb


def _envelope_error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) >= {"data", "errors"} and body["data"] is None
    assert body.get("metadata", {}).get("requestId")
    (err,) = body["errors"]
    assert set(err) == {"errorCode", "message", "instance"} and all(isinstance(v, str) for v in err.values())
    return err


@pytest.mark.parametrize(
    "headers, status, code",
    [
        ({}, 401, "missing-access-token"),
        ({"Shoptet-Private-API-Token": "wrong-token-" + "0" * 30}, 401, "invalid-token"),
        ({"shoptet-private-api-token": "wrong-token-" + "0" * 30}, 401, "invalid-token"),
        ({"Authorization": f"Bearer {SENTINEL_TOKEN}"}, 401, "missing-access-token"),  # HEBLO: Bearer is a 401
    ],
)
def test_sandbox_refuses_a_missing_or_wrong_token_like_shoptet(plain_sandbox, headers, status, code):
    r = httpx.get(f"{plain_sandbox.base_url}/api/orders", headers=headers)
    assert r.status_code == status
    err = _envelope_error(r)
    assert err["errorCode"] == code
    assert SENTINEL_TOKEN not in r.text


def test_sandbox_refuses_a_token_without_the_right_with_403(plain_sandbox):
    orders_only = {"Shoptet-Private-API-Token": "orders-only-token-" + "1" * 22}
    r = httpx.get(f"{plain_sandbox.base_url}/api/customers", headers=orders_only)
    assert r.status_code == 403
    err = _envelope_error(r)
    assert (err["errorCode"], err["instance"]) == ("invalid-token-no-rights", "access-token")
    ok = httpx.get(f"{plain_sandbox.base_url}/api/orders", headers={"Shoptet-Private-API-Token": SENTINEL_TOKEN})
    assert ok.status_code == 200


def test_client_errors_for_a_wrong_token_do_not_carry_it(plain_sandbox):
    wrong = "wrong-sentinel-" + "5" * 26
    with ShoptetClient(
        plain_sandbox.base_url, wrong, clock=plain_sandbox.clock.time, sleep=plain_sandbox.clock.sleep
    ) as client:
        with pytest.raises(Exception) as info:
            client.request_snapshot("orders", {})
    text = f"{info.value!s} {info.value!r} {info.value.args!r} {getattr(info.value, '__notes__', '')}"
    assert "401" in text or "invalid-token" in text
    assert wrong not in text and SENTINEL_TOKEN not in text


# --- a real import with a sentinel token and a sentinel database password --------------------------------


class _ResultHost:
    """The result files' host (another port than the API): records every request's headers."""

    def __init__(self, results_dir: Path) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                path = results_dir / Path(urlsplit(self.path).path).name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.results_dir = results_dir
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sentinel_db(db_url, pg_server_url):
    """The test database reached as a role whose password is the sentinel (trust auth may ignore it:
    what matters is that the URL carries it)."""
    role = f"hub_sentinel_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(libpq_url(with_database(pg_server_url, "postgres")), autocommit=True)
    admin.execute(
        sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(SENTINEL_PASSWORD)
        )
    )
    parts = urlsplit(db_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    url = f"{parts.scheme}://{role}:{SENTINEL_PASSWORD}@{host}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    with psycopg.connect(libpq_url(url)) as c:  # the role really connects
        assert c.execute("SELECT current_user").fetchone()[0] == role
    yield url
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        c.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role)))
        c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
    admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    admin.close()


class _PopenSpy:
    """``db.loader.workers.subprocess`` with a Popen that records the environment each worker gets."""

    def __init__(self, real) -> None:  # noqa: ANN001
        self._real, self.envs = real, []

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._real, name)

    def Popen(self, *args, **kw):  # noqa: N802, ANN002, ANN003, ANN201
        self.envs.append(dict(kw.get("env") or {}))
        return self._real.Popen(*args, **kw)


@pytest.fixture
def sentinel_hub(sentinel_db, prefect_harness, monkeypatch, tmp_path, no_retry_waits):
    """Flows configured as an operator would (HUB_* environment) with sentinel secrets, the sandbox as the
    shop, result files served from another port, and parse workers forced on (to see their environment)."""
    clock = ManualClock(REFERENCE + timedelta(days=1))
    results = tmp_path / "results"
    results.mkdir()
    host = _ResultHost(results)
    sb = SandboxServer(
        orders=300,
        seed=7,
        clock=clock,
        job_seconds=30,
        reference=REFERENCE,
        tokens={SENTINEL_TOKEN: None},
        results_dir=results,
        base_url=host.url,
    )
    sb.start()
    sb.state.limits.enabled = False
    monkeypatch.setenv("HUB_DATABASE_URL", sentinel_db)
    monkeypatch.setenv("HUB_SHOPTET_TOKEN", SENTINEL_TOKEN)
    monkeypatch.setenv("HUB_SHOPTET_BASE_URL", sb.base_url)
    monkeypatch.setenv("HUB_DOWNLOAD_DIR", str(tmp_path / "downloads"))
    get_config.cache_clear()
    monkeypatch.setattr(loader_apply, "default_workers", lambda path: 1)
    spy = _PopenSpy(chunk_workers.subprocess)
    monkeypatch.setattr(chunk_workers, "subprocess", spy)

    def client() -> ShoptetClient:
        cfg = get_config()
        return ShoptetClient(
            cfg.shoptet_base_url, cfg.shoptet_token.get_secret_value(), clock=sb.clock.time, sleep=sb.clock.sleep
        )

    try:
        with runtime.override(client_factory=client, webhook_url="https://hub.example/hook"):
            yield {"sandbox": sb, "results": host, "url": sentinel_db, "workers": spy}
    finally:
        sb.stop()
        host.close()
        get_config.cache_clear()


def _db_text(url: str, query: str) -> str:
    with psycopg.connect(libpq_url(url)) as c:
        return orjson.dumps([r[0] for r in c.execute(query)], default=str).decode()


@pytest.mark.integration
def test_import_leaks_no_secret_no_result_url_and_no_personal_data(sentinel_hub, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    sb, url = sentinel_hub["sandbox"], sentinel_hub["url"]
    import_snapshot(Entity.orders)
    import_snapshot(Entity.customers)
    sb.state.faults.error_5xx_rate = 1.0  # a failure: its exception, failed_snapshots row and logs
    with pytest.raises(SnapshotFailed) as failed:
        import_snapshot(Entity.products)
    sb.state.faults.error_5xx_rate = 0.0
    with pytest.raises(Exception) as bad_db:  # a connection error names the server, never the password
        psycopg.connect(libpq_url(url.replace("/hub_t_", "/no_such_db_")))
    out, err = capfd.readouterr()

    with get_client(sync_client=True) as client:
        prefect_logs = "\n".join(x.message for x in client.read_logs())
        artifacts = orjson.dumps(
            [(a.key, a.description, a.data) for a in client.read_artifacts()], default=str
        ).decode()
        parameters = orjson.dumps([r.parameters for r in client.read_flow_runs()], default=str).decode()
    rows = _db_text(url, "SELECT s::text FROM snapshot_runs s")
    rows += _db_text(url, "SELECT f::text FROM failed_snapshots f")
    assert "pending" in rows  # the failed products snapshot is recorded
    places = {
        "log records": caplog.text,
        "stdout": out,
        "stderr": err,
        "Prefect logs": prefect_logs,
        "artifacts": artifacts,
        "flow run parameters": parameters,
        "snapshot_runs/failed_snapshots": rows,
        "exception": f"{failed.value!s} {failed.value!r} {failed.value.__cause__!r}",
        "connection error": str(bad_db.value),
        "masked URL": mask_url(url),
    }
    assert prefect_logs and artifacts != "[]"
    secrets = {"token": SENTINEL_TOKEN, "database password": SENTINEL_PASSWORD}
    leaks = [(what, where) for what, s in secrets.items() for where, text in places.items() if s in text]
    assert leaks == []

    # Worker processes: started (forced on) without any secret in their environment.
    envs = sentinel_hub["workers"].envs
    assert envs, "the apply started parse workers"
    assert not [e for e in envs if SENTINEL_TOKEN in repr(e) or SENTINEL_PASSWORD in repr(e)]
    assert not [k for e in envs for k in e if k.startswith(("HUB_", "PG"))]

    # The result host never saw the token, and the bearer link to the data is never logged.
    seen = sentinel_hub["results"].seen
    assert len(seen) >= 2
    for _path, headers in seen:
        assert not {"shoptet-private-api-token", "shoptet-access-token", "authorization"} & set(headers), headers
        assert SENTINEL_TOKEN not in repr(headers)
    logged = "\n".join(places[k] for k in ("log records", "stdout", "stderr", "Prefect logs", "artifacts"))
    for path, _ in seen:
        name = Path(urlsplit(path).path).name
        assert name not in logged, f"result URL {path} was logged"

    # No personal data (e-mails, phones, names, streets of the shop's people) in logs or artifacts.
    with psycopg.connect(libpq_url(url)) as c:
        people = c.execute("""SELECT email, phone, billing_full_name, billing_street FROM orders
                              UNION ALL SELECT email, phone, full_name, billing_street FROM customers""")
        pii = {v for row in people for v in row if v}
    assert len(pii) > 100
    logged_pii = sorted(v for v in pii if v in logged)
    assert logged_pii == []


# --- SQL identifiers ---------------------------------------------------------------------------------

# SQL text built with f-strings, % or .format from values that are not user input (constants, numbers,
# the names of a fixed list): reviewed, each with why it is safe. Anything new must use sql.Identifier.
REVIEWED_DYNAMIC_SQL: dict[tuple[str, str], str] = {}
_SQL_CALLS = {"execute", "executemany", "copy", "SQL", "stream"}  # where SQL text goes in


def _formatted(node: ast.AST) -> str | None:
    """How ``node`` builds a string from values, if it does."""
    if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.FormattedValue) for v in node.values):
        return "f-string"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return "% or + on text"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join"):
        args = [*node.args, *(k.value for k in node.keywords)]
        if _is_sql_composable(node.func.value) or (args and all(_is_sql_composable(a) for a in args)):
            return None  # psycopg.sql composition: identifiers quoted, literals escaped
        return f"str.{node.func.attr}"
    return None


def _is_sql_composable(node: ast.AST) -> bool:
    """``sql.SQL(...)``, ``sql.Identifier(...)``, ``sql.Literal(...)``: composing them is safe."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("SQL", "Identifier", "Literal", "Placeholder")
    )


def dynamic_sql() -> list[tuple[str, str, int, str]]:
    """(file, function, line, how) for every SQL text given to execute/copy/sql.SQL built by formatting."""
    found = []
    dirs = ("db", "flows", "deployments", "models", "shoptet")
    for path in sorted(p for d in dirs for p in (ROOT / d).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if "/migrations/versions/" in rel:
            continue  # Alembic migrations: fixed DDL text, no runtime input
        tree = ast.parse(path.read_text(), rel)
        owner: dict[int, str] = {}
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for n in ast.walk(fn):
                    owner[id(n)] = fn.name  # innermost wins: ast.walk visits outer functions first
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name not in _SQL_CALLS:
                continue
            how = _formatted(node.args[0])
            if how:
                found.append((rel, owner.get(id(node), "<module>"), node.lineno, how))
    return found


def test_no_sql_is_built_by_string_formatting():
    offenders = [f for f in dynamic_sql() if (f[0], f[1]) not in REVIEWED_DYNAMIC_SQL]
    assert offenders == [], "build SQL with psycopg.sql.SQL(...).format(sql.Identifier(...)), not strings"


HOSTILE_SCHEMA = 'hub"; DROP TABLE pwned; --'


@pytest.mark.integration
def test_a_hostile_schema_name_is_only_ever_an_identifier(db_url, tmp_path):
    """Migrations, an apply (with partitions), metrics and forget run in a schema whose name is SQL."""
    from db import forget as db_forget
    from db.metrics.compute import recalculate
    from db.migrate import upgrade
    from db.runs import start_run
    from shoptet.sandbox.generator import write_snapshot

    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        c.execute("CREATE TABLE pwned (x int)")
        c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(HOSTILE_SCHEMA)))
    upgrade(db_url, HOSTILE_SCHEMA)
    path = tmp_path / "orders.jsonl.gz"
    write_snapshot("orders", 50, path, seed=5)
    from db.connection import connect

    with connect(db_url, HOSTILE_SCHEMA, autocommit=True) as c:
        run_id = start_run(c, "orders", source="file", full=False)
        email = c.execute("SELECT 1").fetchone() and None
    r = loader.apply_snapshot_file(
        db_url, "orders", path, run_id=run_id, options=ApplyOptions(schema=HOSTILE_SCHEMA, workers=0)
    )
    assert r.inserted == 50 and r.partitions_created
    recalculate(db_url, schema=HOSTILE_SCHEMA, full=True)
    with connect(db_url, HOSTILE_SCHEMA, autocommit=True) as c:
        email = c.execute("SELECT email FROM orders WHERE email IS NOT NULL LIMIT 1").fetchone()[0]
    assert db_forget.forget(db_url, email, schema=HOSTILE_SCHEMA).rows["orders"] >= 1
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        assert c.execute("SELECT to_regclass('public.pwned') IS NOT NULL").fetchone()[0]
        n = c.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'order_items_%%'",
            (HOSTILE_SCHEMA,),
        ).fetchone()[0]
        assert n == len(r.partitions_created)
        assert (
            c.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'orders'").fetchone()[
                0
            ]
            == 1
        )  # the template's own tables, untouched
