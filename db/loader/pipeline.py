"""Stages 1–2 wired together: read → parse and map, in file order, in a thread or in worker processes.

What produces a chunk (mapping it, or receiving and unpickling a worker's result) is Python work, and
writing one is mostly waiting for PostgreSQL, which releases the GIL: a reader thread keeps the next
chunk ready while the previous one is written, so the server is not left idle.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from db.dates import DateWindow
from db.loader import read
from db.loader.parse import BlockArgs, Chunk, process_chunk
from db.loader.workers import ChunkWorkers

log = logging.getLogger(__name__)

BIG_FILE = 16 << 20  # bytes: worker processes (and deferred indexes) pay off from here
_DONE = object()


def default_workers(path: Path) -> int:
    """Worker processes for a file: none for small files (start-up costs more than it saves)."""
    cores = os.cpu_count() or 1
    if cores < 2 or os.path.getsize(path) < BIG_FILE:
        return 0
    return min(cores, 4)


@contextmanager
def mapped_chunks(
    path: Path,
    entity: str,
    *,
    keep_raw: bool,
    run_id: int,
    chunk_bytes: int,
    workers: int,
    window: DateWindow,
    archived: frozenset[tuple[int, int]] = frozenset(),
    known: Callable[[bytes], dict[str, str]] | None = None,
) -> Iterator[Iterator[Chunk]]:
    """The file's chunks, parsed and mapped, numbered, in file order.

    On the way out, error or not, the worker processes are killed (which wakes a reader waiting on
    one), the reader thread is joined and the file is closed: a failed apply leaves nothing running,
    so a task retry does not stack a second set of workers.
    """
    blocks = read.blocks(
        path,
        entity,
        keep_raw=keep_raw,
        run_id=run_id,
        chunk_bytes=chunk_bytes,
        window=window,
        archived=archived,
        known=known,
    )
    with ExitStack() as stack:
        pool = stack.enter_context(ChunkWorkers(workers)) if workers > 0 else None
        prefetched = _Prefetched(_in_processes(blocks, pool) if pool else _in_thread(blocks))
        stack.callback(prefetched.close)
        if pool:
            stack.callback(pool.kill)  # runs first (LIFO); after a complete read the workers are idle anyway
        yield _numbered(iter(prefetched))


def _in_thread(blocks: Iterator[BlockArgs]) -> Iterator[Chunk]:
    """Map chunks in this process (small files: no process start-up); ``_Prefetched`` runs it in its thread."""
    for args in blocks:
        chunk = process_chunk(args)
        chunk.block = args[1]
        yield chunk


def _in_processes(blocks: Iterator[BlockArgs], pool: ChunkWorkers) -> Iterator[Chunk]:
    """Map chunks in the pool's processes, in file order, with a bounded number in flight."""
    in_flight: deque[bytes] = deque()  # the blocks sent; a chunk comes back without its block

    def sent() -> Iterator[BlockArgs]:
        for args in blocks:
            in_flight.append(args[1])
            yield args

    for chunk in pool.map(process_chunk, sent()):
        chunk.block = in_flight.popleft()
        yield chunk


def _numbered(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    line_no = 1
    for chunk in chunks:
        chunk.first_line_no = line_no
        line_no += chunk.newlines
        yield chunk


class _Prefetched:
    """Runs ``items`` in a thread, at most ``depth`` ahead of the consumer (bounded memory).

    ``close`` stops the thread; the thread closes ``items`` on its way out, which closes the file.
    """

    def __init__(self, items: Iterator[Chunk], depth: int = 1) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(items,), name="snapshot-reader", daemon=True)
        self.thread.start()

    def _offer(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, items: Iterator[Chunk]) -> None:
        try:
            for item in items:
                if not self._offer(item):
                    return
            self._offer(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._offer(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        if self.thread.is_alive():  # not seen: the reader only waits on a worker, which is killed first
            log.warning("snapshot reader thread did not stop within 30 s")
