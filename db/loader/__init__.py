"""Apply a snapshot file (gzip or plain JSON Lines) to PostgreSQL in constant memory.

One way through, one module per stage, in one transaction on the shop tables:

1. ``read``      the file's decompressed bytes, cut into blocks of whole lines;
2. ``parse``     each block's lines parsed, mapped (``db/mapping.py``) and formatted as COPY rows — in
                 worker processes (``workers``) for big files; ``pipeline`` keeps the next chunk ready
                 in a reader thread while the previous one is written; a line that cannot be mapped
                 is a reject; a line a stored row holds byte for byte (same content hash, looked up
                 per block by ``known``) is not parsed, and counts as unchanged once the apply has
                 confirmed it in its transaction;
3. ``classify``  each line against the stored row of its key: new, changed, unchanged, or older
                 (skipped: never roll data back);
4. ``write``     new rows COPYed straight into the tables, changed rows staged and upserted (guarded
                 again by changeTime in SQL), missing ``order_items`` partitions created first in short
                 transactions of their own;
5. ``delete``    for a full snapshot, the rows it no longer holds — refused when that would be too many;
6. ``rejects``   every rejected line with its number and reason, on a connection of its own, so a
                 rolled-back apply keeps them.

``apply`` runs them in that order (``apply_snapshot_file``); ``options`` holds what it is asked to
do and what it returns. A value PostgreSQL refuses fails its batch's savepoint, and the batch is redone
line by line with exact validation, so the bad line becomes a reject naming its field. At the end: the
reject threshold (over it, everything rolls back), the deletes, the run's counters, commit. A first
import into an empty table builds its secondary indexes after the load (``db/indexes/deferred.py``).
"""

from db.loader.apply import apply_snapshot_file
from db.loader.options import (
    ApplyError,
    ApplyOptions,
    ApplyResult,
    MassDeleteRefusedError,
    TooManyRejectsError,
)

__all__ = [
    "ApplyError",
    "ApplyOptions",
    "ApplyResult",
    "MassDeleteRefusedError",
    "TooManyRejectsError",
    "apply_snapshot_file",
]
