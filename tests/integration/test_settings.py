"""The settings service in one process on real PostgreSQL: TTL, invalidation, stampede, absent keys, types."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from db.settings.registry import get_settings_service
from db.settings.service import SettingsService, SettingValueError

pytestmark = pytest.mark.integration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make(db_url):
    """SettingsService factory; every service is closed before the test database is dropped."""
    made: list[SettingsService] = []

    def _make(**kw) -> SettingsService:
        kw.setdefault("listen", False)
        svc = SettingsService(db_url, **kw)
        made.append(svc)
        return svc

    yield _make
    for svc in made:
        svc.close()


def put(conn: psycopg.Connection, key: str, json_text: str) -> None:
    """A write from 'somewhere else': plain SQL, bypassing the service."""
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (%s, %s::jsonb) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        (key, json_text),
    )


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_ttl_expiry_with_a_fake_clock(make, conn):
    clock = FakeClock()
    svc = make(ttl=60, clock=clock)
    put(conn, "k", "1")
    assert svc.get("k") == 1
    put(conn, "k", "2")  # no listener: only the TTL can reveal it
    clock.now += 59.9
    assert svc.get("k") == 1
    clock.now += 0.1  # expiry is at timer() >= stored + ttl
    assert svc.get("k") == 2
    s = svc.stats()
    assert (s.loads, s.hits, s.misses) == (2, 1, 2)


def test_set_and_delete_invalidate_locally_and_bump_version(make):
    svc = make()
    assert svc.get("k") is None
    assert svc.set("k", {"a": [1, 2]}) == 1
    assert svc.get("k") == {"a": [1, 2]}
    assert svc.set("k", "x") == 2
    assert svc.get("k") == "x"
    [row] = svc.list()
    assert (row.key, row.value, row.version) == ("k", "x", 2)
    assert svc.delete("k") is True
    assert svc.get("k", "gone") == "gone"
    assert svc.delete("k") is False
    assert svc.stats().invalidations == 4


def test_version_and_updated_at_move_on_every_write(make, conn):
    svc = make()
    svc.set("k", 1)
    conn.execute("UPDATE settings SET updated_at = updated_at - interval '1 hour'")
    before = conn.execute("SELECT updated_at FROM settings").fetchone()[0]
    svc.set("k", 1)
    version, after = conn.execute("SELECT version, updated_at FROM settings").fetchone()
    assert version == 2 and after > before


def test_absent_keys_are_cached_too(make, conn):
    svc = make()
    for _ in range(5):
        assert svc.get("nope") is None
    s = svc.stats()
    assert (s.loads, s.hits, s.misses, s.size) == (1, 4, 1, 1)
    svc.set("nope", 3)  # a local write replaces the negative entry
    assert svc.get("nope") == 3


def test_twenty_concurrent_readers_of_a_cold_key_cause_one_db_read(make, db_url, conn):
    svc = make()
    put(conn, "cold", "[1, 2]")
    results: list[object] = []
    # Hold the table so the first reader's SELECT blocks: every other reader must arrive during the load.
    with psycopg.connect(db_url) as locker:
        locker.execute("LOCK TABLE settings IN ACCESS EXCLUSIVE MODE")
        threads = [threading.Thread(target=lambda: results.append(svc.get("cold"))) for _ in range(20)]
        for t in threads:
            t.start()
        wait_until(lambda: svc.stats().misses == 20)
        assert svc.stats().loads == 1
    for t in threads:
        t.join(10)
    assert results == [[1, 2]] * 20
    s = svc.stats()
    assert (s.loads, s.misses, s.hits) == (1, 20, 0)
    results[0].append(3)  # each reader got its own list
    assert svc.get("cold") == [1, 2]


def test_a_write_during_a_load_is_not_overwritten_by_the_stale_read(make, db_url, conn):
    svc = make()
    put(conn, "k", "1")
    got: list[object] = []
    with psycopg.connect(db_url) as locker:
        locker.execute("LOCK TABLE settings IN ACCESS EXCLUSIVE MODE")
        reader = threading.Thread(target=lambda: got.append(svc.get("k")))
        reader.start()
        wait_until(lambda: svc.stats().loads == 1)
        svc.invalidate("k")  # what the listener does when another process's write commits
    reader.join(10)
    assert got == [1]
    assert svc.get("k") == 1 and svc.stats().loads == 2  # the in-flight result was not cached


def test_a_failed_load_is_not_cached(make):
    svc = make(schema="no_such_schema")
    for _ in range(2):
        with pytest.raises(psycopg.errors.UndefinedTable):
            svc.get("k")
    s = svc.stats()
    assert (s.load_errors, s.loads, s.size) == (2, 2, 0)


def test_typed_get_coerces_and_explains_a_bad_type(make, conn):
    svc = make()
    svc.set("n", "12")
    assert svc.get("n") == "12"
    assert svc.get("n", type_=int) == 12
    with pytest.raises(SettingValueError, match=r"'n' holds \"12\", which is not a valid list\[int\]"):
        svc.get("n", type_=list[int])
    assert svc.get("missing", 7, type_=int) == 7


def test_known_rules_have_typed_defaults_and_refuse_bad_writes(make, conn):
    svc = make()
    first = svc.get("cancelled_statuses")
    assert first == [-4] and svc.get("reject_threshold") == 0.01
    first.append(99)  # the default handed out is a copy
    assert svc.get("cancelled_statuses") == [-4]
    svc.set("cancelled_statuses", ["7", -4])
    assert svc.get("cancelled_statuses") == [7, -4]
    stored = conn.execute("SELECT value FROM settings WHERE key = 'cancelled_statuses'").fetchone()[0]
    assert stored == [7, -4]
    with pytest.raises(SettingValueError, match="reject_threshold"):
        svc.set("reject_threshold", 2)
    put(conn, "reject_threshold", '"lots"')  # a bad manual edit is reported with the fix
    svc.invalidate("reject_threshold")
    with pytest.raises(SettingValueError, match="hub settings set reject_threshold"):
        svc.get("reject_threshold")


def test_values_that_are_not_json_are_refused(make):
    svc = make()
    with pytest.raises(SettingValueError, match="not storable as JSON"):
        svc.set("x", float("nan"))
    with pytest.raises(SettingValueError, match="non-empty"):
        svc.set(" ", 1)


def test_process_wide_accessor_returns_one_service_per_url_and_schema(db_url):
    a = get_settings_service(db_url)
    try:
        assert get_settings_service(db_url) is a
        assert a.wait_listening(10)
    finally:
        a.close()
    b = get_settings_service(db_url)  # a closed service is replaced
    try:
        assert b is not a
    finally:
        b.close()
