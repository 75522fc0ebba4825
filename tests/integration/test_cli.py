"""The `hub` CLI: exit codes and messages (in-process, Prefect under its test harness)."""

from __future__ import annotations

import gzip

import psycopg
import pytest
from typer.testing import CliRunner

from db.connection import libpq_url
from deployments.cli import app
from flows.config import get_config
from tests.factories import order, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]
runner = CliRunner()


def test_import_file_applies_and_reports(hub_env, tmp_path):
    f = write_jsonl(tmp_path / "o.jsonl.gz", [order(str(i)) for i in range(5)])
    res = runner.invoke(app, ["import-file", "orders", str(f)])
    assert res.exit_code == 0, res.output
    assert "inserted" in res.output
    with psycopg.connect(libpq_url(hub_env)) as c:
        assert c.execute("SELECT count(*) FROM orders").fetchone()[0] == 5


def test_import_file_over_threshold_exits_non_zero_with_reason(hub_env, tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl.gz", [order("1"), b"nope", b"{"])
    res = runner.invoke(app, ["import-file", "orders", str(f)])
    assert res.exit_code == 1
    assert "2 of 3 lines rejected" in res.output


def test_import_file_mass_delete_refused_then_allowed(hub_env, tmp_path):
    full = write_jsonl(tmp_path / "a.gz", [order(str(i)) for i in range(6)])
    runner.invoke(app, ["import-file", "orders", str(full)])
    small = write_jsonl(tmp_path / "b.gz", [order("1")])
    res = runner.invoke(app, ["import-file", "orders", str(small), "--full"])
    assert res.exit_code == 1 and "--allow-mass-delete" in res.output
    res = runner.invoke(app, ["import-file", "orders", str(small), "--full", "--allow-mass-delete"])
    assert res.exit_code == 0, res.output


def test_import_file_runs_pending_migrations(empty_db_url, monkeypatch, tmp_path):
    monkeypatch.setenv("HUB_DATABASE_URL", empty_db_url)
    get_config.cache_clear()
    try:
        res = runner.invoke(app, ["import-file", "orders", str(write_jsonl(tmp_path / "a.gz", [order("1")]))])
        assert res.exit_code == 0, res.output
    finally:
        get_config.cache_clear()


def test_db_url_masks_the_password(monkeypatch):
    monkeypatch.setenv("HUB_DATABASE_URL", "postgresql://hub:s3cret@db.example:5432/shop?sslmode=require")
    get_config.cache_clear()
    try:
        res = runner.invoke(app, ["db", "url"])
    finally:
        get_config.cache_clear()
    assert res.exit_code == 0
    assert "s3cret" not in res.output and "postgresql://hub:***@db.example:5432/shop" in res.output


def test_generate_writes_a_deterministic_gzip_snapshot(tmp_path):
    a, b = tmp_path / "a.gz", tmp_path / "b.gz"
    for out in (a, b):
        res = runner.invoke(app, ["generate", "orders", "--count", "20", "--out", str(out), "--seed", "5"])
        assert res.exit_code == 0
    assert a.read_bytes() == b.read_bytes()
    assert len(gzip.decompress(a.read_bytes()).splitlines()) == 20


def test_unknown_entity_is_a_usage_error():
    res = runner.invoke(app, ["generate", "invoices", "--count", "1", "--out", "x"])
    assert res.exit_code == 2
