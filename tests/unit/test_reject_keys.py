"""A rejected line's key is read as db.mapping reads keys: a float or boolean is an unknown key."""

from __future__ import annotations

import json

import pytest

from db.loader.rejects import Rejects
from db.mapping import ENTITIES, RowError, order_rows


@pytest.mark.parametrize("key", [1.5, True, False, 2.0, {"a": 1}, [1], None, ""])
def test_keys_the_mapping_refuses_are_unknown(key):
    line = f'{{"code": {json.dumps(key)}}}'.encode()
    assert Rejects(None, 1, ENTITIES["orders"])._key(line) is None
    with pytest.raises(RowError):
        order_rows({"code": key, "creationTime": "2026-09-14T10:21:07+0200"})


@pytest.mark.parametrize("key, read", [("2026000123", "2026000123"), (15, "15")])
def test_string_and_integer_keys_are_read(key, read):
    line = f'{{"code": {json.dumps(key)}}}'.encode()
    assert Rejects(None, 1, ENTITIES["orders"])._key(line) == read
    assert order_rows({"code": key, "creationTime": "2026-09-14T10:21:07+0200"}).key == read
