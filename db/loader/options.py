"""What an apply is asked to do (``ApplyOptions``), what it did (``ApplyResult``), and how it refuses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime

from db.dates import DateWindow

# Bytes of JSON per chunk: each chunk costs a savepoint, a key check and two COPY statements (partition
# routing is set up per statement); 2 MB chunks ran 10-15 % faster than 1 MB (docs/benchmarks.md).
CHUNK_BYTES = 2 << 20
Progress = Callable[[int, int, int], None]  # (lines read, compressed bytes read, total bytes)


@dataclass(frozen=True)
class ApplyOptions:
    """How to apply one snapshot file; the defaults are an incremental apply of an API snapshot.

    ``full``: the file holds every row of the shop, so stored rows it lacks are deleted — refused when
    that would be more than ``mass_delete_share`` of the table, unless ``allow_mass_delete``.
    ``as_of``: when the snapshot was taken (the job's creation time; None: the file's newest
    changeTime); rows changed after it are never deleted. ``window``: the dates a line may carry
    (None: ``DateWindow.default()``). ``archived``: the retention horizon, quarters (year, q) of
    ``order_items`` archived and dropped: their lines keep the order header but not its items, counted
    as ``beyond_retention``. ``workers``: processes that parse and map (None: by file size).
    ``defer_indexes``: on a first import into an empty table, build its secondary indexes after the
    load (None: for files over 16 MB).
    """

    schema: str = "public"
    full: bool = False
    as_of: datetime | None = None
    allow_mass_delete: bool = False
    mass_delete_share: float = 0.5
    keep_raw: bool = True
    reject_threshold: float = 0.01
    window: DateWindow | None = None
    archived: frozenset[tuple[int, int]] = frozenset()
    chunk_bytes: int = CHUNK_BYTES
    workers: int | None = None
    defer_indexes: bool | None = None

    @property
    def delete_limit(self) -> float | None:
        """The share of a table a full snapshot may delete (None: no limit)."""
        return None if self.allow_mass_delete else self.mass_delete_share


@dataclass
class ApplyResult:
    run_id: int
    entity: str
    lines: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    skipped_older: int = 0
    deleted: int = 0
    child_rows: int = 0
    beyond_retention: int = 0  # lines of archived quarters: header written, items not
    nul_stripped: int = 0  # lines stored with NUL (\u0000) removed from their typed text columns
    partitions_created: list[str] = field(default_factory=list)
    deletes_skipped_reason: str | None = None
    seconds: float = 0.0

    def counters(self) -> dict:
        return asdict(self)

    def add(self, counts: dict[str, int]) -> None:
        for k, v in counts.items():
            setattr(self, k, getattr(self, k) + v)


class ApplyError(Exception):
    """The apply was refused or failed; nothing was written to the shop tables."""


class TooManyRejectsError(ApplyError):
    def __init__(self, rejected: int, lines: int, threshold: float) -> None:
        self.rejected, self.lines, self.threshold = rejected, lines, threshold
        super().__init__(
            f"{rejected} of {lines} lines rejected (over the {threshold:.2%} threshold); the apply was rolled "
            "back and the rejects are in snapshot_rejects"
        )


class MassDeleteRefusedError(ApplyError):
    def __init__(self, table: str, would_delete: int, stored: int, share: float) -> None:
        self.table, self.would_delete, self.stored, self.share = table, would_delete, stored, share
        super().__init__(
            f"full snapshot of {table} would delete {would_delete} of the {stored} stored {table} "
            f"({would_delete / stored:.0%}, over the {share:.0%} limit): is it another shop's or another token's? "
            "Nothing was written. Re-run with --allow-mass-delete if that is intended."
        )
