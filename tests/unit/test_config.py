"""Configuration: env prefix, defaults, secrets kept out of reprs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    assert with_database("postgresql://u@/a?host=/s", "b") == "postgresql://u@/b?host=/s"
