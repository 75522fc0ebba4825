"""The query benchmark's generated shop (benchmarks/shop_data.py) is the shape it claims, on both schemas."""

from __future__ import annotations

import random

import pytest

from benchmarks import queries as q
from benchmarks.shop_data import Sizes, baseline_tables, copy_tables, generate
from db.connection import connect
from db.indexes.ensure import ensure_indexes
from db.partitions.rollover import ensure_partitions

pytestmark = pytest.mark.integration


def ean_ok(ean: str) -> bool:
    digits = [int(d) for d in ean]
    weighted = sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits[:12]))
    return len(digits) == 13 and (weighted + digits[12]) % 10 == 0


def test_generated_shop_and_the_benchmark_queries_agree_on_both_schemas(db_url):
    sizes = Sizes.scaled(6000)
    with connect(db_url) as c:
        baseline_tables(c, q.BASELINE)
        counts = generate(c, q.BASELINE, sizes)
        c.commit()
    assert counts["orders"] == sizes.orders and counts["customers"] == sizes.customers
    assert counts["product_variants"] == sizes.variants
    assert abs(counts["order_items"] - sizes.items) < 0.05 * sizes.items  # the mean holds, not the exact sum

    with connect(db_url, autocommit=True) as c:
        ensure_partitions(c, q._data_quarters(c))
        with c.transaction():
            copy_tables(c, q.BASELINE, q.PRODUCT)
        assert not ensure_indexes(c, q.PRODUCT).failed
        keys = q.sample_keys(db_url, seed=1)
        variants = c.execute("SELECT code, ean FROM baseline.product_variants").fetchall()
        quarters = c.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'order_items'::regclass").fetchone()
        orphans = c.execute(
            "SELECT count(*) FROM baseline.order_items i WHERE NOT EXISTS "
            "(SELECT 1 FROM baseline.orders o WHERE o.code = i.order_code AND o.created_at = i.created_at)"
        ).fetchone()[0]
    assert quarters[0] == 16  # four years of whole quarters
    assert orphans == 0
    eans = [e for _, e in variants if e]
    assert len({code for code, _ in variants}) == len(variants) and len(set(eans)) == len(eans)
    assert all(ean_ok(e) for e in eans) and 0.9 < len(eans) / len(variants) < 1
    assert any(e != e.strip().lower() for e in keys.emails)  # some typed with capitals and spaces

    # every case returns the same rows from the plain tables and from the partitioned, indexed ones
    conns = {side: connect(db_url, side, autocommit=True) for side in (q.BASELINE, q.PRODUCT)}
    try:
        for case in q.cases(keys, [-4]):
            params = case.params(random.Random(7))
            rows = {side: c.execute(case.query, params).fetchall() for side, c in conns.items()}
            assert sorted(rows[q.BASELINE], key=str) == sorted(rows[q.PRODUCT], key=str), case.name
            assert rows[q.PRODUCT], f"{case.name}: the sampled key finds nothing"
        history = conns[q.PRODUCT].execute(q.HISTORY, (keys.customers[0],)).fetchall()
        assert len({r[0] for r in history}) <= 50 and all(r[4] is not None for r in history)
    finally:
        for c in conns.values():
            c.close()


def test_codes_stay_unique_past_the_widths_of_the_originals_size(db_url):
    """At 50M items the shop has 122k products: a 5-digit product number made product 100000's variant
    codes those of product 10000 (lpad truncates), and the 50M build failed on the variants' primary key."""
    sizes = Sizes(orders=30, items=60, customers=10, variants=100_000, products=100_000, years=4)
    with connect(db_url) as c:
        baseline_tables(c, q.BASELINE)
        counts = generate(c, q.BASELINE, sizes)  # the old codes: UniqueViolation on product_variants_pkey
        distinct = c.execute("SELECT count(DISTINCT code) FROM baseline.product_variants").fetchone()[0]
    assert counts["product_variants"] == distinct == 100_000
