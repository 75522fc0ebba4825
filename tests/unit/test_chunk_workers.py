"""The parse worker pool: results in input order, and workers below the caller's CPU priority."""

from __future__ import annotations

import os

from db.chunk_workers import NICE, ChunkWorkers


def test_results_come_back_in_input_order() -> None:
    with ChunkWorkers(2) as pool:
        assert list(pool.map(abs, iter(range(0, -50, -1)))) == list(range(50))


def test_workers_yield_the_cpu_to_the_database_backend() -> None:
    with ChunkWorkers(1) as pool:
        (worker_nice,) = pool.map(os.nice, iter([0]))  # os.nice(0) reports the current niceness
    assert worker_nice == min(os.nice(0) + NICE, 19)
