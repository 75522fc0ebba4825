"""A second `hub serve` after a kill -9 of the first stops the worker the first left, and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from deployments import serve_worker as sw


@pytest.fixture
def worker():
    """A stand-in for the worker: a process in a session of its own, as start_worker makes it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True, stdin=subprocess.DEVNULL
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _dead_pid() -> int:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


def _serve_was(home, pid: int, started: float) -> None:
    """Rewrite the record as if another `hub serve` (pid, start time) had started the worker."""
    path = sw.worker_path(home)
    record = json.loads(path.read_text())
    record.update(serve_pid=pid, serve_started=started)
    path.write_text(json.dumps(record))


def test_the_worker_of_a_killed_hub_serve_is_stopped(tmp_path, worker):
    sw.record_worker(tmp_path, worker)
    _serve_was(tmp_path, _dead_pid(), 0.0)  # its hub serve was killed -9
    assert sw.stop_orphan_worker(tmp_path, timeout=5) == worker.pid
    assert worker.wait(10) is not None
    assert not sw.worker_path(tmp_path).exists()


def test_the_worker_of_a_running_hub_serve_is_left_alone(tmp_path, worker):
    sw.record_worker(tmp_path, worker)  # recorded by this process, which runs
    assert sw.stop_orphan_worker(tmp_path, timeout=5) is None
    assert worker.poll() is None


def test_a_reused_pid_is_never_signalled(tmp_path, worker):
    """The recorded worker is gone and its pid now belongs to another process (here: the stand-in,
    recorded with another start time): it is not the hub's, so nothing is signalled."""
    sw.record_worker(tmp_path, worker)
    _serve_was(tmp_path, _dead_pid(), 0.0)
    path = sw.worker_path(tmp_path)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "started": record["started"] - 3600}))
    assert sw.stop_orphan_worker(tmp_path, timeout=5) is None
    assert worker.poll() is None and psutil.pid_exists(worker.pid)


def test_the_record_is_forgotten_only_by_the_serve_that_wrote_it(tmp_path, worker):
    sw.record_worker(tmp_path, worker)
    _serve_was(tmp_path, _dead_pid(), 0.0)
    sw.forget_worker(tmp_path, worker)
    assert sw.worker_path(tmp_path).exists()  # another serve's record stays
    sw.record_worker(tmp_path, worker)
    sw.forget_worker(tmp_path, worker)
    assert not sw.worker_path(tmp_path).exists()
