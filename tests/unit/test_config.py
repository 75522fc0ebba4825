"""Configuration: env prefix, defaults, secrets kept out of reprs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from db.connection import mask_url, with_database
from flows.config import HubConfig, default_home


def test_env_prefix_and_secret_values_hidden(monkeypatch):
    monkeypatch.setenv("HUB_SHOPTET_TOKEN", "tok-very-secret-123")
    monkeypatch.setenv("HUB_DATABASE_URL", "postgresql://u:pw-secret@h/db")
    monkeypatch.setenv("HUB_DB_SCHEMA", "shop")
    cfg = HubConfig()
    assert cfg.db_schema == "shop"
    assert cfg.shoptet_token.get_secret_value() == "tok-very-secret-123"
    assert "tok-very-secret" not in repr(cfg) and "pw-secret" not in repr(cfg)


def test_token_kind_is_validated(monkeypatch):
    monkeypatch.setenv("HUB_SHOPTET_TOKEN_KIND", "bearer")
    with pytest.raises(ValueError, match="private"):
        HubConfig()


@pytest.mark.skipif(os.geteuid() != 0, reason="root-only default")
def test_root_default_home_has_world_readable_parents():
    # The embedded server's wheel opens r/x on every parent of its data folder when run as root.
    assert default_home() == Path("/var/lib/shoptet-hub")


@pytest.mark.parametrize(
    "url, masked",
    [
        ("postgresql://hub:secret@db:5432/shop", "postgresql://hub:***@db:5432/shop"),
        ("postgresql://hub@db/shop", "postgresql://hub@db/shop"),
        ("postgresql:///shop?host=/run&password=x", "postgresql:///shop?host=/run&password=***"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_with_database_keeps_the_query():
    url = with_database("postgresql://u@/a?host=/s", "b")
    assert conninfo_to_dict(url) == {"user": "u", "dbname": "b", "host": "/s"}


@pytest.fixture
def fresh_config():
    from flows.config import reload_config

    reload_config()
    yield
    reload_config()


def test_get_config_keeps_what_it_read_until_reload_config(monkeypatch, fresh_config):
    from flows import runtime
    from flows.config import get_config, reload_config

    monkeypatch.setenv("HUB_DATABASE_URL", "postgresql://hub@first.example/shop")
    reload_config()
    assert runtime.database_url() == "postgresql://hub@first.example/shop"
    monkeypatch.setenv("HUB_DATABASE_URL", "postgresql://hub@second.example/shop")
    assert runtime.database_url() == "postgresql://hub@first.example/shop"  # cached: read once
    assert reload_config() is get_config()
    assert runtime.database_url() == "postgresql://hub@second.example/shop"


def test_reload_config_values_win_over_the_environment_until_the_next_reload(monkeypatch, fresh_config):
    from flows.config import get_config, reload_config

    monkeypatch.setenv("HUB_REJECT_THRESHOLD", "0.02")
    reload_config(reject_threshold=0.05, db_schema="shop")
    assert (get_config().reject_threshold, get_config().db_schema) == (0.05, "shop")
    get_config.cache_clear()  # what tests do: the values set in code stay
    assert get_config().reject_threshold == 0.05
    with pytest.raises(ValueError, match="private"):
        reload_config(shoptet_token_kind="bearer")
    assert get_config().reject_threshold == 0.05  # a refused value changes nothing
    reload_config()
    assert (get_config().reject_threshold, get_config().db_schema) == (0.02, "public")
