"""The record of ``hub serve``'s worker, so that a second ``hub serve`` after a ``kill -9`` of the first stops
the worker the first left behind instead of running a second one beside it.

The worker leads a session of its own (``start_new_session``), so it outlives a killed ``hub serve``.
``HUB_HOME/run/worker.json`` holds its pid, start time and command line and those of the ``hub serve``
that started it. A worker is an orphan, and is stopped, only when that ``hub serve`` is gone and the
recorded pid is still the very process recorded (start time and command line match): a reused pid is
never signalled, and nothing but a process the hub itself started is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

WORKER_FILE = "worker.json"
START_TIME_TOLERANCE = 1.0  # seconds; psutil's create_time is rounded


@dataclass(frozen=True)
class WorkerRecord:
    pid: int
    started: float  # psutil create_time
    cmdline: list[str]
    serve_pid: int
    serve_started: float


def worker_path(home: Path) -> Path:
    return home / "run" / WORKER_FILE


def _same_process(pid: int, started: float, cmdline: list[str] | None = None) -> psutil.Process | None:
    """The process ``pid`` if it is still the one that started at ``started`` (and runs ``cmdline``)."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started) > START_TIME_TOLERANCE:
            return None
        if cmdline is not None and proc.cmdline() != cmdline:
            return None
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None
    return proc


def record_worker(home: Path, worker: subprocess.Popen) -> None:
    """Write the record of ``worker``, started by this process (``hub serve``)."""
    me = psutil.Process()
    try:
        proc = psutil.Process(worker.pid)
        record = WorkerRecord(worker.pid, proc.create_time(), proc.cmdline(), me.pid, me.create_time())
    except psutil.Error:
        return  # already gone: nothing to record
    path = worker_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)


def read_worker(home: Path) -> WorkerRecord | None:
    try:
        return WorkerRecord(**json.loads(worker_path(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def forget_worker(home: Path, worker: subprocess.Popen) -> None:
    """Remove the record if it is ``worker``'s (a later ``hub serve`` may have written its own)."""
    record = read_worker(home)
    if record is not None and record.pid == worker.pid and record.serve_pid == os.getpid():
        worker_path(home).unlink(missing_ok=True)


def stop_orphan_worker(home: Path, timeout: float = 20) -> int | None:
    """Stop the worker a dead ``hub serve`` left running; returns its pid, or None when there is none.

    A worker whose ``hub serve`` still runs is left alone (it is not an orphan).
    """
    record = read_worker(home)
    if record is None:
        return None
    if _same_process(record.serve_pid, record.serve_started) is not None:
        return None
    proc = _same_process(record.pid, record.started, record.cmdline)
    if proc is None:
        worker_path(home).unlink(missing_ok=True)
        return None
    tree = [proc, *proc.children(recursive=True)]  # the worker and the flow runs it started
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    worker_path(home).unlink(missing_ok=True)
    return record.pid
