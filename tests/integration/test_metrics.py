"""Customer metrics against real PostgreSQL: identity, exclusions, money, scores, segments, incremental runs."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

import db.metrics.rules as rules_module
from db.connection import connect
from db.metrics.compute import LOCK_NAMESPACE, MetricsBusyError, recalculate
from db.metrics.rules import (
    DEFAULT_SEGMENT_RULES,
    MetricsSettingsError,
    parse_cancelled_statuses,
    parse_segment_rules,
    segment_grid,
)
from db.metrics.scores import ORDERINGS, ntile_boundaries

pytestmark = pytest.mark.integration

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ORDER_DEFAULTS: dict[str, Any] = {
    "status_id": -2,
    "email": None,
    "customer_guid": None,
    "currency_code": "CZK",
    "exchange_rate": Decimal(1),
    "price_with_vat": Decimal("100.00"),
    "price_without_vat": Decimal("82.64"),
}
COMPARED = (
    "customer_key",
    "customer_guid",
    "email",
    "orders_count",
    "revenue_with_vat",
    "revenue_without_vat",
    "avg_order_value",
    "first_order_at",
    "last_order_at",
    "days_since_last_order",
    "avg_days_between_orders",
    "r_score",
    "f_score",
    "m_score",
    "segment",
)


def add_orders(conn: psycopg.Connection, *orders: dict[str, Any]) -> None:
    """Insert orders the way the loader leaves them (synced_at = now()); only the columns metrics read."""
    for o in orders:
        row = {**ORDER_DEFAULTS, "changed_at": o.get("created_at"), **o}
        cols = ("code", "created_at", "changed_at", *ORDER_DEFAULTS)
        conn.execute(
            f"INSERT INTO orders ({', '.join(cols)}, content_hash) VALUES ({', '.join(['%s'] * len(cols))}, 'h')",
            [row[c] for c in cols],
        )


def metrics(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    cur = conn.execute(f"SELECT {', '.join(COMPARED)} FROM customer_metrics")
    return {r[0]: dict(zip(COMPARED, r, strict=True)) for r in cur}


def run(db_url: str, **kw: Any):
    return recalculate(db_url, as_of=kw.pop("as_of", AS_OF), **kw)


# --- identity -----------------------------------------------------------------------------------------


def test_identity_normalizes_email_falls_back_to_guid_and_counts_unattributed(db_url, conn):
    add_orders(
        conn,
        {"code": "1", "created_at": T0, "email": "  Jana.Novakova@Example.CZ ", "customer_guid": "G1"},
        {"code": "2", "created_at": T0 + timedelta(days=1), "email": "jana.novakova@example.cz"},  # guest
        {"code": "3", "created_at": T0, "email": "petr@example.cz"},  # guest
        {"code": "4", "created_at": T0, "customer_guid": "G2"},  # no e-mail: the GUID is the identity
        {"code": "5", "created_at": T0, "email": "   ", "customer_guid": "G3"},  # blank e-mail
        {"code": "6", "created_at": T0, "price_with_vat": Decimal("10.50")},  # neither
        {"code": "7", "created_at": T0, "email": "", "customer_guid": "", "price_with_vat": Decimal("20.00")},
        {"code": "8", "created_at": T0, "status_id": -4, "price_with_vat": Decimal("999")},  # neither, cancelled
    )
    result = run(db_url)
    m = metrics(conn)
    assert set(m) == {"jana.novakova@example.cz", "petr@example.cz", "G2", "G3"}
    jana = m["jana.novakova@example.cz"]
    assert (jana["orders_count"], jana["email"], jana["customer_guid"]) == (2, "jana.novakova@example.cz", "G1")
    assert (m["G2"]["email"], m["G2"]["customer_guid"]) == (None, "G2")
    assert (result.unattributed_orders, result.unattributed_revenue) == (2, Decimal("30.50"))
    assert result.customers == 4 and result.mode == "full" and result.reason == "first run"


def test_loaded_orders_attribute_by_email_and_convert_eur(db_url, conn, tmp_path):
    """Through the real loader: the JSON's e-mail, customerGuid and exchangeRate reach the metrics."""
    from db.loader import apply_snapshot_file
    from db.runs import start_run
    from tests.factories import order, write_jsonl

    eur = {
        "vat": "7.00",
        "toPay": "40.00",
        "currencyCode": "EUR",
        "withoutVat": "33.00",
        "withVat": "40.00",
        "exchangeRate": "25.12500000",
    }
    f = write_jsonl(
        tmp_path / "o.gz",
        [
            order("A1", email="Jana@Example.cz", customerGuid="G1"),
            order("A2", email="jana@example.cz ", customerGuid=None, price=eur),
            order("A3", email=None, customerGuid=None),
        ],
    )
    with connect(db_url) as c:
        run_id = start_run(c, "orders", source="file", full=False)
    apply_snapshot_file(db_url, "orders", f, run_id=run_id)
    result = run(db_url)
    (jana,) = metrics(conn).values()
    assert jana["customer_key"] == "jana@example.cz" and jana["orders_count"] == 2
    assert jana["revenue_with_vat"] == Decimal("1097.00") + Decimal("1005.00")
    assert jana["revenue_without_vat"] == Decimal("1735.74")  # 906.61 + 33 × 25.125, rounded once
    assert result.unattributed_orders == 1


# --- exclusions and money -----------------------------------------------------------------------------


def test_cancelled_orders_excluded_including_statuses_from_settings(db_url, conn):
    add_orders(
        conn,
        {"code": "a1", "created_at": T0, "email": "a@x.cz"},
        {"code": "a2", "created_at": T0, "email": "a@x.cz", "status_id": -4},
        {"code": "a3", "created_at": T0, "email": "a@x.cz", "status_id": 7},
        {"code": "a4", "created_at": T0, "email": "a@x.cz", "status_id": None},  # unknown status counts
        {"code": "b1", "created_at": T0, "email": "b@x.cz", "status_id": -4},
        {"code": "c1", "created_at": T0, "email": "c@x.cz", "status_id": 7},
    )
    run(db_url)
    m = metrics(conn)
    assert set(m) == {"a@x.cz", "c@x.cz"} and m["a@x.cz"]["orders_count"] == 3

    result = run(db_url, cancelled_statuses=[7])
    assert (result.mode, result.reason) == ("full", "cancelled statuses changed")
    assert result.cancelled_statuses == [-4, 7]
    m = metrics(conn)
    assert set(m) == {"a@x.cz"} and m["a@x.cz"]["orders_count"] == 2
    assert result.removed == 1
    assert run(db_url, cancelled_statuses=[7]).mode == "incremental"


def test_revenue_in_base_currency_and_average_order_value(db_url, conn):
    add_orders(
        conn,
        {
            "code": "1",
            "created_at": T0,
            "email": "a@x.cz",
            "price_with_vat": Decimal("1000.00"),
            "price_without_vat": Decimal("826.45"),
        },
        {
            "code": "2",
            "created_at": T0,
            "email": "a@x.cz",
            "currency_code": "EUR",
            "exchange_rate": Decimal("25.12500000"),
            "price_with_vat": Decimal("40.00"),
            "price_without_vat": Decimal("33.06"),
        },
        {"code": "3", "created_at": T0, "email": "a@x.cz", "price_with_vat": None, "price_without_vat": None},
    )
    run(db_url)
    a = metrics(conn)["a@x.cz"]
    assert a["revenue_with_vat"] == Decimal("2005.00")  # 1000 + 40 × 25.125
    assert a["revenue_without_vat"] == Decimal("1657.08")  # 826.45 + 830.6325, rounded once at the end
    assert a["orders_count"] == 3 and a["avg_order_value"] == Decimal("668.33")  # 2005 / 3


def test_order_times_days_since_and_average_days_between(db_url, conn):
    add_orders(
        conn,
        {"code": "1", "created_at": T0, "email": "a@x.cz"},
        {"code": "2", "created_at": T0 + timedelta(days=10), "email": "a@x.cz"},
        {"code": "3", "created_at": T0 + timedelta(days=30), "email": "a@x.cz"},
        {"code": "4", "created_at": T0 + timedelta(days=5), "email": "b@x.cz"},
    )
    run(db_url, as_of=T0 + timedelta(days=40, hours=12))
    m = metrics(conn)
    a, b = m["a@x.cz"], m["b@x.cz"]
    assert (a["first_order_at"], a["last_order_at"]) == (T0, T0 + timedelta(days=30))
    assert a["avg_days_between_orders"] == Decimal("15.00") and b["avg_days_between_orders"] is None
    assert (a["days_since_last_order"], b["days_since_last_order"]) == (10, 35)  # whole days
    run(db_url, as_of=T0 + timedelta(days=41))  # recency moves with as_of, no order changed
    assert metrics(conn)["a@x.cz"]["days_since_last_order"] == 11


# --- scores and segments ------------------------------------------------------------------------------


def ten_customers(conn: psycopg.Connection) -> None:
    """Customer i (1..10): i orders, the last on day i, revenue (11 − i) × 1000 in all."""
    for i in range(1, 11):
        price = (Decimal((11 - i) * 1000) / i).quantize(Decimal("0.01"))
        add_orders(
            conn,
            *(
                {
                    "code": f"{i}-{k}",
                    "created_at": T0 + timedelta(days=i - k),
                    "email": f"c{i:02}@x.cz",
                    "price_with_vat": price,
                }
                for k in range(i)
            ),
        )


def test_quintile_scores_on_a_known_distribution(db_url, conn):
    ten_customers(conn)
    run(db_url)
    scores = {k: (v["r_score"], v["f_score"], v["m_score"]) for k, v in metrics(conn).items()}
    for i in range(1, 11):
        q = (i + 1) // 2  # two customers per quintile
        assert scores[f"c{i:02}@x.cz"] == (q, q, 6 - q), i  # M runs the other way: revenue falls with i


def test_ties_split_deterministically_two_per_quintile(db_url, conn):
    add_orders(conn, *({"code": str(i), "created_at": T0, "email": f"t{i}@x.cz"} for i in range(10)))
    run(db_url)
    first = {k: (v["r_score"], v["f_score"], v["m_score"]) for k, v in metrics(conn).items()}
    assert sorted(s[1] for s in first.values()) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    run(db_url, full=True)
    assert {k: (v["r_score"], v["f_score"], v["m_score"]) for k, v in metrics(conn).items()} == first


def ntile_reference(conn: psycopg.Connection) -> dict[str, tuple[int, int, int]]:
    """The scores as plain ntile(5) windows over db.metrics.ORDERINGS (what the boundary lookup replaces)."""
    windows = ", ".join(f"ntile(5) OVER (ORDER BY {', '.join(cols)})" for cols in ORDERINGS.values())
    return {r[0]: tuple(r[1:]) for r in conn.execute(f"SELECT customer_key, {windows} FROM customer_metrics")}


@pytest.mark.parametrize("customers", [1, 2, 4, 6, 7, 23])
def test_scores_are_ntile_over_all_customers(db_url, conn, customers):
    rng = random.Random(customers)
    add_orders(
        conn,
        *(
            {
                "code": str(i),
                "created_at": T0 + timedelta(days=rng.randrange(3)),
                "email": f"c{rng.randrange(customers)}@x.cz",
                "price_with_vat": Decimal(rng.choice([10, 20])),
            }
            for i in range(3 * customers)
        ),
    )
    run(db_url)
    scores = {k: (v["r_score"], v["f_score"], v["m_score"]) for k, v in metrics(conn).items()}
    assert scores == ntile_reference(conn)


def test_boundary_positions_match_ntile():
    for n in range(0, 40):
        sizes = [n // 5 + (1 if b < n % 5 else 0) for b in range(5)]  # ntile: the first n % 5 get one more
        buckets = [b + 1 for b, size in enumerate(sizes) for _ in range(size)]
        last_of = [max(i + 1 for i, b in enumerate(buckets) if b == k) for k in range(1, 5) if k in buckets]
        assert ntile_boundaries(n)[: len(last_of)] == last_of, n


def test_a_row_count_other_than_expected_is_noticed(db_url, conn):
    ten_customers(conn)
    run(db_url)
    conn.execute("DELETE FROM customer_metrics WHERE customer_key = 'c05@x.cz'")  # behind the metrics' back
    add_orders(conn, {"code": "n1", "created_at": T0, "email": "new@x.cz"})
    result = run(db_url)
    assert result.mode == "incremental" and result.customers == 10
    assert {k: (v["r_score"], v["f_score"], v["m_score"]) for k, v in metrics(conn).items()} == ntile_reference(conn)
    assert sum(r["customers"] for r in result.segment_rows()) == 10


def documented_grid() -> dict[tuple[int, Decimal], str]:
    """The R × FM table in db.metrics.rules' docstring, cell by cell."""
    bands = {0: ("1", "1.5"), 1: ("2", "2.5"), 2: ("3", "3.5"), 3: ("4", "4.5", "5")}
    grid = {}
    for line in rules_module.__doc__.splitlines():
        m = re.match(r"^\s+([1-5])\s{2,}(.+)$", line)
        if m:
            cells = re.split(r"\s{2,}", m.group(2).strip())
            for band, name in enumerate(cells):
                for fm in bands[band]:
                    grid[(int(m.group(1)), Decimal(fm))] = name
    return grid


def test_default_segment_map_matches_the_documented_grid(conn):
    doc = documented_grid()
    sql_grid = segment_grid(conn, DEFAULT_SEGMENT_RULES)
    assert len(doc) == 45 and {(r, fm): sql_grid[(r, fm)] for r, fm in doc} == doc
    assert set(doc.values()) == {r.segment for r in DEFAULT_SEGMENT_RULES}  # all ten, never "Other"


def test_segments_default_and_overridden_rules(db_url, conn):
    ten_customers(conn)
    run(db_url)
    grid = segment_grid(conn, DEFAULT_SEGMENT_RULES)
    m = metrics(conn)
    for v in m.values():
        assert v["segment"] == grid[(v["r_score"], Decimal(v["f_score"] + v["m_score"]) / 2)]
    assert m["c10@x.cz"]["segment"] == "Loyal Customers"  # R 5, F 5, M 1
    assert m["c01@x.cz"]["segment"] == "At Risk"  # R 1, F 1, M 5

    override = parse_segment_rules(
        [
            {"segment": "Recent", "r": [4, 5], "fm": [1, 5]},
            {"segment": "Big spender", "r": [1, 3], "fm": [3, 5]},
        ]
    )
    run(db_url, segment_rules=override)
    segs = {k[1:3]: v["segment"] for k, v in metrics(conn).items()}
    assert segs == {
        "01": "Big spender",
        "02": "Big spender",
        "03": "Big spender",
        "04": "Big spender",
        "05": "Big spender",
        "06": "Big spender",
        "07": "Recent",
        "08": "Recent",
        "09": "Recent",
        "10": "Recent",
    }


def test_uncovered_scores_fall_into_other(db_url, conn):
    ten_customers(conn)
    result = run(db_url, segment_rules=parse_segment_rules([{"segment": "Top", "r": [5, 5], "fm": [1, 5]}]))
    assert {r["segment"]: r["customers"] for r in result.segment_rows(["Top"])} == {"Top": 2, "Other": 8}


@pytest.mark.parametrize(
    "value, message",
    [
        ({"segment": "x"}, "non-empty JSON array"),
        ([], "non-empty JSON array"),
        ([{"segment": "x", "r": [1, 5]}], "exactly the keys"),
        ([{"segment": "", "r": [1, 5], "fm": [1, 5]}], "segment must be"),
        ([{"segment": "x", "r": [0, 5], "fm": [1, 5]}], "r must be"),
        ([{"segment": "x", "r": [1, 5], "fm": [4, 2]}], "fm must be"),
        ([{"segment": "x", "r": [1, 5], "fm": ["1", 5]}], "fm must be"),
    ],
)
def test_malformed_segment_rules_are_refused_with_a_fix(value, message):
    with pytest.raises(MetricsSettingsError, match=message):
        parse_segment_rules(value)


def test_cancelled_statuses_setting_parsing():
    assert parse_cancelled_statuses(None) == (-4,)
    assert parse_cancelled_statuses([7, -4, 7]) == (-4, 7)
    with pytest.raises(MetricsSettingsError, match="array of status ids"):
        parse_cancelled_statuses(["-4"])


# --- incremental runs ---------------------------------------------------------------------------------


def test_identity_move_delete_and_cancel_are_seen_incrementally(db_url, conn):
    add_orders(
        conn,
        {"code": "1", "created_at": T0, "email": "a@x.cz"},
        {"code": "2", "created_at": T0, "email": "a@x.cz"},
        {"code": "3", "created_at": T0, "email": "b@x.cz"},
        {"code": "4", "created_at": T0, "email": "c@x.cz"},
        {"code": "5", "created_at": T0, "email": "d@x.cz"},
    )
    run(db_url)
    conn.execute("UPDATE orders SET email = 'z@x.cz', synced_at = now() WHERE code = '1'")  # a → z
    conn.execute("UPDATE orders SET email = ' B@X.CZ', synced_at = now() WHERE code = '3'")  # same identity
    conn.execute("DELETE FROM orders WHERE code = '4'")  # no synced_at to see: only the trigger tells
    conn.execute("UPDATE orders SET status_id = -4, synced_at = now() WHERE code = '5'")
    assert conn.execute("SELECT count(*) FROM customer_metrics_queue").fetchone()[0] == 2  # a, c
    result = run(db_url)
    assert result.mode == "incremental" and result.removed == 2
    assert {k: v["orders_count"] for k, v in metrics(conn).items()} == {"a@x.cz": 1, "z@x.cz": 1, "b@x.cz": 1}
    assert conn.execute("SELECT count(*) FROM customer_metrics_queue").fetchone()[0] == 0


def test_loader_upserts_and_full_snapshot_deletes_reach_incremental_runs(db_url, conn, tmp_path):
    from db.loader import ApplyOptions, apply_snapshot_file
    from db.runs import start_run
    from tests.factories import order, write_jsonl

    def apply(entities: list[dict], full: bool = False) -> None:
        with connect(db_url) as c:
            run_id = start_run(c, "orders", source="file", full=full)
        apply_snapshot_file(
            db_url,
            "orders",
            write_jsonl(tmp_path / "o.gz", entities),
            run_id=run_id,
            options=ApplyOptions(full=full, allow_mass_delete=True),
        )

    apply([order("A", email="a@x.cz"), order("B", email="a@x.cz"), order("C", email="c@x.cz")])
    run(db_url)
    later = "2026-10-01T10:00:00+0200"
    apply([order("A", email="a@x.cz"), order("B", email="moved@x.cz", changed=later)], full=True)  # C deleted
    result = run(db_url)
    assert result.mode == "incremental"
    assert {k: v["orders_count"] for k, v in metrics(conn).items()} == {"a@x.cz": 1, "moved@x.cz": 1}


def random_orders(rng: random.Random, start: int, n: int) -> list[dict[str, Any]]:
    people = [f"p{i}@x.cz" for i in range(150)]
    out = []
    for code in range(start, start + n):
        kind = rng.random()
        email = rng.choice(people) if kind < 0.8 else None
        if email and rng.random() < 0.2:
            email = f"  {email.upper()} "
        out.append(
            {
                "code": str(code),
                "created_at": T0 + timedelta(days=rng.randrange(300), minutes=rng.randrange(1440)),
                "email": email,
                "customer_guid": rng.choice([None, f"G{rng.randrange(60)}"]) if kind < 0.97 else None,
                "status_id": rng.choice([-2, -2, -2, -3, -4, 7, None]),
                "currency_code": "EUR" if rng.random() < 0.2 else "CZK",
                "price_with_vat": Decimal(rng.randrange(100, 500000)) / 100,
                "price_without_vat": Decimal(rng.randrange(100, 400000)) / 100,
            }
        )
        if out[-1]["currency_code"] == "EUR":
            out[-1]["exchange_rate"] = Decimal("24.5") + Decimal(rng.randrange(200)) / 100
    return out


def mutate(conn: psycopg.Connection, rng: random.Random, next_code: int) -> int:
    """A random mix of what syncs do to orders: edits (stamped like the loader), moves, deletes, inserts."""
    codes = [r[0] for r in conn.execute("SELECT code FROM orders ORDER BY code")]
    for code in rng.sample(codes, k=min(len(codes), 20)):
        what = rng.randrange(6)
        if what == 0:
            conn.execute("DELETE FROM orders WHERE code = %s", (code,))
            continue
        change = {
            1: ("email = %s", rng.choice([f"p{rng.randrange(160)}@x.cz", None, "NEW@X.CZ"])),
            2: ("customer_guid = %s", rng.choice([None, f"G{rng.randrange(20)}"])),
            3: ("status_id = %s", rng.choice([-4, -2, 7])),
            4: ("price_with_vat = %s", Decimal(rng.randrange(100, 900000)) / 100),
            5: ("created_at = %s", T0 + timedelta(days=rng.randrange(320))),
        }[what]
        conn.execute(f"UPDATE orders SET {change[0]}, synced_at = now() WHERE code = %s", (change[1], code))
    new = random_orders(rng, next_code, rng.randrange(1, 10))
    add_orders(conn, *new)
    return next_code + len(new)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_equals_full_after_random_changes(db_url, conn, seed):
    rng = random.Random(seed)
    add_orders(conn, *random_orders(rng, 1000, 500))
    run(db_url, cancelled_statuses=[7])
    next_code = 2000
    for _ in range(4):
        next_code = mutate(conn, rng, next_code)
        incremental = run(db_url, cancelled_statuses=[7])
        assert incremental.mode == "incremental" and incremental.recomputed < incremental.customers
        after_incremental = metrics(conn)
        full = run(db_url, cancelled_statuses=[7], full=True)
        assert metrics(conn) == after_incremental
        assert {k: (v["r_score"], v["f_score"], v["m_score"]) for k, v in after_incremental.items()} == ntile_reference(
            conn
        )
        assert (full.inserted, full.removed) == (0, 0)


# --- movement -----------------------------------------------------------------------------------------

RECENT_OR_NOT = parse_segment_rules(
    [
        {"segment": "Recent", "r": [4, 5], "fm": [1, 5]},
        {"segment": "Old", "r": [1, 3], "fm": [1, 5]},
    ]
)


def test_movement_between_segments_is_counted(db_url, conn):
    ten_customers(conn)  # customer i's last order is on day i: R = 4–5 for customers 7–10
    run(db_url, segment_rules=RECENT_OR_NOT)
    add_orders(conn, {"code": "new-1", "created_at": T0 + timedelta(days=100), "email": "c01@x.cz"})
    result = run(db_url, segment_rules=RECENT_OR_NOT)  # now 8, 9, 10, 1 are recent
    assert result.movement_rows() == [
        {"from": "Old", "to": "Recent", "customers": 1},
        {"from": "Recent", "to": "Old", "customers": 1},
    ]
    assert result.moved == 2

    conn.execute("DELETE FROM orders WHERE email = 'c02@x.cz'")  # 9 customers: R 5 is customer 1 alone
    result = run(db_url, segment_rules=RECENT_OR_NOT)
    rows = {r["segment"]: r for r in result.segment_rows(["Recent", "Old"])}
    assert rows["Recent"] == {
        "segment": "Recent",
        "customers": 3,
        "previous": 4,
        "moved_in": 0,
        "moved_out": 1,
        "new": 0,
        "removed": 0,
    }
    assert rows["Old"] == {
        "segment": "Old",
        "customers": 6,
        "previous": 6,
        "moved_in": 1,
        "moved_out": 0,
        "new": 0,
        "removed": 1,
    }
    assert conn.execute("SELECT customer_key FROM customer_metrics WHERE segment <> previous_segment").fetchall() == [
        ("c08@x.cz",)
    ]

    result = run(db_url, segment_rules=RECENT_OR_NOT)
    assert result.moved == 0 and result.movement_rows() == []


def test_movement_matches_a_before_after_diff(db_url, conn):
    rng = random.Random(9)
    add_orders(conn, *random_orders(rng, 1000, 300))
    run(db_url)
    before = {k: v["segment"] for k, v in metrics(conn).items()}
    mutate(conn, rng, 2000)
    result = run(db_url)
    after = {k: v["segment"] for k, v in metrics(conn).items()}
    expected: dict[tuple[str, str], int] = {}
    for key in before.keys() | after.keys():
        pair = (before.get(key) or "(new)", after.get(key) or "(removed)")
        if pair[0] != pair[1]:
            expected[pair] = expected.get(pair, 0) + 1
    assert {(r["from"], r["to"]): r["customers"] for r in result.movement_rows()} == expected


# --- run control --------------------------------------------------------------------------------------


def test_truncating_orders_forces_a_full_run(db_url, conn):
    add_orders(conn, {"code": "1", "created_at": T0, "email": "a@x.cz"})
    run(db_url)
    conn.execute("TRUNCATE orders")
    result = run(db_url)
    assert (result.mode, result.reason, result.customers) == ("full", "orders were truncated", 0)
    assert run(db_url).mode == "incremental"


def test_an_order_committed_by_a_transaction_open_during_the_run_is_not_missed(db_url, conn):
    add_orders(conn, {"code": "1", "created_at": T0, "email": "a@x.cz"})
    run(db_url)
    with psycopg.connect(conn.info.dsn) as loader:  # a long apply: synced_at = its start, commits late
        loader.execute(
            "INSERT INTO orders (code, created_at, email, content_hash) VALUES ('2', %s, 'b@x.cz', 'h')", (T0,)
        )
        result = run(db_url)
        assert result.customers == 1
    result = run(db_url)
    assert result.mode == "incremental" and set(metrics(conn)) == {"a@x.cz", "b@x.cz"}


def test_a_second_concurrent_run_is_refused(db_url, conn):
    conn.execute("SELECT pg_advisory_lock(%s, hashtext(current_schema()))", (LOCK_NAMESPACE,))
    with pytest.raises(MetricsBusyError, match="in progress"):
        run(db_url)
    conn.execute("SELECT pg_advisory_unlock(%s, hashtext(current_schema()))", (LOCK_NAMESPACE,))
    assert run(db_url).customers == 0


def test_state_keeps_the_watermark_and_counts_only(db_url, conn):
    add_orders(conn, {"code": "1", "created_at": T0, "email": "secret@x.cz"})
    result = run(db_url)
    watermark, details = conn.execute(
        "SELECT watermark, details FROM sync_state WHERE key = 'customer_metrics'"
    ).fetchone()
    assert watermark == result.watermark and details["customers"] == 1
    assert "secret" not in str(details) and "secret" not in str(result.as_dict())
