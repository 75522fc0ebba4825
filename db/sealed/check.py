"""Is a sealed dump what was written, to its end? SHA-256 first, then a full read.

``pg_restore --list`` reads only the table of contents at the front: it passes on a 60 %-truncated
dump. Decompressing every block (``pg_restore -f /dev/null``) is the read that fails on it.
"""

from __future__ import annotations

import os
from pathlib import Path

from db import pg_tools


class Damaged(Exception):
    """The file's SHA-256 differs from the recorded one, or it does not read to its end."""


def check_checksum(path: Path, recorded: str) -> None:
    if not path.exists():
        raise Damaged(f"{path} does not exist (its manifest does)")
    actual = pg_tools.sha256_of(path)
    if actual != recorded:
        raise Damaged(f"{path.name} is damaged: sha256 {actual} differs from the recorded {recorded}")


def full_read(path: Path, major: int) -> None:
    """Read every block with the ``pg_restore`` of PostgreSQL ``major``, writing nothing anywhere."""
    pg_restore = pg_tools.find_tool("pg_restore", major)
    done = pg_tools.run([str(pg_restore), "-f", os.devnull, str(path)])
    if done.returncode != 0:
        raise Damaged(f"{path.name} does not read to its end: {done.stderr.strip()}")


def check(path: Path, recorded: str, major: int) -> None:
    """Checksum and full read; raises Damaged."""
    check_checksum(path, recorded)
    full_read(path, major)
