"""One vocabulary for what a load did to each row, in every output: the CLI, the demo, the UI's artifacts.

The keys of the counters dicts (and of ``hub status --json``) stay as they are; only what a person reads
is named here: ``skipped_older`` (a change older than the row already stored) reads ``skipped``.
"""

from __future__ import annotations

COUNTERS = ("inserted", "updated", "unchanged", "deleted", "rejected", "skipped")
KEYS = ("inserted", "updated", "unchanged", "deleted", "rejected", "skipped_older")
_LABELS = {"skipped_older": "skipped"}


def label(key: str) -> str:
    return _LABELS.get(key, key)
