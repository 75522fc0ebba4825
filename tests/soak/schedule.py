"""When the deployments of ``prefect.yaml`` fire between two instants, read from the file itself.

A schedule change in ``prefect.yaml`` is simulated too. To keep a simulated year at minutes of wall time,
jobs that fire more than once a day (every 15 minutes, hourly) are coalesced: they fire only in the
"job hours" (``hour % every == every - 1``, so with ``every=12`` at 11:xx and 23:xx), once in each, at the
minute of their first cron fire of that hour. Daily, weekly and quarterly fires are all kept, at their own
minute. The order of the fires is the order of those times, as on the real server.

Stride mode (``last_only``) compresses further for long horizons on a slow machine: the shop lives every
hour, but the schedule runs once per span of N days, each deployment at its last fire time in the span.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cronsim import CronSim

PREFECT_YAML = Path(__file__).resolve().parents[2] / "prefect.yaml"
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Deployment:
    name: str
    entrypoint: str  # flows/snapshot.py:import_snapshot
    parameters: dict[str, Any]
    crons: tuple[str, ...]
    frequent: bool = field(default=False)  # fires more than once a day: coalesced

    def flow(self) -> Callable[..., Any]:
        path, func = self.entrypoint.split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        return getattr(module, func)


@dataclass(frozen=True, order=True)
class Fire:
    at: datetime
    name: str = field(compare=True)
    deployment: Deployment = field(compare=False)


def _fires(cron: str, start: datetime, end: datetime) -> list[datetime]:
    out = []
    for t in CronSim(cron, start - timedelta(seconds=1)):
        if t >= end:
            break
        if t >= start:
            out.append(t)
    return out


def load(path: Path = PREFECT_YAML, *, scheduled_only: bool = True) -> list[Deployment]:
    """The scheduled deployments (ad-hoc ones have no cron: the fault plan runs them, by name)."""
    doc = yaml.safe_load(path.read_text())
    probe = datetime.fromisoformat("2024-01-08T00:00:00+00:00")  # a Monday: weekly crons do not matter here
    out = []
    for d in doc["deployments"]:
        crons = tuple(s["cron"] for s in d.get("schedules") or [] if s.get("cron"))
        for s in d.get("schedules") or []:
            if s.get("timezone", "UTC") != "UTC":
                raise ValueError(f"{d['name']}: the soak simulates UTC schedules only")
        if not crons and scheduled_only:
            continue
        frequent = any(len(_fires(c, probe, probe + DAY)) > 1 for c in crons)
        out.append(Deployment(d["name"], d["entrypoint"], dict(d.get("parameters") or {}), crons, frequent))
    return out


def fires_between(
    deployments: list[Deployment], start: datetime, end: datetime, every: int = 12, *, last_only: bool = False
) -> list[Fire]:
    """The fires in [start, end), frequent jobs coalesced into the job hours, in time order.

    ``last_only``: each deployment fires once, at its last fire time in the span (the soak's stride mode:
    a span of several simulated days is one day of the schedule; its weekly and quarterly fires included).
    """
    out: list[Fire] = []
    for d in deployments:
        times = sorted({t for c in d.crons for t in _fires(c, start, end)})
        if d.frequent:
            first_in_hour: dict[datetime, datetime] = {}
            for t in times:
                if t.hour % every == every - 1:
                    first_in_hour.setdefault(t.replace(minute=0, second=0), t)
            times = sorted(first_in_hour.values())
        if last_only:
            times = times[-1:]
        out += [Fire(t, d.name, d) for t in times]
    return sorted(out)
