"""Invalidation across sessions and processes: the NOTIFY trigger (migration 0002) and the listener thread."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from db.connection import libpq_url
from db.migrate import downgrade, upgrade
from db.settings.service import SettingsService

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def make(db_url):
    made: list[SettingsService] = []

    def _make(url: str = db_url, **kw) -> SettingsService:
        kw.setdefault("reconnect_backoff", (0.01, 0.1))
        svc = SettingsService(url, **kw)
        made.append(svc)
        assert not kw.get("listen", True) or svc.wait_listening(10)
        return svc

    yield _make
    for svc in made:
        svc.close()


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll ``cond`` with short waits; returns the seconds it took."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.002)
    return time.monotonic() - start


CHILD = """
import json, sys, time
from db.settings.service import SettingsService

url, key = sys.argv[1], sys.argv[2]
with SettingsService(url) as svc:
    assert svc.wait_listening(10)
    first = svc.get(key)
    print(json.dumps({"ready": first}), flush=True)
    deadline = time.monotonic() + 10
    while (value := svc.get(key)) == first and time.monotonic() < deadline:
        time.sleep(0.002)
    s = svc.stats()
    print(json.dumps({"value": value, "loads": s.loads, "notifications": s.notifications}), flush=True)
"""


def test_a_write_reaches_another_process_within_a_second(make, db_url):
    writer = make(listen=False)
    writer.set("cancelled_statuses", [-4])
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url, "cancelled_statuses"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert json.loads(child.stdout.readline()) == {"ready": [-4]}  # cached in the child now
        writer.set("cancelled_statuses", [-4, 7])
        committed = time.monotonic()
        report = json.loads(child.stdout.readline())
        seen_after = time.monotonic() - committed
        assert child.wait(10) == 0, child.stderr.read()
    finally:
        child.kill()
    assert report["value"] == [-4, 7]
    assert report["loads"] == 2 and report["notifications"] >= 1  # invalidated by NOTIFY, not by the TTL
    assert seen_after < 1.0


def test_manual_sql_edits_invalidate_through_the_trigger(make, conn):
    svc = make()
    conn.execute("INSERT INTO settings (key, value) VALUES ('a', '1'), ('b', '1')")
    assert (svc.get("a"), svc.get("b")) == (1, 1)
    conn.execute("UPDATE settings SET value = '2' WHERE key = 'a'")
    wait_until(lambda: svc.get("a") == 2, timeout=1.0)
    conn.execute("UPDATE settings SET key = 'c' WHERE key = 'b'")  # a rename stales both keys
    wait_until(lambda: svc.get("b") is None and svc.get("c") == 1, timeout=1.0)
    conn.execute("DELETE FROM settings WHERE key = 'a'")
    wait_until(lambda: svc.get("a") is None, timeout=1.0)


def test_truncate_and_oversized_keys_clear_the_whole_cache(make, conn):
    svc = make()
    conn.execute("INSERT INTO settings (key, value) VALUES ('a', '1')")
    assert svc.get("a") == 1 and svc.get("z") is None
    clears = svc.stats().clears
    conn.execute("TRUNCATE settings")
    wait_until(lambda: svc.stats().clears == clears + 1, timeout=1.0)
    assert svc.stats().size == 0
    # A key too long for NOTIFY's 8000-byte payload must not make the write fail: "drop everything" instead.
    conn.execute("INSERT INTO settings (key, value) VALUES (%s, '1')", ("k" * 9000,))
    wait_until(lambda: svc.stats().clears == clears + 2, timeout=1.0)


def test_listener_reconnect_clears_the_cache_and_resumes(make, conn):
    conn.execute("INSERT INTO settings (key, value) VALUES ('a', '1')")  # before listening: no NOTIFY pending
    svc = make()
    assert svc.get("a") == 1 and svc.get("missing") is None
    assert svc.stats().size == 2
    old_pid = svc.listener_pid
    assert conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,)).fetchone()[0]
    wait_until(lambda: svc.listener_pid not in (None, old_pid))
    s = svc.stats()
    assert s.connects == 2 and s.size == 0 and s.listening
    # Listening again: a change made by another session after the reconnect reaches the cache.
    assert svc.get("a") == 1
    conn.execute("UPDATE settings SET value = '2' WHERE key = 'a'")
    wait_until(lambda: svc.get("a") == 2, timeout=1.0)


def test_two_hubs_in_one_database_do_not_cross_talk(make, empty_db_url):
    upgrade(empty_db_url, "shop_a")
    upgrade(empty_db_url, "shop_b")
    a, b = make(empty_db_url, schema="shop_a"), make(empty_db_url, schema="shop_b")
    b.set("k", "b")
    # b hears its own write's NOTIFY too, asynchronously: let it arrive before taking the baseline.
    wait_until(lambda: b.stats().notifications == 1, timeout=1.0)
    assert b.get("k") == "b"
    invalidations = b.stats().invalidations
    notes = b.stats().notifications
    a.set("k", "a")
    wait_until(lambda: b.stats().notifications > notes, timeout=1.0)  # b hears a's NOTIFY …
    assert b.stats().invalidations == invalidations  # … and leaves its own key alone
    assert (a.get("k"), b.get("k")) == ("a", "b")


def test_migration_0002_downgrades_and_upgrades(empty_db_url):
    upgrade(empty_db_url)
    triggers = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'settings'::regclass AND NOT tgisinternal"
    with psycopg.connect(libpq_url(empty_db_url)) as c:
        assert {r[0] for r in c.execute(triggers)} == {"settings_notify", "settings_notify_truncate"}
    downgrade(empty_db_url, "public", "0001")
    with psycopg.connect(libpq_url(empty_db_url)) as c:
        assert c.execute(triggers).fetchall() == []
        assert c.execute("SELECT to_regproc('settings_notify')").fetchone()[0] is None
    upgrade(empty_db_url)
