"""Run a locked flow N times and record when each run held the lock (used by test_locks_e2e)."""

from __future__ import annotations

import json
import sys
import time

from prefect import flow

from flows.locks import job_lock


def _write(out: str) -> None:
    entered = time.time()
    time.sleep(0.05)  # a write that takes a moment, so overlaps would show
    left = time.time()
    with open(out, "a") as f:
        f.write(json.dumps([entered, left]) + "\n")


@flow(name="lock-probe")
def lock_probe(url: str, out: str) -> None:
    with job_lock("orders", wait=None, url=url, schema="public"):
        _write(out)


if __name__ == "__main__":
    db_url, out, runs, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    time.sleep(max(0.0, start_at - time.time()))  # both processes start contending at the same moment
    for _ in range(runs):
        lock_probe(db_url, out)
