"""The soak's world: a living sandbox shop on a manual clock, and the hub pointed at it and at one database.

The hub's own "now" (``db.clock``) reads the same manual clock, so backups, their retention, the retry
gap, the partition plan and ``hub status`` all live on simulated time. Task retries do not wait for real
(the same switch as the ``no_retry_waits`` fixture): the sandbox's waits are on its clock.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from db import clock as hub_clock
from db.connection import libpq_url
from deployments.bootstrap import bootstrap
from flows import runtime
from flows.config import get_config
from shoptet.client import ShoptetClient
from shoptet.sandbox import ManualClock
from shoptet.sandbox.generator import ShopSpec
from shoptet.sandbox.life import LifeRates, ShopLife
from shoptet.sandbox.server import SandboxServer

START = datetime(2022, 1, 3, tzinfo=UTC)  # a Monday; fixed, so a seed reproduces the run on any date
CLIENT_TIMEOUT = 2.0  # real seconds; the timeout fault holds an answer past it


@dataclass(frozen=True)
class ShopSize:
    """The shop at the start (its history) and how busy its life is."""

    orders: int = 2000
    customers: int = 600
    products: int = 60
    history_years: float = 2.2  # so retention (2 years by default) is crossed early in a run
    scale: float = 0.005  # life rates x this (1 = the original's ~1 800 orders a day)


def _no_retry_waits() -> None:
    from prefect import Task

    import flows

    for info in pkgutil.iter_modules(flows.__path__, "flows."):
        for obj in vars(importlib.import_module(info.name)).values():
            if isinstance(obj, Task) and obj.retry_delay_seconds:
                obj.retry_delay_seconds = 0


class World:
    def __init__(self, db_url: str, workdir: Path, seed: int, size: ShopSize) -> None:
        self.db_url, self.workdir, self.seed, self.size = db_url, workdir, seed, size
        self.clock = ManualClock(START)
        spec = ShopSpec(
            orders=size.orders,
            customers=size.customers,
            products=size.products,
            seed=seed,
            reference=START,
            years=size.history_years,
        )
        self.sandbox = SandboxServer(clock=self.clock, job_seconds=20, spec=spec, results_dir=workdir / "results")
        self.life = ShopLife(self.sandbox.state.store, self.clock, seed=seed, scale=size.scale, rates=LifeRates())
        self._stack = ExitStack()

    @property
    def state(self):
        return self.sandbox.state

    def client(self) -> ShoptetClient:
        sb = self.sandbox
        return ShoptetClient(
            sb.base_url, sb.token, timeout=CLIENT_TIMEOUT, clock=self.clock.time, sleep=self.clock.sleep
        )

    def env(self) -> dict[str, str]:
        """What a separate hub process (the SIGKILL fault, the CLI) needs to see this world."""
        return {
            "HUB_DATABASE_URL": self.db_url,
            "HUB_SHOPTET_BASE_URL": self.sandbox.base_url,
            "HUB_SHOPTET_TOKEN": self.sandbox.token,
            "HUB_WEBHOOK_URL": "https://hub.example/hook",
            "HUB_BACKUP_DIR": str(self.workdir / "backups"),
            "HUB_ARCHIVE_DIR": str(self.workdir / "archive"),
            "HUB_DOWNLOAD_DIR": str(self.workdir / "downloads"),
        }

    def __enter__(self) -> World:
        (self.workdir / "results").mkdir(parents=True, exist_ok=True)
        self.sandbox.start()
        self.state.limits.enabled = False  # the bucket drains only as the manual clock moves
        self._stack.callback(self.sandbox.stop)
        saved = {k: os.environ.get(k) for k in self.env()}
        os.environ.update({k: v for k, v in self.env().items() if k != "HUB_SHOPTET_TOKEN"})
        self._stack.callback(_restore_env, saved)
        get_config.cache_clear()
        self._stack.callback(get_config.cache_clear)
        self._stack.enter_context(
            runtime.override(
                database_url=self.db_url, client_factory=self.client, webhook_url="https://hub.example/hook"
            )
        )
        self._stack.enter_context(hub_clock.simulated(self.clock.now))
        _no_retry_waits()
        bootstrap()  # what `hub serve` does first: migrations, the lock limits, the partition runway
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def move_to(self, when: datetime) -> None:
        """Let the shop live up to ``when``, then put the clock there (never backwards: polls advance it)."""
        self.life.live_until(when.timestamp())
        if when.timestamp() > self.clock.time():
            self.clock.set(when)

    def q(self, query: str, *args: object) -> list[tuple]:
        with psycopg.connect(libpq_url(self.db_url), autocommit=True) as c:
            return c.execute(query, args).fetchall()


def _restore_env(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


__all__ = ["START", "ShopSize", "World", "timedelta"]
