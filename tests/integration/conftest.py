"""Fixtures shared by the integration tests that run flows."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flows.config import get_config
from shoptet.sandbox import REFERENCE, ManualClock
from shoptet.sandbox.server import SandboxServer


@pytest.fixture
def hub_env(db_url, monkeypatch):
    """The CLI and flows configured (HUB_DATABASE_URL) for this test's database."""
    monkeypatch.setenv("HUB_DATABASE_URL", db_url)
    get_config.cache_clear()
    yield db_url
    get_config.cache_clear()


@pytest.fixture
def sandbox():
    """The sandbox Shoptet API on a manual clock (300 orders): tests move time instead of sleeping."""
    clock = ManualClock(REFERENCE + timedelta(days=1))
    with SandboxServer(orders=300, seed=7, clock=clock, job_seconds=30, reference=REFERENCE) as sb:
        sb.state.limits.enabled = False  # the bucket drains only as the manual clock moves
        yield sb
