"""`hub settings …` in-process (CliRunner) against a fresh test database."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from db.settings.rules import RULES
from deployments.cli import app
from flows.config import get_config

pytestmark = pytest.mark.integration
runner = CliRunner()


def hub(*args: str):
    return runner.invoke(app, ["settings", *args])


def test_set_get_round_trip(hub_env):
    assert hub("set", "cancelled_statuses", "[-4, 7]").exit_code == 0
    res = hub("get", "cancelled_statuses")
    assert res.exit_code == 0 and json.loads(res.stdout) == [-4, 7]
    assert hub("set", "note", "hello world").exit_code == 0  # not JSON: stored as a string
    assert json.loads(hub("get", "note").stdout) == "hello world"
    assert hub("set", "n", "-4").exit_code == 0  # a negative number is a value, not an option
    assert json.loads(hub("get", "n").stdout) == -4
    assert hub("set", "s", '"42"').exit_code == 0
    assert json.loads(hub("get", "s").stdout) == "42"


def test_get_missing_exits_1_with_a_clear_message(hub_env):
    res = hub("get", "nope")
    assert res.exit_code == 1 and "setting 'nope' is not set" in res.output
    res = hub("get", "cancelled_statuses")
    assert res.exit_code == 1 and "flows use the default [-4]" in res.output


def test_set_refuses_a_bad_value_for_a_known_rule(hub_env):
    res = hub("set", "reject_threshold", "5")
    assert res.exit_code == 1 and "reject_threshold" in res.output
    assert hub("get", "reject_threshold").exit_code == 1


def test_list_delete_and_stats(hub_env):
    hub("set", "alpha", '{"x": 1}')
    hub("set", "alpha", '{"x": 2}')
    res = hub("list")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["key", "version", "updated_at", "value"]
    alpha = next(line for line in lines if line.startswith("alpha "))
    assert alpha.split()[1] == "2" and alpha.endswith('{"x": 2}')
    assert any(line.startswith("cancelled_statuses ") and "(default)" in line for line in lines)

    res = hub("stats")
    assert res.exit_code == 0, res.output
    stats = dict(line.split(maxsplit=1) for line in res.stdout.splitlines())
    keys = len(RULES) + 1  # every known rule and "alpha": one load each, then one hit each
    assert stats["listening"] == "True" and int(stats["loads"]) == int(stats["hits"]) == keys

    assert hub("delete", "alpha").exit_code == 0
    assert hub("get", "alpha").exit_code == 1
    res = hub("delete", "alpha")
    assert res.exit_code == 1 and "not set" in res.output


def test_settings_commands_run_pending_migrations(empty_db_url, monkeypatch):
    monkeypatch.setenv("HUB_DATABASE_URL", empty_db_url)
    get_config.cache_clear()
    try:
        assert hub("set", "k", "1").exit_code == 0
        assert hub("get", "k").stdout.strip() == "1"
    finally:
        get_config.cache_clear()
