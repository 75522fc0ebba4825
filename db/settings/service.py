"""Runtime business rules from the ``settings`` table, behind a per-process TTL cache.

Reads are served from a ``cachetools.TTLCache`` (not thread-safe, hence the lock) that also remembers
absent keys. A cold key is loaded by one thread while the others wait for it (no stampede). Staleness is
bounded three ways: a write drops the key locally at once; the trigger from migration 0002 NOTIFYs every
other process at commit (``db.settings.listener``); and the TTL caps whatever a lost notification leaves.

    svc = get_settings_service(url, schema)
    svc.get("cancelled_statuses")             # [-4] until someone sets it (db.settings.rules)
    svc.get("vip_min_orders", 5, type_=int)   # any key; coerced/validated by pydantic
    svc.set("cancelled_statuses", [-4, 7])    # every process sees it within milliseconds

Counters (``stats()``) are per process: each process has its own cache. Each service also adds them to
totals over every process in the database (``db.settings.stats``, what ``hub status`` shows): at close,
at process exit, and at most once a minute on a cache miss.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from cachetools import TTLCache
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from db.connection import connect
from db.settings import stats as settings_stats
from db.settings import store
from db.settings.entries import (
    _ABSENT,
    SettingsStats,
    SettingValueError,
    _check_key,
    _Entry,
    _first_error,
    _Load,
    _short,
    _type_name,
)
from db.settings.listener import Listener
from db.settings.rules import RULES, adapter
from db.settings.store import Change, SettingRow

__all__ = [
    "SettingRow",
    "SettingValueError",
    "SettingsService",
    "SettingsStats",
]

log = logging.getLogger(__name__)

DEFAULT_TTL = 3600.0
_UNSET: Any = object()


class SettingsService:
    """Typed, cached access to the ``settings`` table of one schema. Thread-safe; one per process."""

    def __init__(
        self,
        url: str,
        schema: str = "public",
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
        maxsize: int = 1024,
        listen: bool = True,
        poll_interval: float = 0.25,
        reconnect_backoff: tuple[float, float] = (0.05, 5.0),
        persist_stats: bool = True,
        on_close: Callable[[SettingsService], None] | None = None,
    ) -> None:
        self.url, self.schema = url, schema
        self._on_close = on_close  # the process registry forgets a closed service
        self._persist_stats = persist_stats  # False: a reader that must not count itself (hub status)
        self._lock = threading.Lock()
        self._cache: TTLCache[str, _Entry] = TTLCache(maxsize=maxsize, ttl=ttl, timer=clock)
        self._loading: dict[str, _Load] = {}
        self._db_lock = threading.Lock()
        self._db: psycopg.Connection | None = None
        self._closed = False
        self._hits = self._misses = self._loads = self._load_errors = 0
        self._invalidations = self._clears = self._notifications = self._connects = 0
        self._flushed = dict.fromkeys(settings_stats.COUNTERS, 0)  # what flush_stats already added
        self._flushed_at = time.monotonic()
        self._listener: Listener | None = None
        if listen:
            self._listener = Listener(
                url,
                schema,
                on_connect=self._on_listener_connect,
                on_change=self._on_change,
                poll_interval=poll_interval,
                backoff=reconnect_backoff,
            )
            self._listener.start()

    # --- reads ----------------------------------------------------------------------------------------

    def get(self, key: str, default: Any = _UNSET, type_: Any = None) -> Any:
        """The value of ``key``, validated/coerced to ``type_`` (default: the known rule's type, if any).

        Missing key: ``default`` if given, else the known rule's default, else None.
        """
        if self._closed:
            raise RuntimeError("this SettingsService is closed; get a new one with get_settings_service()")
        with self._lock:  # the hit path, inlined: it is what every flow pays per read
            try:
                entry = self._cache[key]  # not .get(): Cache.get looks the key up twice
                self._hits += 1
            except KeyError:
                entry = None
        if entry is None:
            entry = self._load(key)
        if entry is _ABSENT:
            if default is not _UNSET:
                return default
            rule = RULES.get(key)
            return rule.fresh_default() if rule is not None else None
        if type_ is None:
            rule = RULES.get(key)
            if rule is None:
                return entry.value if entry.copy is None else entry.copy(entry.value)
            type_ = rule.type_
        checked = entry.checked.get(type_, _UNSET)
        if checked is not _UNSET:
            return checked if entry.copy is None else entry.copy(checked)
        value = entry.value if entry.copy is None else entry.copy(entry.value)
        try:
            result = adapter(type_).validate_python(value)
            if entry.copy in (None, list.copy, dict.copy):
                entry.checked[type_] = result
                return result if entry.copy is None else entry.copy(result)
            return result
        except ValidationError as exc:
            raise SettingValueError(
                f"setting {key!r} holds {_short(value)}, which is not a valid {_type_name(type_)}: "
                f"{_first_error(exc)}. Fix it with `hub settings set {key} <JSON>`."
            ) from None

    def list(self) -> list[SettingRow]:
        """Every stored row, straight from the database (an admin view; not cached)."""
        with self._conn() as conn:
            return store.list_rows(conn, self.schema)

    # --- writes ---------------------------------------------------------------------------------------

    def set(self, key: str, value: Any) -> int:
        """Store ``value`` (JSON-serializable; validated for known keys); returns the row's new version."""
        _check_key(key)
        rule = RULES.get(key)
        if rule is not None:  # refuse a bad rule at write time, not in the next flow run
            ta = adapter(rule.type_)
            try:
                value = ta.dump_python(ta.validate_python(value), mode="json")
            except ValidationError as exc:
                raise SettingValueError(
                    f"{_short(value)} is not a valid {_type_name(rule.type_)} for {key!r}: {_first_error(exc)}"
                ) from None
        try:
            text = json.dumps(to_jsonable_python(value), allow_nan=False, ensure_ascii=False)
        except (ValueError, TypeError) as exc:  # NaN/inf, or an object with no JSON form
            raise SettingValueError(f"setting {key!r}: the value is not storable as JSON ({exc})") from None
        with self._conn() as conn, conn.transaction():
            version = store.upsert(conn, self.schema, key, text)
        # After commit: other processes hear the trigger's NOTIFY; this one must not wait for it.
        self.invalidate(key)
        return version

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed. Known keys fall back to their default."""
        with self._conn() as conn, conn.transaction():
            existed = store.delete(conn, self.schema, key)
        self.invalidate(key)
        return existed

    # --- invalidation ---------------------------------------------------------------------------------

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)
            if (load := self._loading.get(key)) is not None:
                load.stale = True
            self._invalidations += 1

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            for load in self._loading.values():
                load.stale = True
            self._clears += 1

    def _on_listener_connect(self) -> None:
        # Runs after LISTEN: whatever changed while we were not listening is dropped now.
        with self._lock:
            self._connects += 1
        self.clear()

    def _on_change(self, change: Change) -> None:
        with self._lock:
            self._notifications += 1
        if not change.concerns(self.schema):
            return  # another hub's schema in the same database
        if change.key is None:
            self.clear()
        else:
            self.invalidate(change.key)

    # --- introspection and lifecycle ------------------------------------------------------------------

    def stats(self) -> SettingsStats:
        with self._lock:
            self._cache.expire()
            return SettingsStats(
                hits=self._hits,
                misses=self._misses,
                loads=self._loads,
                load_errors=self._load_errors,
                invalidations=self._invalidations,
                clears=self._clears,
                notifications=self._notifications,
                connects=self._connects,
                size=len(self._cache),
                listening=self._listener is not None and self._listener.backend_pid is not None,
            )

    @property
    def listener_pid(self) -> int | None:
        return self._listener.backend_pid if self._listener is not None else None

    def wait_listening(self, timeout: float = 10.0) -> bool:
        """Block until the listener is connected (only then do other processes' writes reach this cache)."""
        return self._listener is not None and self._listener.wait_connected(timeout)

    def flush_stats(self) -> bool:
        """Add the hits and misses counted since the last flush to the database's totals.

        Best effort: the counters are for ``hub status``, so a failure is logged and never raised (the
        unflushed counts are kept for the next flush). Returns whether the totals are up to date.
        """
        with self._lock:
            now = {c: getattr(self, f"_{c}") for c in settings_stats.COUNTERS}
            deltas = {c: now[c] - self._flushed[c] for c in now}
            self._flushed_at = time.monotonic()
        if not self._persist_stats or not any(deltas.values()):
            return True
        try:
            with self._conn() as conn:
                settings_stats.add_counts(conn, **deltas)
        except psycopg.Error as exc:
            log.debug("settings cache counters not flushed: %s", type(exc).__name__)
            return False
        with self._lock:
            for c, d in deltas.items():
                self._flushed[c] += d
        return True

    def close(self) -> None:
        """Stop the listener, flush the counters and close the connections. Idempotent."""
        if not self._closed:
            self.flush_stats()
        self._closed = True
        if self._listener is not None:
            self._listener.stop()
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        if self._on_close is not None:
            self._on_close(self)

    def __enter__(self) -> SettingsService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------------------

    def _load(self, key: str) -> _Entry:
        """A miss: load ``key`` once, however many threads ask for it meanwhile."""
        with self._lock:
            try:
                entry = self._cache[key]  # filled since the caller looked?
                self._hits += 1
                return entry
            except KeyError:
                pass
            self._misses += 1
            load = self._loading.get(key)
            owner = load is None
            if load is None:
                load = self._loading[key] = _Load()
                self._loads += 1
        if not owner:
            load.done.wait()
            if load.error is not None:
                raise load.error
            assert load.entry is not None
            return load.entry
        try:
            raw = self._fetch(key)
            entry = _ABSENT if raw is None else _Entry.from_json(raw)
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
                self._load_errors += 1
            load.error = exc  # not cached: the next reader tries again
            load.done.set()
            raise
        with self._lock:
            del self._loading[key]
            if not load.stale:
                self._cache[key] = entry
        load.entry = entry
        load.done.set()
        if time.monotonic() - self._flushed_at >= settings_stats.FLUSH_SECONDS:
            self.flush_stats()  # a miss talks to the database anyway; hits never do
        return entry

    def _fetch(self, key: str) -> bytes | None:
        try:
            with self._conn() as conn:
                return store.fetch_json(conn, self.schema, key)
        except psycopg.OperationalError:
            # One retry on a fresh connection: the idle one may have been closed by the server.
            with self._conn() as conn:
                return store.fetch_json(conn, self.schema, key)

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        """The service's one query connection (autocommit, so it never idles inside a transaction)."""
        with self._db_lock:
            if self._db is None or self._db.closed:
                self._db = connect(self.url, self.schema, autocommit=True)
            try:
                yield self._db
            except psycopg.OperationalError:
                self._db.close()
                self._db = None
                raise
