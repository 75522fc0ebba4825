"""Faults at random moments: which kind on which day, aimed at which scheduled fire, and what recovered it.

Kinds come round in a seeded shuffled cycle (each kind at least once per cycle) on the days the seeded
coin says so. A fault is aimed at one fire of the day (a full snapshot, a fetch) or at the night before
it; the fire then runs as scheduled. Recovery is only what the hub documents: task retries, the hourly
retry flow, the next scheduled run, `hub locks release` after a SIGKILL (docs/reliability.md).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shoptet.sandbox.state import Faults, PathFault
from tests.soak import hazards
from tests.soak.schedule import Fire
from tests.soak.world import CLIENT_TIMEOUT, World

if TYPE_CHECKING:
    from tests.soak.driver import Soak


_DEFAULT = Faults()


@dataclass(frozen=True)
class Kind:
    name: str
    target: str  # the deployment whose fire it hits
    arm: Callable[[World], Any] | None = None  # sandbox knobs set before the fire
    disarm: Callable[[World], None] | None = None
    run: Callable[[Soak, Fire], Any] | None = None  # replaces the fire's run (SIGKILL, two at once, …)


def _knob(**values: Any) -> tuple[Callable[[World], None], Callable[[World], None]]:
    """Set sandbox fault knobs for one fire, and put them back to their defaults after it."""

    def arm(w: World) -> None:
        for k, v in values.items():
            setattr(w.state.faults, k, v)

    def disarm(w: World) -> None:
        for k in values:
            setattr(w.state.faults, k, getattr(_DEFAULT, k))

    return arm, disarm


def _timeout(w: World) -> None:
    w.state.faults.path_faults.append(PathFault("/api/products/snapshot", status=0, delay=CLIENT_TIMEOUT + 0.5))


def _clear_paths(w: World) -> None:
    w.state.faults.path_faults.clear()


KINDS = [
    Kind("5xx storm", "fetch-new-orders", *_knob(fail_next_n=4)),
    Kind("429 storm", "customers-full-snapshot", *_knob(storm_429=6)),
    Kind("timeout", "products-full-snapshot", _timeout, _clear_paths),
    Kind("job failed", "orders-full-snapshot", *_knob(job_outcome="failed")),
    Kind("job never finishes", "customers-full-snapshot", *_knob(job_outcome="never")),
    Kind("result expired", "products-full-snapshot", *_knob(expire_results=True)),
    Kind("truncated gzip", "orders-full-snapshot", *_knob(truncate_gzip=True)),
    Kind("malformed line", "customers-full-snapshot", *_knob(malformed_line_at=3)),
    Kind("apply backend terminated", "orders-full-snapshot", run=hazards.terminate_apply),
    Kind("SIGKILL mid-apply", "orders-full-snapshot", run=hazards.sigkill_apply),
    Kind("PostgreSQL restart", "customer-changes", run=hazards.pg_restart),
    Kind("two runs of a locked job", "product-changes", run=hazards.two_at_once),
    Kind("erasure (shop still holds them)", "customers-full-snapshot", run=hazards.erase_held),
    Kind("erasure (shop erased them too)", "fetch-new-orders", run=hazards.erase_gone),
    Kind("backup restored and compared", "prune-backups", run=hazards.restore_compare),
]


def _clash(a: Kind, b: Kind) -> bool:
    """An erasure of someone the shop holds is undone by the night's full snapshots: not on a night they fail.
    (The other erasure runs before the evening fetches, which bring the shop's anonymised rows.)"""
    held = "erasure (shop still holds them)"
    full = {"customers-full-snapshot", "orders-full-snapshot"}
    return (a.name == held and b.target in full) or (b.name == held and a.target in full)


@dataclass
class DayPlan:
    soak: Soak
    kinds: list[Kind] = field(default_factory=list)
    armed: list[Kind] = field(default_factory=list)

    def _for(self, fire: Fire) -> list[Kind]:
        return [k for k in self.kinds if k.target == fire.name]

    def before(self, fire: Fire, step: int) -> None:
        for k in self._for(fire):
            if k.arm:
                k.arm(self.soak.world)
                self.armed.append(k)

    def owns(self, fire: Fire) -> bool:
        return any(k.run for k in self._for(fire))

    def run(self, fire: Fire) -> Any:
        out = None
        for k in self._for(fire):
            if k.run:
                out = k.run(self.soak, fire)
        return out

    def after(self, fire: Fire, outcome: Any) -> None:
        for k in self._for(fire):
            self.soak.report.faults[k.name] += 1
            how = hazards.recovery(self.soak, k.name, fire, outcome)
            self.soak.report.recoveries.setdefault(k.name, {}).setdefault(how, 0)
            self.soak.report.recoveries[k.name][how] += 1
            if k.disarm:
                k.disarm(self.soak.world)
        self.kinds = [k for k in self.kinds if k.target != fire.name]

    def end_of_day(self) -> None:
        hazards.settle(self.soak)


class FaultPlan:
    def __init__(
        self, world: World, soak: Soak, rng: random.Random, rate: float, per_day: int = 3, only: str | None = None
    ) -> None:
        self.world, self.soak, self.rng, self.rate, self.per_day = world, soak, rng, rate, per_day
        self.kinds = [k for k in KINDS if not only or any(o.strip() in k.name for o in only.split(","))]
        self.cycle: list[Kind] = []

    def plan_day(self, n: int, start: datetime, fires: list[Fire]) -> DayPlan:
        plan = DayPlan(self.soak)  # the first import (before day 0) built the mirror: faults from day 0 on
        names = {f.name for f in fires}
        if not self.cycle:
            self.cycle = list(self.kinds)
            self.rng.shuffle(self.cycle)
        for k in list(self.cycle):  # at most one kind per target fire; the others wait in the cycle
            if len(plan.kinds) >= self.per_day or self.rng.random() >= self.rate:
                break
            if k.target in names and all(p.target != k.target and not _clash(p, k) for p in plan.kinds):
                plan.kinds.append(k)
                self.cycle.remove(k)
        return plan


__all__ = ["KINDS", "DayPlan", "FaultPlan", "Kind", "timedelta"]
