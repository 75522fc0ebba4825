"""Property-based fuzzing of the line parser and row mapper (issue 8 §3.12).

The property: whatever a snapshot line holds, ``process_chunk`` maps it or rejects it with a reason,
and never raises; a line it accepts can be re-mapped exactly (``exact_line``: the loader's
line-by-line fallback) or rejected with a ``RowError``, and its quarter can be turned into a
partition. Anything else would stop the whole apply on one line, and the retry flow would give up.

Lines come from two sources: arbitrary bytes and JSON values, and near-valid lines — real lines from
the sandbox generator with one or more fields mutated (wrong types, huge numbers, impossible dates,
empty keys, unicode, NUL bytes) or the JSON text cut or spliced. Many lines per example keep the
generation cost down: well over 10 000 lines per CI run.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.connection import libpq_url
from db.loader import ApplyOptions, apply_snapshot_file
from db.loader.parse import Line, exact_line, process_chunk
from db.mapping import RowError
from db.partitions.rollover import Quarter
from db.runs import start_run
from shoptet.sandbox.generator import iter_customers, iter_orders, iter_products

try:  # the accepted-dates window (issue 8 §1.2) travels with each chunk once it exists
    from db.dates import DateWindow

    WINDOW: tuple = (DateWindow.default(),)
except ImportError:
    WINDOW = ()

ENTITY_NAMES = ("orders", "customers", "products")
LINES_PER_EXAMPLE = 60
FUZZ = settings(
    max_examples=150,  # x 10-60 lines x 6 tests: >10 000 lines
    deadline=None,
    database=None,  # no .hypothesis folder in the working tree; a failure prints its reproduce blob
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
GENERATED = {"lines": 0}


@cache
def base_entities() -> dict[str, list[dict]]:
    """A few real lines per entity, as the sandbox serves them (with notes and items)."""
    return {
        "orders": list(iter_orders(12, seed=3, include=("notes", "shippingDetails"))),
        "customers": list(iter_customers(12, seed=3)),
        "products": list(iter_products(8, seed=3, include=("images",))),
    }


# --- values --------------------------------------------------------------------------------------------

IMPOSSIBLE_DATES = [
    "0001-01-01T00:30+0100",  # before datetime.min once in UTC
    "0001-01-01T00:00:00+0000",
    "9999-12-31T23:59:59+0000",  # Q4 9999: the next quarter does not exist
    "9999-12-31T23:30-0100",  # after datetime.max once in UTC
    "9999-10-01T00:00:00+0200",
    "1899-12-31T23:59:59+0100",
    "2026-02-30T10:00:00+0100",
    "2026-13-01T10:00:00+0100",
    "2026-09-14T25:00:00+0200",
    "2026-09-14T10:21:07+2400",
    "2026-09-14T10:21:07",  # no offset
    "2026-09-14",
    "2026-09-14T10:21:07.123456789+0200",
    "2026-09-14T10:21:07Z",
    "+2026-09-14T10:21:07+0200",
    "",
    " ",
    "\x00",
    "2026-09-14T10:21:07+02:00\x00",
]


def _offset(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


dates = st.one_of(
    st.sampled_from(IMPOSSIBLE_DATES),
    st.builds(
        lambda d, off, colon: (
            d.isoformat(timespec="seconds") + (_offset(off)[:3] + ":" + _offset(off)[3:] if colon else _offset(off))
        ),
        st.datetimes(),  # year 1 to 9999
        st.integers(-23 * 60 - 59, 23 * 60 + 59),
        st.booleans(),
    ),
)

NUMBERS = [
    0,
    -1,
    2**31,
    -(2**31) - 1,
    2**63,
    10**30,
    -(10**30),
    10**400,
    1e308,
    -1e308,
    1e-320,
    0.1,
    "1e400",
    "NaN",
    "Infinity",
    "-0",
    "1,5",
    "12.345.678",
    "0x10",
    "١٢٣",
    "9" * 200,
    "1.",
    ".5",
    " 1 ",
]
STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\\",
    "\t\n",
    "\u2028",
    "é" * 3,
    "😀",
    "\ufeff",
    "'; DROP TABLE orders; --",
    "x" * 5000,
    "\\N",
    "null",
    "true",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(NUMBERS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(STRINGS),
    dates,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


# --- near-valid lines: a real line with mutations -------------------------------------------------------


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in the entity (dict keys and list indexes)."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


def _parent(obj: Any, path: tuple) -> Any:
    for p in path[:-1]:
        obj = obj[p]
    return obj


DATE_KEYS = ("creationTime", "changeTime")
KEY_FIELDS = ("code", "guid")


@st.composite
def mutated_entity(draw: st.DrawFn, entity: str) -> bytes:
    base = base_entities()[entity]
    obj = copy.deepcopy(base[draw(st.integers(0, len(base) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(("date", "key", "value", "delete", "empty-key", "value", "value")))
        if how == "date":
            target = obj
            if entity == "products" and obj.get("variants") and draw(st.booleans()):
                target = obj
            target[draw(st.sampled_from(DATE_KEYS))] = draw(dates)
            continue
        if how == "key":
            obj[draw(st.sampled_from(KEY_FIELDS))] = draw(st.one_of(scalars, st.sampled_from([[], {}, [1], {"a": 1}])))
            continue
        paths = _paths(obj)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(obj, path)
        if how == "delete":
            del parent[path[-1]]
        elif how == "empty-key" and isinstance(parent, dict):
            parent[""] = parent.pop(path[-1])
        else:
            parent[path[-1]] = draw(json_values)
    try:
        text = orjson.dumps(obj, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
    except (orjson.JSONEncodeError, TypeError):  # an int over 64 bits: write the JSON by hand
        text = _dumps_big(obj)
    text_how = draw(st.sampled_from(("as is",) * 6 + ("cut", "nul", "splice", "dup-key", "escape")))
    if text_how == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif text_how == "nul":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from([b"\x00", b"\\u0000", b"\xff", b"\xc3", b"\r"])) + text[i:]
    elif text_how == "splice":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.binary(max_size=12).filter(lambda b: b"\n" not in b)) + text[i:]
    elif text_how == "dup-key":
        text = (
            text[:-1]
            + b',"'
            + draw(st.sampled_from([b"code", b"guid", b"creationTime", b"items"]))
            + b'":'
            + (_dumps_big(draw(json_values)))
            + b"}"
        )
    elif text_how == "escape":
        text = text.replace(b'"', b'"\\ud800', 1) if draw(st.booleans()) else text.replace(b"a", b"\\u0000", 3)
    return text


def _dumps_big(value: Any) -> bytes:
    """JSON for values orjson refuses (integers over 64 bits), via the standard library."""
    import json

    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")


# --- the property ---------------------------------------------------------------------------------------


def check_block(entity: str, lines: list[bytes]) -> None:
    lines = [ln.replace(b"\n", b" ") for ln in lines]
    block = b"\n".join(lines) + b"\n"
    GENERATED["lines"] += len(lines)
    chunk = process_chunk((entity, block, True, 1, 0, *WINDOW))  # must not raise, whatever the lines hold
    chunk.block = block
    non_blank = sum(1 for ln in lines if ln.strip(b" \t\r\n\x0b\x0c"))
    assert chunk.read == non_blank
    assert len(chunk.keys) + len(chunk.rejects) == non_blank, "every line is mapped or rejected"
    for _, _, _, reason in chunk.rejects:
        assert isinstance(reason, str) and reason.strip(), "a reject says why"
    for line in chunk.lines():
        _check_accepted(entity, line)


def _check_accepted(entity: str, line: Line) -> None:
    assert isinstance(line.key, str) and line.key
    if line.quarter is not None:  # the loader creates this partition: its bounds must exist
        q = Quarter(*line.quarter)
        assert q.start < q.end and q.name
    try:
        exact = exact_line(line, entity, True, 1, *WINDOW)  # the loader's line-by-line fallback
    except RowError as exc:
        assert str(exc).strip()
        return
    assert exact.key == line.key


@pytest.mark.parametrize("entity", ENTITY_NAMES)
@FUZZ
@given(data=st.data())
def test_near_valid_lines_map_or_are_rejected(entity: str, data: st.DataObject) -> None:
    lines = data.draw(st.lists(mutated_entity(entity), min_size=10, max_size=LINES_PER_EXAMPLE))
    check_block(entity, lines)


@pytest.mark.parametrize("entity", ENTITY_NAMES)
@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=200),
            json_values.map(_dumps_big),
            st.dictionaries(
                st.sampled_from(
                    [
                        "code",
                        "guid",
                        "creationTime",
                        "changeTime",
                        "items",
                        "variants",
                        "accounts",
                        "price",
                        "billingAddress",
                        "status",
                        "email",
                        "",
                    ]
                ),
                json_values,
                max_size=8,
            ).map(_dumps_big),
        ),
        min_size=10,
        max_size=LINES_PER_EXAMPLE,
    )
)
def test_arbitrary_lines_map_or_are_rejected(entity: str, lines: list[bytes]) -> None:
    check_block(entity, lines)


@pytest.mark.parametrize("text", [d.encode() for d in IMPOSSIBLE_DATES])
@pytest.mark.parametrize("entity", ENTITY_NAMES)
def test_each_impossible_date_maps_or_is_rejected(entity: str, text: bytes) -> None:
    """The known dates, each on its own (a minimal example when the property fails)."""
    lines = []
    for field in DATE_KEYS:
        obj = copy.deepcopy(base_entities()[entity][0])
        obj[field] = text.decode()
        lines.append(orjson.dumps(obj))
    check_block(entity, lines)


# Lines the mapper accepts but the exact path cannot re-read: the fast order decoder (msgspec) skips
# unknown fields without checking their UTF-8, PostgreSQL then refuses the raw JSON, and the batch's
# line-by-line redo re-parses it with orjson (found by this fuzzer).
KNOWN_HARD_LINES = [
    b'{"code":"H1","creationTime":"2023-01-26T12:01:53+0100","\x80":1}',
    b'{"code":"H2","creationTime":"2023-01-26T12:01:53+0100","adminUrl":"\xff\xfe"}',
    b'{"code":"H3","creationTime":"0001-01-01T00:30+0100"}',
    b'{"code":"H4","creationTime":"9999-12-31T23:59:59+0000"}',
    b'{"code":"H5","creationTime":"2023-01-26T12:01:53+0100","items":[{"itemId":99999999999999999999}]}',
    b'{"code":"H6","creationTime":"2023-01-26T12:01:53+0100","status":{"id":4294967296}}',
    b'{"code":"H7","creationTime":"2023-01-26T12:01:53+0100","price":{"withVat":"1e999"}}',
    b'{"code":"H8","creationTime":"2023-01-26T12:01:53+0100","email":"a\\u0000b"}',
]


@pytest.mark.integration
@settings(
    max_examples=4,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(data=st.data())
def test_fuzzed_file_applies_with_rejects_never_crashes(db_url: str, tmp_path_factory, data: st.DataObject) -> None:
    """The whole apply (PostgreSQL's input functions, the line-by-line redo) on a file of fuzzed orders."""
    lines = data.draw(st.lists(mutated_entity("orders"), min_size=30, max_size=80)) + KNOWN_HARD_LINES
    GENERATED["lines"] += len(lines)
    path = tmp_path_factory.mktemp("fuzz") / "orders.jsonl"
    path.write_bytes(b"\n".join(ln.replace(b"\n", b" ") for ln in lines) + b"\n")
    with psycopg.connect(libpq_url(db_url), autocommit=True) as c:
        run_id = start_run(c, "orders", source="file", full=False)
    r = apply_snapshot_file(
        db_url, "orders", path, run_id=run_id, options=ApplyOptions(reject_threshold=1.0, workers=0)
    )
    # a blank line (a mutation may produce one) is not a line of the snapshot: the loader skips it
    assert r.lines == sum(1 for ln in lines if ln.replace(b"\n", b" ").strip(b" \t\r\n\x0b\x0c"))
    assert r.inserted + r.updated + r.unchanged + r.skipped_older + r.rejected == r.lines


def test_enough_lines_were_generated() -> None:
    """Run last in this module: the fuzz tests above went through at least 10 000 lines."""
    print(f"fuzzed lines: {GENERATED['lines']}")
    if GENERATED["lines"] < 1000:
        pytest.skip("run with the fuzz tests of this module")
    assert GENERATED["lines"] >= 10_000, GENERATED
