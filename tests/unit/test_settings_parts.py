"""Pieces of the settings cache that need no database: payloads, CLI values, rules, cached copies."""

from __future__ import annotations

from typing import Annotated

import orjson
import pytest
from pydantic import Field

from db.settings.entries import SettingsStats, _Entry, _type_name
from db.settings.rules import RULES, adapter
from db.settings.store import Change, parse_payload
from deployments.cli_settings import parse_cli_value


@pytest.mark.parametrize(
    ("payload", "change"),
    [
        ('{"schema": "public", "key": "cancelled_statuses"}', Change("public", "cancelled_statuses")),
        ('{"schema": "shop_a", "key": null}', Change("shop_a", None)),
        ("", Change(None, None)),  # a bare `NOTIFY hub_settings` from psql: drop everything
        ("not json", Change(None, None)),
        ('{"key": "x"}', Change(None, None)),
    ],
)
def test_parse_payload(payload, change):
    assert parse_payload(payload) == change


def test_change_concerns_its_schema_only():
    assert Change("a", "k").concerns("a") and not Change("a", "k").concerns("b")
    assert Change(None, None).concerns("anything")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        ("-4", -4),
        ("0.5", 0.5),
        ("true", True),
        ("null", None),
        ("[-4, 7]", [-4, 7]),
        ('{"a": 1}', {"a": 1}),
        ('"42"', "42"),
        ("hello", "hello"),
        ("NaN", "NaN"),
        ("[1,", "[1,"),
    ],
)
def test_cli_value_is_json_or_else_a_string(text, value):
    assert parse_cli_value(text) == value


@pytest.mark.parametrize(
    ("raw", "mutate"),
    [
        (b"[1, 2]", lambda v: v.append(3)),
        (b'{"a": 1}', lambda v: v.update(b=2)),
        (b"[[1], 2]", lambda v: v[0].append(3)),
        (b'{"a": [1]}', lambda v: v["a"].append(2)),
    ],
)
def test_cached_containers_are_handed_out_as_copies(raw, mutate):
    entry = _Entry.from_json(raw)
    mutate(entry.get())
    assert entry.get() == orjson.loads(raw)


def test_scalars_are_shared_as_they_are_immutable():
    assert _Entry.from_json(b"0.01").copy is None


def test_known_rules_validate_their_own_defaults():
    for rule in RULES.values():
        assert adapter(rule.type_).validate_python(rule.default) == rule.default
    assert RULES["cancelled_statuses"].fresh_default() is not RULES["cancelled_statuses"].default


def test_type_names_in_messages():
    assert _type_name(int) == "int"
    assert _type_name(list[int]) == "list[int]"
    assert _type_name(Annotated[float, Field(ge=0)]) == "float"
    assert adapter(list[int]) is adapter(list[int])


def test_hit_rate():
    s = SettingsStats(
        hits=99,
        misses=1,
        loads=1,
        load_errors=0,
        invalidations=0,
        clears=0,
        notifications=0,
        connects=0,
        size=1,
        listening=False,
    )
    assert s.hit_rate == 0.99 and s.as_dict()["hit_rate"] == 0.99
