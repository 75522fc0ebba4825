"""The hub's "now" (UTC): the wall clock, or a simulated one for the soak run (``tests/soak``).

One seam instead of ``datetime.now(UTC)`` scattered through the modules whose decisions depend on the
date: backup manifests and their retention, the failed-snapshot retry gap, the partition plan and the
accepted date window, ``hub status``. Process-wide on purpose (Prefect runs tasks in worker threads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

_source: Callable[[], datetime] | None = None


def now() -> datetime:
    """Aware UTC now, from the simulated clock when one is in use."""
    return _source() if _source is not None else datetime.now(UTC)


@contextmanager
def simulated(source: Callable[[], datetime]) -> Iterator[None]:
    """Make ``now()`` read ``source`` (an aware datetime) for the duration of the block."""
    global _source
    saved, _source = _source, source
    try:
        yield
    finally:
        _source = saved
