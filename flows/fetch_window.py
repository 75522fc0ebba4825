"""Where an incremental fetch's window starts, and when it reaches past the change log's 30 days.

Pure functions of the stored watermark, ``since`` and the mirror, so the first-run rules are testable
on their own (``flows/fetch.py`` has the whole recipe).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flows.entities import Entity
from flows.runs import RunFailed

CHANGE_LOG_HORIZON = timedelta(days=30)  # reference §6, §9.13


class FetchFailed(RunFailed):
    """An incremental fetch failed; the watermark did not move, so the next run redoes the window."""


class NoStartingPoint(FetchFailed):
    """First fetch of an entity with nothing to start from."""


@dataclass(frozen=True)
class Window:
    start: datetime
    basis: str  # watermark | since | mirror
    reference: datetime  # the previous watermark (or what stands in for it)
    horizon_exceeded: bool


def plan_window(
    *,
    started: datetime,
    lookback: timedelta,
    watermark: datetime | None,
    since: datetime | None,
    newest_mirrored: datetime | None,
) -> Window:
    """Where this run's window starts; pure, so the first-run rules are testable on their own."""
    if since is not None:
        basis, reference, start = "since", since, since
    elif watermark is not None:
        basis, reference, start = "watermark", watermark, watermark - lookback
    elif newest_mirrored is not None:
        basis, reference, start = "mirror", newest_mirrored, newest_mirrored - lookback
    else:
        raise NoStartingPoint(
            "no watermark yet and the mirror is empty: import a full snapshot first (`hub sync ENTITY`) "
            "or pass --since to fetch everything changed since then",
            stage="plan",
            run_id=None,
        )
    return Window(start, basis, reference, started - reference > CHANGE_LOG_HORIZON)


def horizon_warning(entity: Entity, window: Window, started: datetime) -> str:
    age = (started - window.reference).total_seconds() / 86400
    missed = "deletes" if entity is Entity.orders else "edits and deletes"
    return (
        f"{entity.value}: the previous {window.basis} is {age:.1f} days old, beyond the change log's "
        f"30 days; {missed} older than that may have been missed. "
        f"Import a full snapshot (`hub sync {entity.value}`)."
    )
