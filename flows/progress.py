"""In-process progress listeners (the demo's Rich bar). Prefect artifacts are fed separately."""

from __future__ import annotations

from collections.abc import Callable

Listener = Callable[..., None]
_listeners: list[Listener] = []


def subscribe(fn: Listener) -> Callable[[], None]:
    _listeners.append(fn)
    return lambda: _listeners.remove(fn)


def emit(**event: object) -> None:
    for fn in list(_listeners):
        fn(**event)
