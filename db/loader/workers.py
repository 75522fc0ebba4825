"""Worker processes that run ``db.loader.parse.process_chunk``, fed and read in file order.

Plain subprocesses (``python -m db.loader.worker_process``) talking length-prefixed pickles over pipes, rather
than multiprocessing: its ``fork`` copies a process full of Prefect's threads (a lock held at fork time
stays held in the child), and its ``spawn`` re-runs the caller's ``__main__``, which breaks any script
that calls a flow without an ``if __name__ == "__main__"`` guard.
"""

from __future__ import annotations

import os
import pickle
import queue
import re
import struct
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Iterator
from typing import Any, BinaryIO

_HEADER = struct.Struct("!Q")


def _send(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


# Workers only parse JSON: they get no credentials (Shoptet token, database URL, Prefect API key).
_NOT_FOR_WORKERS = re.compile(r"^(HUB_|PREFECT_|PG)|TOKEN|SECRET|PASSW|KEY|CREDENTIAL|DATABASE_URL", re.I)


def worker_environment() -> dict[str, str]:
    """This process's environment without anything that could be a secret."""
    return {k: v for k, v in os.environ.items() if not _NOT_FOR_WORKERS.search(k)}


class WorkerError(RuntimeError):
    """A worker process failed; the message carries its traceback."""


class ChunkWorkers:
    """``n`` worker processes; ``map`` yields results in input order with at most 2 per worker in flight."""

    def __init__(self, n: int) -> None:
        env = {**worker_environment(), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "db.loader.worker_process"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            for _ in range(n)
        ]
        self.inboxes: list[queue.Queue] = [queue.Queue() for _ in range(n)]
        # One feeder thread per worker: writing the next input must never wait on us reading an output.
        self.feeders = [threading.Thread(target=self._feed, args=(i,), daemon=True) for i in range(n)]
        for t in self.feeders:
            t.start()

    def _feed(self, i: int) -> None:
        stdin = self.procs[i].stdin
        try:
            while (item := self.inboxes[i].get()) is not None:
                _send(stdin, item)
        except (BrokenPipeError, OSError):
            pass  # the worker died; reading its output reports why
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def map(self, function: Any, items: Iterator[Any]) -> Iterator[Any]:
        n = len(self.procs)
        pending: deque[int] = deque()
        for k, item in enumerate(items):
            self.inboxes[k % n].put((function, item))
            pending.append(k % n)
            if len(pending) >= n + 1:  # one queued behind each busy worker at most: bounded memory
                yield self._result(pending.popleft())
        while pending:
            yield self._result(pending.popleft())

    def _result(self, i: int) -> Any:
        try:
            ok, value = _receive(self.procs[i].stdout)
        except EOFError:
            raise WorkerError(f"chunk worker {i} exited with code {self.procs[i].wait()}") from None
        if not ok:
            raise WorkerError(value)
        return value

    def close(self) -> None:
        for box in self.inboxes:
            box.put(None)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
            if p.stdout:
                p.stdout.close()

    def __enter__(self) -> ChunkWorkers:
        return self

    def kill(self) -> None:
        """Stop every worker now (a reader blocked on one then gets EOF); ``close`` still reaps them."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.kill()
        self.close()


def serve() -> None:
    """A worker process's loop (``db/loader/worker_process.py``): run each function sent, send back its result."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            function, item = _receive(stdin)
        except EOFError:
            return
        try:
            _send(stdout, (True, function(item)))
        except Exception:  # noqa: BLE001 - reported to the parent, which raises it
            _send(stdout, (False, traceback.format_exc()))


# Workers yield the CPU to the PostgreSQL backend and the loader: on a small machine they share its cores,
# and the backend is the stage every row waits for (3-7 % faster applies at nice 10; docs/benchmarks.md).
NICE = 10
