"""Stage 1, read: the snapshot file's decompressed bytes, cut into blocks of whole lines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from isal import igzip_threaded

from db.dates import DateWindow
from db.loader.parse import BlockArgs

GZIP_MAGIC = b"\x1f\x8b"
GZIP_BLOCK = 256 << 10


def is_gzip(path: Path) -> bool:
    """gzip or plain JSON Lines, by the magic bytes, not the name."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


class SnapshotFile:
    """The file's decompressed bytes, read in blocks.

    gzip is inflated by ISA-L in a background thread (it releases the GIL): about twice as fast as
    the standard library's zlib, and off the thread that feeds PostgreSQL.
    """

    def __init__(self, path: Path) -> None:
        gz = is_gzip(path)
        self.file = open(path, "rb")  # noqa: SIM115 - closed in close()
        # 256 KB of gzip per block (ISA-L's default is 1 MB, ~7 MB inflated, two queued): 9 MB less peak
        # RSS, same CPU (docs/benchmarks.md).
        self.stream: BinaryIO = (
            igzip_threaded.open(self.file, "rb", threads=1, block_size=GZIP_BLOCK) if gz else self.file
        )

    def read(self, n: int) -> bytes:
        return self.stream.read(n)

    def position(self) -> int:
        """Compressed bytes read so far (for progress)."""
        try:
            return self.file.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        if self.stream is not self.file:
            self.stream.close()
        self.file.close()

    def __enter__(self) -> SnapshotFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def blocks(
    path: Path,
    entity: str,
    *,
    keep_raw: bool,
    run_id: int,
    chunk_bytes: int,
    window: DateWindow,
    archived: frozenset[tuple[int, int]] = frozenset(),
    known: Callable[[bytes], dict[str, str]] | None = None,
) -> Iterator[BlockArgs]:
    """Blocks of whole lines of about ``chunk_bytes``, each with what ``parse.process_chunk`` needs.

    Blocks, not lists of lines: the reader only looks for the last newline, and one bytes object per
    block is all that is pickled to a worker. Workers split, count and strip the lines; the line
    numbers are made absolute when the chunks come back, in order (``pipeline.numbered``).

    With ``known`` (``db/loader/known.py``), each block carries the {content hash: key} of its lines
    the table already holds, which the worker skips instead of parsing them.
    """
    rest = b""
    with SnapshotFile(path) as f:
        while True:
            data = f.read(chunk_bytes)
            if not data:
                break
            cut = data.rfind(b"\n")
            if cut < 0:  # no line end in this read yet: keep reading
                rest += data
                continue
            block = rest + memoryview(data)[: cut + 1]  # one copy of the block, not two
            rest = data[cut + 1 :]
            yield (entity, block, keep_raw, run_id, f.position(), window, archived, known(block) if known else None)
        if rest:
            yield (entity, rest, keep_raw, run_id, f.position(), window, archived, known(rest) if known else None)
