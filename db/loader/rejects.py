"""Rejected lines: kept with their line number and reason, on a connection of their own."""

from __future__ import annotations

import orjson
import psycopg

from db.mapping import EntitySpec
from db.runs import record_rejects

REJECT_LINE_CHARS = 2000


class Rejects:
    """Written on the side connection as they come, so a rolled-back apply keeps them.

    Also remembers the keys of rejected lines: a full snapshot must not delete a row only because its
    line was bad. A reject whose key cannot be read might be any row (``unknown_keys``).
    """

    def __init__(self, side: psycopg.Connection, run_id: int, spec: EntitySpec) -> None:
        self.side, self.run_id, self.spec = side, run_id, spec
        self.pending: list[tuple[int, str, str]] = []
        self.count = 0
        self.keys: set[str] = set()
        self.unknown_keys = 0

    def add(self, line_no: int, line: bytes | memoryview, reason: str) -> None:
        line = bytes(line)
        self.count += 1
        key = self._key(line)
        if key is None:
            self.unknown_keys += 1
        else:
            self.keys.add(key)
        text = line[: REJECT_LINE_CHARS * 4].decode("utf-8", "replace")[:REJECT_LINE_CHARS]
        # PostgreSQL text cannot hold NUL: keep the line readable instead of losing the reject.
        self.pending.append((line_no, reason[:1000].replace("\x00", "\\u0000"), text.replace("\x00", "\\u0000")))
        if len(self.pending) >= 1000:
            self.flush()

    def flush(self) -> None:
        record_rejects(self.side, self.run_id, self.pending)
        self.pending.clear()

    def _key(self, line: bytes) -> str | None:
        try:
            key = orjson.loads(line).get(self.spec.key)  # JSON field and column share the name
        except Exception:  # noqa: BLE001 - unreadable: the key is unknown
            return None
        # As db.mapping reads keys: a float or boolean is no key ("1.5", "True" would name no stored row).
        return None if key is None or key == "" or isinstance(key, (dict, list, bool, float)) else str(key)
