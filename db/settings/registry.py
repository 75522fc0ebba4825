"""The process-wide settings services used by flows: one per (url, schema), closed at exit, reset after fork."""

from __future__ import annotations

import atexit
import os
import threading

from db.settings.service import SettingsService

_registry: dict[tuple[str, str], SettingsService] = {}
_registry_lock = threading.Lock()
_inherited: list[SettingsService] = []


def get_settings_service(url: str, schema: str = "public") -> SettingsService:
    """The process's service for (url, schema), created (and its listener started) on first use."""
    with _registry_lock:
        svc = _registry.get((url, schema))
        if svc is None:
            svc = _registry[(url, schema)] = SettingsService(url, schema, on_close=_forget)
        return svc


def close_settings_services() -> None:
    with _registry_lock:
        services = list(_registry.values())
        _registry.clear()
    for svc in services:
        svc.close()


def _forget(svc: SettingsService) -> None:
    with _registry_lock:
        if _registry.get((svc.url, svc.schema)) is svc:
            del _registry[(svc.url, svc.schema)]


def _after_fork_in_child() -> None:
    # A forked child has no listener thread and shares the parent's sockets. Start afresh, and keep the
    # inherited objects referenced: finalizing them would send a Terminate on the parent's connections.
    global _registry_lock
    _registry_lock = threading.Lock()
    _inherited.extend(_registry.values())
    _registry.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _flush_all(timeout: float = 5.0) -> None:
    """At exit: flush every service's counters, giving up after ``timeout`` (a dead database must not
    hold the process: a daemon thread does not keep the interpreter alive)."""
    with _registry_lock:
        services = list(_registry.values())
    if not services:
        return
    flusher = threading.Thread(target=lambda: [svc.flush_stats() for svc in services], daemon=True)
    flusher.start()
    flusher.join(timeout)


atexit.register(_flush_all)  # each process's cache counters reach the totals (db.settings.stats)
