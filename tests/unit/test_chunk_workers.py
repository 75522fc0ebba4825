"""The parse worker pool: results in input order, and workers below the caller's CPU priority."""

from __future__ import annotations

import os

from db.loader.workers import NICE, ChunkWorkers


def test_results_come_back_in_input_order() -> None:
    with ChunkWorkers(2) as pool:
        assert list(pool.map(abs, iter(range(0, -50, -1)))) == list(range(50))


def test_workers_yield_the_cpu_to_the_database_backend() -> None:
    with ChunkWorkers(1) as pool:
        (worker_nice,) = pool.map(os.nice, iter([0]))  # os.nice(0) reports the current niceness
    assert worker_nice == min(os.nice(0) + NICE, 19)


def _environ(_: object) -> dict[str, str]:
    return dict(os.environ)


def test_workers_get_no_secrets(monkeypatch) -> None:
    monkeypatch.setenv("HUB_SHOPTET_TOKEN", "sentinel-token-1")
    monkeypatch.setenv("HUB_DATABASE_URL", "postgresql://u:sentinel-pw-2@db/x")
    monkeypatch.setenv("PGPASSWORD", "sentinel-pw-3")
    monkeypatch.setenv("PREFECT_API_KEY", "sentinel-key-4")
    monkeypatch.setenv("SOME_SERVICE_SECRET", "sentinel-5")
    with ChunkWorkers(1) as pool:
        (env,) = pool.map(_environ, iter([None]))
    assert "sentinel" not in repr(env)
    assert env["PATH"] == os.environ["PATH"]
