"""What a customer metrics run reports: counters and segment movement, counts only (no personal data)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass
class MetricsResult:
    mode: str  # full | incremental
    reason: str  # why this mode
    as_of: datetime
    watermark: datetime
    cancelled_statuses: list[int]
    customers: int = 0  # rows in customer_metrics after the run
    recomputed: int = 0  # identities whose aggregates were recomputed
    inserted: int = 0
    updated: int = 0
    removed: int = 0
    rescored: int = 0  # rows the re-score rewrote
    unattributed_orders: int = 0
    unattributed_revenue: Decimal = Decimal(0)
    # (previous segment, segment, customers): previous None = new customer, segment None = removed.
    moves: list[tuple[str | None, str | None, int]] = field(default_factory=list)
    vacuumed: bool = False
    seconds: float = 0.0

    @property
    def moved(self) -> int:
        return sum(n for p, c, n in self.moves if p is not None and c is not None and p != c)

    def segment_rows(self, order: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Per segment: customers now and at the last run, moved in/out, new, removed (counts only)."""
        names = {s for p, c, _ in self.moves for s in (p, c) if s is not None}
        ordered = [s for s in order if s in names] + sorted(names - set(order))
        rows = []
        for s in ordered:
            rows.append(
                {
                    "segment": s,
                    "customers": sum(n for _, c, n in self.moves if c == s),
                    "previous": sum(n for p, _, n in self.moves if p == s),
                    "moved_in": sum(n for p, c, n in self.moves if c == s and p is not None and p != s),
                    "moved_out": sum(n for p, c, n in self.moves if p == s and c is not None and c != s),
                    "new": sum(n for p, c, n in self.moves if c == s and p is None),
                    "removed": sum(n for p, c, n in self.moves if p == s and c is None),
                }
            )
        return rows

    def movement_rows(self) -> list[dict[str, Any]]:
        """Customers per (from, to) pair that changed, largest first; "(new)"/"(removed)" for the ends."""
        rows = [{"from": p or "(new)", "to": c or "(removed)", "customers": n} for p, c, n in self.moves if p != c]
        return sorted(rows, key=lambda r: (-r["customers"], r["from"], r["to"]))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            as_of=self.as_of.isoformat(),
            watermark=self.watermark.isoformat(),
            unattributed_revenue=str(self.unattributed_revenue),
            moved=self.moved,
        )
        return d
