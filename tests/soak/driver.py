"""The soak run: the hub's scheduled flows on the simulated clock, faults in between, checked every day.

A simulated day runs from 06:00 UTC to 06:00 UTC: the shop lives 06:00–22:00, the frequent jobs fire in
the job hours (``schedule.fires_between``), the nightly jobs from 01:00, and at 06:00 (nothing runs and
nothing changes then) the checker compares the mirror with the shop. The first broken invariant stops
the run with the seed, the day and the step; the databases and files are kept.
"""

from __future__ import annotations

import inspect
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.context import SyncClientContext
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from tests.soak import checker, hazards, schedule
from tests.soak.faults import FaultPlan
from tests.soak.world import START, ShopSize, World

DAY = timedelta(days=1)
DAY_STARTS = timedelta(hours=6)
LOCK_WAIT_CAP = 30.0  # real seconds: prefect.yaml's lock_wait is for real schedules; here nothing else runs


class Divergence(AssertionError):
    """The first broken invariant, with where to find it."""


@dataclass
class Report:
    seed: int
    days: int = 0
    flow_runs: Counter = field(default_factory=Counter)
    flow_failures: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    recoveries: dict[str, Counter] = field(default_factory=dict)
    rows_compared: int = 0
    checks: int = 0
    excused: Counter = field(default_factory=Counter)
    divergences: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    life: dict[str, int] = field(default_factory=dict)
    status_levels: Counter = field(default_factory=Counter)
    flow_seconds: Counter = field(default_factory=Counter)
    check_seconds: float = 0.0
    runs_left_running: int = 0
    failed_snapshot_states: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"seed {self.seed}: {self.days} simulated days in {self.wall_seconds:.0f} s wall",
            f"flow runs {sum(self.flow_runs.values())} ({sum(self.flow_failures.values())} failed as injected): "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.flow_runs.items())),
            "faults: " + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
            "recovered by: "
            + "; ".join(
                f"{k}: " + ", ".join(f"{r} {n}" for r, n in c.items()) for k, c in sorted(self.recoveries.items())
            ),
            f"runs left 'running' by a killed process: {self.runs_left_running}; failed_snapshots at the end: "
            f"{self.failed_snapshot_states}; hub status levels at the checks: {dict(self.status_levels)}",
            f"rows compared {self.rows_compared} in {self.checks} daily checks; divergences {len(self.divergences)}",
            "wall per flow (s): "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(self.flow_seconds.items()))
            + f"; checks {self.check_seconds:.1f}",
            "shop life: " + ", ".join(f"{k} {v}" for k, v in sorted(self.life.items())),
        ]
        if self.excused:
            out.append(
                "excused or deferred checks (reason: count): " + ", ".join(f"{k} {v}" for k, v in self.excused.items())
            )
        return out


class Soak:
    def __init__(
        self,
        world: World,
        seed: int,
        every: int = 12,
        fault_rate: float = 0.5,
        stride: int = 1,
        per_day: int = 3,
        only: str | None = None,
    ) -> None:
        self.world = world
        self.seed = seed
        self.every = every
        self.stride = stride
        self.deployments = schedule.load()
        self.all_deployments = schedule.load(scheduled_only=False)
        self.note: str | None = None
        self.backup_sums: dict[str, tuple] = {}  # backup file -> the mirror at it (checksums, row hashes, erasure id)
        self.restore_problems: list[str] = []
        self.step = "start"
        self.progress = False
        self.rng = random.Random(f"{seed}/soak")
        self.report = Report(seed)
        self.faults = FaultPlan(world, self, random.Random(f"{seed}/faults"), fault_rate, per_day, only)
        self.check = checker.Checker(world, self.report)

    # ------------------------------------------------------------ running one flow as its deployment would

    def params(self, d: schedule.Deployment) -> dict[str, Any]:
        p = dict(d.parameters)
        sig = inspect.signature(d.flow().fn)
        now = self.world.clock.now()
        if "now" in sig.parameters:
            p["now"] = now
        if "as_of" in sig.parameters:
            p["as_of"] = now
        if p.get("lock_wait") is not None:
            p["lock_wait"] = min(p["lock_wait"], LOCK_WAIT_CAP)
        return p

    def run(self, d: schedule.Deployment, **override: Any) -> Any:
        self.report.flow_runs[d.name] += 1
        t0 = time.monotonic()
        try:
            return d.flow()(**{**self.params(d), **override})
        except Exception as exc:  # noqa: BLE001 - a failed run is the schedule's business; the checker judges
            self.report.flow_failures[d.name] += 1
            return exc
        finally:
            self.report.flow_seconds[d.name] += time.monotonic() - t0

    def deployment_any(self, name: str) -> schedule.Deployment:
        return next(d for d in self.all_deployments if d.name == name)

    # ------------------------------------------------------------ the run

    def day(self, n: int) -> None:
        """One span of ``stride`` simulated days (one schedule day per span), then the check."""
        start = START + DAY_STARTS + n * self.stride * DAY
        end = start + self.stride * DAY
        fires = schedule.fires_between(self.deployments, start, end, self.every, last_only=self.stride > 1)
        plan = self.faults.plan_day(n, start, fires)
        planned = list(plan.kinds)
        for step, fire in enumerate(fires):
            self.step = f"{fire.at:%Y-%m-%d %H:%M} {fire.name}"
            self.world.move_to(fire.at)
            plan.before(fire, step)
            outcome = plan.run(fire) if plan.owns(fire) else self.run(fire.deployment)
            plan.after(fire, outcome)
            hazards.after_fire(self, fire, outcome)
        self.step = f"{end:%Y-%m-%d %H:%M} check"
        self.world.move_to(end)
        plan.end_of_day()
        if n == 0:
            self.check.skip_metrics_reason = "the first metrics run is on day 1"
        t0 = time.monotonic()
        problems = self.restore_problems + self.check.day(n)
        self.report.check_seconds += time.monotonic() - t0
        self.restore_problems = []
        if problems:
            raise Divergence(
                f"seed {self.seed}, simulated day {n * self.stride} ({start:%Y-%m-%d}), step {self.step}, "
                f"faults that day: {[k.name for k in planned] or 'none'}: " + "; ".join(problems[:10])
            )

    def first_import(self) -> None:
        """What an operator does first (`hub sync ENTITY`, README): one full snapshot each, before the schedules."""
        self.step = "first import"
        for name in ("customers-full-snapshot", "products-full-snapshot", "orders-full-snapshot"):
            out = self.run(self.deployment_any(name))
            if isinstance(out, Exception):
                raise Divergence(f"seed {self.seed}: the first import failed at {name}: {out!r}")

    def run_days(self, days: int) -> Report:
        t0 = time.monotonic()
        try:
            self.first_import()
            for n in range(-(-days // self.stride)):
                self.day(n)
                self.report.days = (n + 1) * self.stride
                if self.progress:
                    r = self.report
                    print(
                        f"day {r.days}: {time.monotonic() - t0:.0f} s, {sum(r.flow_runs.values())} flow runs, "
                        f"{sum(r.faults.values())} faults, {r.rows_compared} rows compared, 0 divergences",
                        flush=True,
                    )
        except Divergence as exc:
            self.report.divergences.append(str(exc))
            raise
        finally:
            self.report.wall_seconds = time.monotonic() - t0
            self.report.life = dict(self.world.life.stats.counts)
        return self.report


def soak(
    db_url: str,
    workdir: Path,
    *,
    days: int,
    seed: int,
    size: ShopSize,
    every: int = 12,
    fault_rate: float = 0.5,
    stride: int = 1,
    per_day: int = 3,
    only: str | None = None,
    progress: bool = False,
) -> Report:
    # No flow-run heartbeats: Prefect's heartbeat thread sleeps in 1 s steps and each run's end joins it,
    # ~0.8 s of a trivial run's ~1.2 s (17 runs a simulated day). A soak run lasts seconds, far below the
    # 30 s minimum interval, so all it loses is the one heartbeat event per run, which nothing here reads
    # (the hub has no heartbeat check; the killed-process fault leaves its runs 'running' on its own).
    # One Prefect API client for the whole soak: without a client context each flow run builds its own
    # (a new SSL context, the CA bundle read again: ~16 % of a simulated day).
    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        SyncClientContext.get_or_create(),
        World(db_url, workdir, seed, size) as world,
    ):
        s = Soak(world, seed, every, fault_rate, stride, per_day, only)
        s.progress = progress
        return s.run_days(days)


# Server services the soak's flows never meet: the events table and automations (nothing in the hub reads
# events), the scheduler and late-run marking (the soak calls the flows; no scheduled runs exist), workers'
# and cancellations' upkeep, paused-run expiry. They wrote to the server's SQLite beside every API call;
# off, a simulated day took 63-67 s instead of 76 s per 10 days (10-day runs side by side, seed 77).
# Kept: the task-run recorder (task runs as the UI shows them) and the repossessor (expired lock leases).
QUIET_SERVER = {
    f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false"
    for name in (
        "EVENT_PERSISTER",
        "TRIGGERS",
        "SCHEDULER",
        "LATE_RUNS",
        "FOREMAN",
        "CANCELLATION_CLEANUP",
        "PAUSE_EXPIRATIONS",
    )
}


@contextmanager
def soak_server(startup_timeout: int) -> Iterator[None]:
    """The soak's own temporary Prefect server (``prefect_test_harness``), started with QUIET_SERVER: the
    server process inherits this process's environment."""
    from prefect.testing.utilities import prefect_test_harness

    saved = {k: os.environ.get(k) for k in QUIET_SERVER}
    os.environ.update(QUIET_SERVER)
    try:
        with prefect_test_harness(server_startup_timeout=startup_timeout):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


__all__ = ["Divergence", "Report", "Soak", "datetime", "soak", "soak_server"]
