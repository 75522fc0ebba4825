"""`hub status`: each check judged from the database's real state, its JSON schema, its exit codes."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from typer.testing import CliRunner

from db.backups.manifest import Manifest, write_manifest
from db.connection import libpq_url
from db.partitions import rollover as partitions
from db.partitions.plan import runway
from db.runs import record_failed_snapshot, start_run
from db.settings.service import SettingsService
from deployments.cli import app
from flows.config import get_config
from flows.locks import ensure_limits, instance, limit_name
from tests.factories import order, write_jsonl

# Its own Prefect server: the runs check reads every flow run on the server, not only this module's.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("isolated_prefect_harness")]
runner = CliRunner()
# Prefect sets its logging up when a flow module is first imported. Now, not inside a CliRunner call: its
# console handler would keep that call's stderr, closed once it returns (later flow runs fail to log).
importlib.import_module("flows.snapshot")

CHECK_NAMES = ["runs", "failed_snapshots", "partition_runway", "settings_cache", "locks", "backups"]
DATA_KEYS = {
    "runs": {"items", "prefect"},
    "failed_snapshots": {"open", "pending", "overdue", "gave_up", "items"},
    "partition_runway": {"current_quarter", "current_exists", "quarters_ahead", "wanted", "partitions"},
    "settings_cache": {"hits", "misses", "loads", "load_errors", "reads", "hit_rate", "since", "updated_at", "scope"},
    "locks": {"items", "prefect"},
    "backups": {"dir", "backups", "newest_verified", "newest_restore_tested"},
}
RUN_KEYS = {"run", "flow", "source", "state", "level", "started_at", "finished_at", "duration_s", "counters", "note",
            "run_id", "flow_run_id"}  # fmt: skip
LOCK_KEYS = {
    "lock", "exists", "active", "limit", "slots_in_use", "holder", "holder_alive", "advisory_lock", "level", "note"
}  # fmt: skip
FAILED_KEYS = {"id", "entity", "full", "stage", "error_class", "status", "attempts", "next_attempt_at", "created_at",
               "level", "note"}  # fmt: skip


@pytest.fixture
def backup_dir(hub_env, tmp_path, monkeypatch):
    d = tmp_path / "backups"
    monkeypatch.setenv("HUB_BACKUP_DIR", str(d))
    get_config.cache_clear()
    return d


def backup_manifest(directory, url: str, hours_ago: float, *, verified=True, restore_tested=True, name="b"):
    """The manifest a verified (and restore-tested) backup leaves: all `hub status` reads of a backup."""
    directory.mkdir(exist_ok=True)
    at = (datetime.now(UTC) - timedelta(hours=hours_ago)).isoformat()
    m = Manifest(file=f"{name}-20260101T000000Z.dump", format="custom", database=conninfo_to_dict(url)["dbname"],
                 schema="public", server_version="18.0", started_at=at, finished_at=at, size_bytes=1, sha256="0" * 64,
                 pg_dump_version="18.0", verified=verified, restore_tested=restore_tested,
                 restore_error=None if restore_tested is not False else "row counts differ")  # fmt: skip
    write_manifest(directory / m.file, m)


@pytest.fixture
def ready(hub_env, backup_dir):
    """A fresh hub as `hub bootstrap` leaves it, backed up: migrated, partitions, lock limits, a backup."""
    with psycopg.connect(libpq_url(hub_env), autocommit=True) as c:
        partitions.ensure_partitions(c, runway(datetime.now(UTC), 2))
    ensure_limits(hub_env, "public")
    backup_manifest(backup_dir, hub_env, hours_ago=3)
    return hub_env


@pytest.fixture(params=["prefect-client", "rest"])
def prefect_via(request, monkeypatch):
    """How status reads Prefect: its client (the URL only in Prefect's settings, as here), or plain REST
    (PREFECT_API_URL in the environment, as the CLI sets it): the other path is made to fail."""
    from prefect.settings import PREFECT_API_URL

    import flows.prefect_read as reader
    import flows.prefect_slots as slots

    def not_this_path(*a, **kw):
        raise AssertionError(f"status read Prefect the other way (expected {request.param})")

    if request.param == "rest":
        monkeypatch.setattr(reader, "_rest_url", lambda: PREFECT_API_URL.value())  # as in a process without Prefect
        monkeypatch.setattr(reader, "_client_flow_runs", not_this_path)
        monkeypatch.setattr(slots, "limit_status", not_this_path)
    else:
        monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # a stale one: Prefect's settings win
        monkeypatch.setattr(reader.PrefectReader, "_request", not_this_path)
    return request.param


def status(*args: str) -> tuple[int, dict]:
    res = runner.invoke(app, ["status", "--json", *args])
    return res.exit_code, json.loads(res.stdout)


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


def sql(url: str, statement: str, *args) -> list[tuple]:
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        cur = c.execute(statement, args)
        return cur.fetchall() if cur.description else []


def import_file(tmp_path, name: str, lines: list, *extra: str) -> int:
    return runner.invoke(app, ["import-file", "orders", str(write_jsonl(tmp_path / name, lines)), *extra]).exit_code


def test_healthy_fresh_hub_exits_0_and_reports_every_check(ready, prefect_via):
    code, report = status()
    assert code == 0, report
    assert (report["schema"], report["level"], report["exit_code"]) == ("hub-status/1", "ok", 0)
    assert report["instance"] == instance(ready, "public")
    assert [c["name"] for c in report["checks"]] == CHECK_NAMES
    assert {c["name"]: c["level"] for c in report["checks"]} == dict.fromkeys(CHECK_NAMES, "ok")
    assert check(report, "partition_runway")["data"]["quarters_ahead"] == 2
    locks = check(report, "locks")["data"]["items"]
    assert len(locks) == 6 and all(x["exists"] and x["active"] and x["holder"] is None for x in locks)


def test_json_schema_is_stable(ready, tmp_path):
    assert import_file(tmp_path, "a.gz", [order(str(i)) for i in range(3)]) == 0
    code, report = status()
    assert code == 0, report
    assert set(report) == {"schema", "generated_at", "instance", "level", "exit_code", "checks"}
    for c in report["checks"]:
        assert set(c) == {"name", "level", "detail", "data"}
        assert set(c["data"]) == DATA_KEYS[c["name"]], c["name"]
    (run,) = check(report, "runs")["data"]["items"]
    assert set(run) == RUN_KEYS
    assert (run["run"], run["flow"], run["state"]) == ("orders file import", "import-file", "succeeded")
    assert run["counters"]["inserted"] == 3 and run["duration_s"] >= 0
    assert all(set(x) == LOCK_KEYS for x in check(report, "locks")["data"]["items"])


def test_failed_last_run_exits_2_naming_it(ready, tmp_path):
    assert import_file(tmp_path, "bad.gz", [order("1"), b"nope", b"{"]) == 1
    code, report = status()
    runs = check(report, "runs")
    assert (code, report["level"], runs["level"]) == (2, "fail", "fail")
    assert "orders file import failed" in runs["detail"]
    assert "rejected" in runs["data"]["items"][0]["note"]
    # A later full run of the entity brought the shop's state: the failure needs nothing more.
    assert import_file(tmp_path, "full.gz", [order("1")], "--full") == 0
    code, report = status()
    items = {i["run"]: i for i in check(report, "runs")["data"]["items"]}
    assert code == 0, report
    assert (items["orders file import"]["state"], items["orders file import"]["level"]) == ("failed", "ok")
    assert items["orders file import"]["note"].startswith("superseded by the full run #")
    # Without a full run after it, the next run of the same kind is what counts.
    assert import_file(tmp_path, "bad2.gz", [order("1"), b"nope", b"{"]) == 1
    assert status()[0] == 2
    assert import_file(tmp_path, "good.gz", [order("1")]) == 0
    assert status()[0] == 0


def test_run_without_an_end_for_hours_is_reported_stuck(ready):
    with psycopg.connect(libpq_url(ready)) as c:
        run_id = start_run(c, "customers", source="api", full=True)
    sql(ready, "UPDATE snapshot_runs SET started_at = now() - interval '7 hours' WHERE id = %s", run_id)
    code, report = status()
    assert code == 2 and "customers full snapshot stuck" in check(report, "runs")["detail"]


def _failed_snapshot(url: str, next_attempt_at: datetime) -> int:
    with psycopg.connect(libpq_url(url)) as c:
        return record_failed_snapshot(
            c, entity="orders", filters={}, full=True, job_id=None, stage="webhook",
            error=RuntimeError("503"), run_id=None, next_attempt_at=next_attempt_at,
        )  # fmt: skip


def test_open_failed_snapshot_warns_then_fails_past_its_retries_until_a_full_snapshot(ready, tmp_path):
    fs = _failed_snapshot(ready, datetime.now(UTC))
    code, report = status()
    failed = check(report, "failed_snapshots")
    assert (code, failed["level"], failed["data"]["pending"]) == (1, "warn", 1)
    assert set(failed["data"]["items"][0]) == FAILED_KEYS

    sql(ready, "UPDATE failed_snapshots SET status = 'gave_up', attempts = 3, updated_at = now() WHERE id = %s", fs)
    code, report = status()
    failed = check(report, "failed_snapshots")
    assert (code, failed["level"], failed["data"]["gave_up"]) == (2, "fail", 1)
    assert f"#{fs} orders: gave up after 3 retries" in failed["detail"]

    # An incremental import does not close it; a full one does.
    assert import_file(tmp_path, "inc.gz", [order("1")]) == 0
    assert status()[0] == 2
    assert import_file(tmp_path, "full.gz", [order("1")], "--full") == 0
    code, report = status()
    assert (code, check(report, "failed_snapshots")["data"]["open"]) == (0, 0)


def test_failed_snapshot_not_retried_long_after_due_fails(ready):
    _failed_snapshot(ready, datetime.now(UTC) - timedelta(hours=3))
    code, report = status()
    failed = check(report, "failed_snapshots")
    assert (code, failed["data"]["overdue"]) == (2, 1)
    assert "is the retry flow running?" in failed["detail"]


def test_runway_below_the_setting_warns_and_a_missing_current_quarter_fails(ready):
    with SettingsService(ready, listen=False) as svc:
        svc.set("partition_runway_quarters", 4)
    code, report = status()
    runway_check = check(report, "partition_runway")
    assert (code, runway_check["level"]) == (1, "warn")
    assert "2 quarter(s) ready" in runway_check["detail"] and "partition_runway_quarters = 4" in runway_check["detail"]


def test_fresh_database_without_partitions_fails_on_the_current_quarter(hub_env):
    code, report = status()
    runway_check = check(report, "partition_runway")
    assert (code, runway_check["level"], runway_check["data"]["current_exists"]) == (2, "fail", False)
    assert "`hub partitions`" in runway_check["detail"]


def test_a_stranded_slot_names_the_command_that_frees_it(ready, prefect_via):
    """A slot in use with no holder and no session holding the lock (a crash under an ephemeral server)."""
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease

    name = limit_name("customers", instance(ready, "public"))
    acquire_concurrency_slots_with_lease([name], 1, lease_duration=600, strict=True)
    code, report = status()
    locks = check(report, "locks")
    assert (code, locks["level"]) == (1, "warn"), locks
    assert f"{name}: a slot in use, no holder, no session holding it" in locks["detail"]
    assert "`hub locks release customers`" in locks["detail"]


def test_lock_held_by_a_dead_holder_fails(ready, prefect_via):
    name = limit_name("orders", instance(ready, "public"))
    sql(ready, "INSERT INTO job_locks (name, flow_run_id, host, pid) VALUES (%s, 'crashed', 'gone-host', 1)", name)
    code, report = status()
    locks = check(report, "locks")
    assert (code, locks["level"]) == (2, "fail")
    assert f"{name}: held by a dead holder: `hub locks release orders` frees it" in locks["detail"]
    # the database-only view sees it too
    code, report = status("--no-prefect")
    locks = check(report, "locks")
    assert (code, locks["data"]["prefect"]) == (2, False)
    assert {x["lock"]: x["holder_alive"] for x in locks["data"]["items"]}[name] is False


def test_settings_cache_hit_rate_sums_every_process(ready, monkeypatch):
    # Two services stand for two processes: each flushes its own counts into the shared totals.
    for _ in range(2):
        with SettingsService(ready, listen=False) as svc:
            for _ in range(4):
                svc.get("reject_threshold")  # 1 miss, 3 hits
    code, report = status()
    data = check(report, "settings_cache")["data"]
    assert (data["hits"], data["misses"], data["loads"], data["hit_rate"]) == (6, 2, 2, 0.75)
    assert "hit rate 75.0% over 8 reads" in check(report, "settings_cache")["detail"]
    # A long-lived process flushes on a miss once FLUSH_SECONDS passed, without closing.
    monkeypatch.setattr("db.settings.stats.FLUSH_SECONDS", 0.0)
    svc = SettingsService(ready, listen=False)
    svc.get("cancelled_statuses")
    assert check(status()[1], "settings_cache")["data"]["misses"] == 3
    svc.close()  # nothing new to flush: the totals stay
    assert check(status()[1], "settings_cache")["data"]["reads"] == 9


def test_a_process_adds_its_settings_cache_counts_at_exit(ready):
    code = (
        "from db.settings.registry import get_settings_service as g; s = g(sys.argv[1]); [s.get('x') for _ in range(5)]"
    )
    subprocess.run([sys.executable, "-c", f"import sys; {code}", ready], check=True, timeout=60)
    data = check(status()[1], "settings_cache")["data"]
    # 5 reads: 1 miss, and more if the listener's (re)connect cleared the cache between two of them
    assert (data["reads"], data["misses"] >= 1, data["hits"] >= 1) == (5, True, True)


def test_prefect_flow_runs_are_shown(ready, prefect_via):
    from flows.indexes import ensure_indexes

    ensure_indexes(dry_run=True)
    code, report = status()
    items = {i["flow"]: i for i in check(report, "runs")["data"]["items"]}
    assert code == 0, report
    assert (items["ensure-indexes"]["source"], items["ensure-indexes"]["state"]) == ("prefect", "completed")


def test_unreadable_database_exits_3_without_the_password(monkeypatch):
    monkeypatch.setenv("HUB_DATABASE_URL", "postgresql://hub:s3cret@127.0.0.1:1/nope?connect_timeout=2")
    get_config.cache_clear()
    try:
        res = runner.invoke(app, ["status", "--json"])
    finally:
        get_config.cache_clear()
    assert res.exit_code == 3
    assert json.loads(res.stdout)["level"] == "unknown"
    assert "s3cret" not in res.output


def test_human_output_is_short_and_names_the_problem(ready, tmp_path):
    import_file(tmp_path, "bad.gz", [order("1"), b"nope", b"{"])
    res = runner.invoke(app, ["status"])
    assert res.exit_code == 2
    assert "FAIL" in res.output and "orders file import failed" in res.output
    assert len(res.output.splitlines()) < 25


def test_unreachable_prefect_api_is_reported_not_hidden(ready, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        code, report = status()
    monkeypatch.setattr("flows.prefect_read._rest_url", lambda: "http://127.0.0.1:9/api")  # the same, over REST
    rest_code, rest = status()
    assert (rest_code, check(rest, "runs")["level"], check(rest, "locks")["level"]) == (2, "warn", "fail"), rest
    assert "Prefect API not readable (ConnectError" in check(rest, "runs")["detail"]
    runs, locks = check(report, "runs"), check(report, "locks")
    assert (code, runs["level"], locks["level"]) == (2, "warn", "fail"), report
    assert "Prefect API not readable" in runs["detail"] and locks["detail"].startswith("could not check")
    # the database-only view needs no Prefect
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert status("--no-prefect")[0] == 0


def test_backups_missing_old_or_failing_need_attention(ready, backup_dir):
    for f in backup_dir.iterdir():
        f.unlink()
    code, report = status()
    assert (code, check(report, "backups")["level"]) == (1, "warn")
    assert "no verified backup yet" in check(report, "backups")["detail"]
    assert "never restore-tested" in check(report, "backups")["detail"]
    assert "in 8 days" not in check(report, "backups")["detail"]  # none was ever run: not "none in 8 days"
    backup_manifest(backup_dir, ready, hours_ago=30, name="a")  # one night missed
    assert check(status()[1], "backups")["level"] == "warn"
    backup_manifest(backup_dir, ready, hours_ago=60, name="a")  # two nights missed
    code, report = status()
    assert (code, check(report, "backups")["level"]) == (2, "fail")
    backup_manifest(backup_dir, "dbname=another_db", hours_ago=1, name="other")  # another database's backup
    assert check(status()[1], "backups")["level"] == "fail"
    backup_manifest(backup_dir, ready, hours_ago=1, name="c", restore_tested=False)
    code, report = status()
    detail = check(report, "backups")["detail"]
    assert code == 2 and "test restore (c-20260101T000000Z.dump) failed: row counts differ" in detail
    backup_manifest(backup_dir, ready, hours_ago=0.5, name="d")
    code, report = status()
    assert code == 0, report
    assert check(report, "backups")["data"]["backups"] == 3


def _deployment_run(deployment: str, flow: str, name: str, final) -> str:  # noqa: ANN001 - a prefect State
    """A run of a deployment that ended in ``final``, as a worker leaves it (no worker needed)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        try:
            dep_id = client.read_deployment_by_name(f"{flow}/{deployment}").id
        except ObjectNotFound:
            dep_id = client.create_deployment(flow_id=client.create_flow_from_name(flow), name=deployment)
        run = client.create_flow_run_from_deployment(dep_id, name=name)
        client.set_flow_run_state(run.id, Running(), force=True)
        client.set_flow_run_state(run.id, final, force=True)
    return str(run.id)


def test_a_scheduled_run_that_failed_before_writing_anything_fails_the_status(ready, prefect_via):
    from prefect.states import Completed, Failed

    message = "Flow run encountered an exception: RuntimeError: HUB_SHOPTET_TOKEN is not set"
    run_id = _deployment_run("fetch-new-orders", "fetch-new-orders", "fetch-new-orders", Failed(message=message))
    assert sql(ready, "SELECT count(*) FROM snapshot_runs") == [(0,)]
    assert status("--no-prefect")[0] == 0  # the hub's tables alone see nothing wrong
    code, report = status()
    runs = check(report, "runs")
    (item,) = [i for i in runs["data"]["items"] if i["flow_run_id"] == run_id]
    assert (code, runs["level"], item["level"], item["state"]) == (2, "fail", "fail", "failed"), report
    assert item["note"].startswith("failed before recording a run") and "HUB_SHOPTET_TOKEN" in item["note"]
    assert "fetch-new-orders failed" in runs["detail"]
    # The next scheduled run succeeding closes it.
    _deployment_run("fetch-new-orders", "fetch-new-orders", "fetch-new-orders", Completed())
    code, report = status()
    assert code == 0 and not [i for i in check(report, "runs")["data"]["items"] if i["flow_run_id"] == run_id]


def test_one_kind_of_run_is_singular(ready, tmp_path):
    assert import_file(tmp_path, "o.gz", [order("1")]) == 0
    assert check(status("--no-prefect")[1], "runs")["detail"].startswith("1 kind of run, all fine")


def test_backups_check_asks_the_server_which_database_it_is(ready, backup_dir, monkeypatch):
    """A URL without dbname (libpq takes PGDATABASE) still finds this database's backups (review M9)."""
    from flows.status_checks import check_backups
    from flows.status_model import StatusContext

    params = conninfo_to_dict(libpq_url(ready))
    monkeypatch.setenv("PGDATABASE", params.pop("dbname"))
    ctx = StatusContext(psycopg.conninfo.make_conninfo(**params), "public", datetime.now(UTC), False, backup_dir)
    got = check_backups(ctx)
    assert "no verified backup yet" not in got.detail and got.data["backups"] == 1, got


def test_the_status_command_with_a_server_up_imports_no_prefect(ready, tmp_path):
    """`hub status` with the server known (PREFECT_API_URL, as `hub serve`'s is found) reads the runs and
    the limits over REST: no `import prefect` (~2 s of CPU) in a check a monitor runs every minute."""
    from prefect.settings import PREFECT_API_URL

    from flows.indexes import ensure_indexes
    from tests.integration.test_cli_startup import run_hub

    ensure_indexes(dry_run=True)  # a run only Prefect records
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_API_URL=PREFECT_API_URL.value(), HUB_DATABASE_URL=ready)
    proc, seen = run_hub(["status", "--json"], env, tmp_path / "probe.json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, (proc.stderr[-2000:], report)
    assert seen["modules"] == [], seen["modules"]
    items = {i["flow"]: i for i in check(report, "runs")["data"]["items"]}
    assert (items["ensure-indexes"]["source"], items["ensure-indexes"]["state"]) == ("prefect", "completed")
    locks = check(report, "locks")["data"]["items"]
    assert len(locks) == 6 and all(x["exists"] and x["active"] and x["limit"] == 1 for x in locks)
