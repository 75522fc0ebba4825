"""The known business rules: key, type and default, in one place.

A flow reads ``service.get("cancelled_statuses")`` and gets the stored value validated as ``list[int]``,
or the default below while nobody has set it. Keys not listed here work too, untyped unless the caller
passes ``type_``. Add a rule here (e.g. ``rfm_segments``) rather than repeating a default at call sites.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from db.dates import DEFAULT_AHEAD_DAYS, DEFAULT_FROM


@dataclass(frozen=True)
class Rule:
    key: str
    type_: Any
    default: Any
    help: str

    def fresh_default(self) -> Any:
        """The default as a new object: a caller mutating its list must not change the next caller's."""
        return adapter(self.type_).validate_python(self.default)


RULES: dict[str, Rule] = {
    r.key: r
    for r in (
        Rule(
            "cancelled_statuses",
            list[int],
            [-4],
            "Shoptet order status ids that count as cancelled (left out of revenue and customer metrics).",
        ),
        Rule(
            "reject_threshold",
            Annotated[float, Field(ge=0, le=1)],
            0.01,
            "Share of bad snapshot lines above which an apply is rolled back.",
        ),
        Rule(
            "mass_delete_threshold",
            Annotated[float, Field(ge=0, le=1)],
            0.5,
            "Share of a table a full snapshot may delete; over it the apply is refused (--allow-mass-delete).",
        ),
        Rule(
            "dates_accepted_from",
            date,
            DEFAULT_FROM,
            "Snapshot lines dated (creationTime, changeTime) before this day are rejected.",
        ),
        Rule(
            "dates_accepted_ahead_days",
            Annotated[int, Field(ge=0, le=36500)],
            DEFAULT_AHEAD_DAYS,
            "Snapshot lines dated more than this many days ahead of now are rejected.",
        ),
        Rule(
            "partition_runway_quarters",
            Annotated[int, Field(ge=0, le=40)],
            2,
            "order_items partitions kept ready past the current quarter (hub partitions).",
        ),
        Rule(
            "partition_retention_years",
            Annotated[int, Field(ge=0, le=100)],
            2,
            "order_items quarters entirely older than this many years are archived (pg_dump) and dropped; 0 keeps all.",
        ),
    )
}


@lru_cache(maxsize=256)
def _cached_adapter(type_: Any) -> TypeAdapter[Any]:
    return TypeAdapter(type_)


def adapter(type_: Any) -> TypeAdapter[Any]:
    """A TypeAdapter per type, built once: building one costs far more than a cached read."""
    try:
        return _cached_adapter(type_)
    except TypeError:  # an unhashable type expression: build it each time
        return TypeAdapter(type_)
