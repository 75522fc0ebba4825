"""The values a settings cache holds (``_Entry``), its counters, and the messages of a bad value."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, get_args, get_origin

import orjson
from pydantic import ValidationError


class SettingValueError(ValueError):
    """A stored or proposed value does not fit the setting's type."""


class _Entry:
    """A cached value and how to hand out a private copy of it (a caller may mutate what it gets)."""

    __slots__ = ("checked", "copy", "value")

    def __init__(self, value: Any, copy: Callable[[Any], Any] | None = None) -> None:
        self.value, self.copy = value, copy  # copy None: an immutable scalar, shared as is
        # Validated forms by type: a hit on a typed key then skips pydantic (only flat or scalar values,
        # whose copy function copies what it is given; nested ones are re-parsed from JSON instead).
        self.checked: dict[Any, Any] = {}

    @classmethod
    def from_json(cls, raw: bytes) -> _Entry:
        value = orjson.loads(raw)
        if isinstance(value, list):
            flat = not any(isinstance(v, (list, dict)) for v in value)
            return cls(value, list.copy if flat else partial(_reparse, raw))
        if isinstance(value, dict):
            flat = not any(isinstance(v, (list, dict)) for v in value.values())
            return cls(value, dict.copy if flat else partial(_reparse, raw))
        return cls(value)

    def get(self) -> Any:
        return self.value if self.copy is None else self.copy(self.value)


def _reparse(raw: bytes, _value: Any) -> Any:
    """A deep copy of a nested value: parsing its JSON again beats copy.deepcopy."""
    return orjson.loads(raw)


_ABSENT = _Entry(None)  # negative cache entry: the key has no row


class _Load:
    """One in-flight DB read of a key; later readers of the same key wait on it."""

    __slots__ = ("done", "entry", "error", "stale")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: _Entry | None = None
        self.error: BaseException | None = None
        self.stale = False  # invalidated while loading: hand the result out, but do not cache it


@dataclass(frozen=True)
class SettingsStats:
    hits: int
    misses: int
    loads: int  # DB reads started (misses that waited for another thread's read are not loads)
    load_errors: int
    invalidations: int  # single keys dropped (own writes and notifications)
    clears: int  # whole-cache drops (listener (re)connects, TRUNCATE, clear())
    notifications: int
    connects: int  # listener sessions established; connects - 1 = reconnects
    size: int
    listening: bool

    @property
    def hit_rate(self) -> float:
        reads = self.hits + self.misses
        return self.hits / reads if reads else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "hit_rate": round(self.hit_rate, 6)}


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key.strip():
        raise SettingValueError("a setting key must be a non-empty string")


def _short(value: Any, limit: int = 80) -> str:
    text = orjson.dumps(value).decode() if _jsonable(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _jsonable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


def _type_name(type_: Any) -> str:
    if get_origin(type_) is Annotated:  # the constraints are in the error message already
        type_ = get_args(type_)[0]
    if isinstance(type_, type) and not get_args(type_):
        return type_.__name__
    return repr(type_).replace("typing.", "")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{err['msg']}" + (f" at {where}" if where else "")
