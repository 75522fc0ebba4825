"""Private names of our dependencies that the hub relies on: fail loudly when an upgrade removes one.

Each is pinned to the tested minor version in pyproject.toml; before raising the pin, run this test and
the benchmark named below against the new version.
"""

from __future__ import annotations

import importlib

import pytest

PRIVATE = [
    # (module, name, who uses it and what breaks)
    (
        "psycopg._copy_base",
        "format_row_text",
        "db/loader/parse.py formats COPY rows with it in worker processes (benchmarks/snapshot_apply.py)",
    ),
]


@pytest.mark.parametrize(("module", "name", "used_by"), PRIVATE)
def test_private_api_is_still_there(module, name, used_by):
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{module}.{name} is gone ({exc}); {used_by}. Pin the dependency back or port the code.")
    assert callable(obj), f"{module}.{name} is no longer callable; {used_by}"


def test_format_row_text_still_writes_copy_text():
    """Same bytes as psycopg's public ``Copy.write_row`` path (a silent change would corrupt every row)."""
    from psycopg._copy_base import format_row_text
    from psycopg.adapt import Transformer

    out = bytearray()
    format_row_text(("a\tb", None, 12, "č\\"), Transformer(), out)
    assert bytes(out) == "a\\tb\t\\N\t12\tč\\\\\n".encode()
