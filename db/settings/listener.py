"""The LISTEN side of the settings cache: a daemon thread on its own autocommit connection.

Why this shape (see reference/postgres-prefect-ops.md §6): a session only receives notifications between
its own transactions, so the connection is autocommit and runs nothing but LISTEN; nothing is delivered
to a disconnected session, so every (re)connect LISTENs first and only then reports ``on_connect`` (the
cache drops everything there); TCP keepalives make a silently dead network path raise instead of hanging.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

import psycopg

from db.connection import connect
from db.settings.store import Change, listen, parse_payload

log = logging.getLogger(__name__)

# libpq options; ignored on Unix sockets. A dead peer is noticed after about 30 + 3 * 10 s.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


class Listener:
    def __init__(
        self,
        url: str,
        schema: str,
        *,
        on_connect: Callable[[], None],
        on_change: Callable[[Change], None],
        poll_interval: float = 0.25,
        backoff: tuple[float, float] = (0.05, 5.0),
    ) -> None:
        self._url, self._schema = url, schema
        self._on_connect, self._on_change = on_connect, on_change
        self._poll = poll_interval  # how quickly stop() is noticed; notifications arrive at once anyway
        self._backoff = backoff
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._pid: int | None = None
        self._thread = threading.Thread(target=self._run, name=f"settings-listener[{schema}]", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self._poll + 2.0 if timeout is None else timeout)

    @property
    def backend_pid(self) -> int | None:
        """The listening session's server PID while connected (see pg_stat_activity)."""
        return self._pid if self._connected.is_set() else None

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                with connect(self._url, self._schema, autocommit=True, **KEEPALIVES) as conn:
                    listen(conn)
                    self._pid = conn.info.backend_pid
                    self._on_connect()
                    self._connected.set()
                    delay = self._backoff[0]
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=self._poll):
                            self._on_change(parse_payload(note.payload))
            except psycopg.Error as exc:
                # The message names host/database at most, never the password.
                reason = (str(exc).strip().splitlines() or [""])[0]
                log.warning(
                    "settings listener disconnected (%s: %s); reconnecting in %.2f s", type(exc).__name__, reason, delay
                )
            except Exception:  # a bug in a callback must not end invalidation for the process's lifetime
                log.exception("settings listener failed; reconnecting in %.2f s", delay)
            finally:
                self._connected.clear()
                self._pid = None
            # Jitter: after a server restart, every process does not reconnect in the same instant.
            if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                break
            delay = min(delay * 2, self._backoff[1])
