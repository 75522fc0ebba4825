"""Read an ``order_items`` quarter archive back without the hub: its checksum, then its rows, through
``pg_restore -f -`` (the archive as a plain SQL script, whose ``COPY … FROM stdin`` block holds the data).

So the checker sees what ``restore-archive`` would bring back, not what the hub recorded about it.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from db.pg_tools import find_tool

COPY = re.compile(r"^COPY \S+ \(([^)]*)\) FROM stdin;$")


def _value(text: str) -> str | None:
    return None if text == r"\N" else text.replace(r"\t", "\t").replace(r"\n", "\n").replace("\\\\", "\\")


def archive_items(path: str, sha256: str, major: int) -> tuple[dict[tuple[str, int], tuple], str | None]:
    """{(order_code, item_id): (code, amount, status_id, created_at)} of the archive, or a problem."""
    p = Path(path)
    if not p.is_file():
        return {}, f"the archive file {p.name} is missing"
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != sha256:
        return {}, f"the archive file {p.name} does not match its recorded sha256"
    done = subprocess.run(
        [str(find_tool("pg_restore", major)), "-f", "-", str(p)], capture_output=True, text=True, timeout=120
    )
    if done.returncode:
        return {}, f"pg_restore cannot read {p.name}: {done.stderr.strip()[:200]}"
    out: dict[tuple[str, int], tuple] = {}
    cols: list[str] | None = None
    for line in done.stdout.splitlines():
        if cols is None:
            m = COPY.match(line)
            cols = [c.strip().strip('"') for c in m.group(1).split(",")] if m else None
            continue
        if line == r"\.":
            cols = None
            continue
        row = dict(zip(cols, map(_value, line.split("\t")), strict=True))
        out[(row["order_code"], int(row["item_id"]))] = (
            row["code"],
            None if row["amount"] is None else Decimal(row["amount"]),
            None if row["status_id"] is None else int(row["status_id"]),
            datetime.fromisoformat(row["created_at"]),
        )
    return out, None
