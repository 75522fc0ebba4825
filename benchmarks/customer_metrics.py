"""Customer metrics: full recompute and incremental runs at shop scale (db.metrics.recalculate, no Prefect).

    uv run python benchmarks/customer_metrics.py                          # 500k customers / 2.7M orders
    uv run python benchmarks/customer_metrics.py --server-url postgresql://postgres@/postgres?host=/var/run/postgresql
    uv run python benchmarks/customer_metrics.py --customers 50000 --orders 270000 --explain

Orders are generated in SQL (INSERT … SELECT generate_series; the loader is not what is measured):
every customer has a first order and the rest go to customers by a product of two uniforms (a long
tail: ~5.4 orders on average, a few dozen at the top). A third of the customers are guests (e-mail,
no GUID), 4 % have a GUID and no e-mail, 1 in 7 write their e-mail in varying case and spacing,
10 % of orders are in EUR, 3 % are cancelled and 0.1 % have neither e-mail nor GUID.

Prints: generation and index build times, full recompute (first, then again with nothing changed),
incremental runs (nothing changed; 1 000 touched customers incl. e-mail moves and deletes, --repeat
runs back to back, then three with a VACUUM between, as autovacuum does between scheduled runs; the
next day, when every row's recency changes), the cost of the identity trigger on upserts, and
PASS/MISS against the targets. ``--explain`` prints the plans of the incremental run's queries.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import fresh_db, server_url  # noqa: E402
from db.connection import connect  # noqa: E402
from db.metrics.compute import recalculate  # noqa: E402
from db.metrics.scores import ORDERINGS  # noqa: E402

INDEXES = {  # built after the bulk insert (faster, and their build time is a figure of its own)
    "ix_orders_customer_key": (
        "CREATE INDEX ix_orders_customer_key ON orders (metrics_customer_key(email, customer_guid))"
    ),
    "ix_orders_synced_at": "CREATE INDEX ix_orders_synced_at ON orders (synced_at)",
}

GENERATE = """
INSERT INTO orders (code, created_at, changed_at, synced_at, status_id, email, customer_guid, currency_code,
                    exchange_rate, price_with_vat, price_without_vat, content_hash)
SELECT 'B' || i, created, created + make_interval(days => (random() * 5)::int), '2026-01-01 00:00+00',
       CASE WHEN random() < 0.03 THEN -4 ELSE -2 END,
       CASE WHEN neither OR c %% 25 = 0 THEN NULL
            WHEN c %% 7 = 0 AND i %% 2 = 0 THEN '  Customer' || c || '@Example.CZ '
            ELSE 'customer' || c || '@example.cz' END,
       CASE WHEN neither OR (c %% 3 = 0 AND c %% 25 <> 0) THEN NULL ELSE md5(c::text)::uuid::text END,
       CASE WHEN i %% 10 = 0 THEN 'EUR' ELSE 'CZK' END,
       CASE WHEN i %% 10 = 0 THEN 24.5 + round((random() * 1.5)::numeric, 8) ELSE 1 END,
       price, round(price / 1.21, 2), 'bench'
FROM (
  SELECT i, c, i > %(customers)s AND i %% 1000 = 0 AS neither,
         timestamptz '2023-01-01 00:00+00' + random() * interval '1400 days' AS created,
         round((50 + random() * 3000)::numeric, 2) AS price
  FROM (SELECT i, CASE WHEN i <= %(customers)s THEN i
                       ELSE 1 + floor(%(customers)s * random() * random())::int END AS c
        FROM generate_series(1, %(orders)s) AS i) g
) x
"""

# 1 000 customers touched the way syncs touch them: mostly edited orders (status, price) stamped like
# the loader does, plus e-mail changes that move an order to another identity and deleted orders.
TOUCH = """
WITH picked AS (
  SELECT DISTINCT ON (metrics_customer_key(email, customer_guid)) code
  FROM orders
  WHERE metrics_customer_key(email, customer_guid) = ANY(%(keys)s)
  ORDER BY metrics_customer_key(email, customer_guid), code
), numbered AS (SELECT code, row_number() OVER (ORDER BY code) AS n FROM picked),
moved AS (
  UPDATE orders o SET email = 'moved' || n.n || '.' || %(round)s || '@example.cz', synced_at = now()
  FROM numbered n WHERE o.code = n.code AND n.n <= 100 RETURNING 1),
deleted AS (DELETE FROM orders o USING numbered n WHERE o.code = n.code AND n.n > 100 AND n.n <= 200 RETURNING 1)
UPDATE orders o SET status_id = CASE WHEN n.n %% 2 = 0 THEN -4 ELSE -2 END,
                    price_with_vat = o.price_with_vat + 1, synced_at = now()
FROM numbered n WHERE o.code = n.code AND n.n > 200
"""


def timed(fn, *args, **kw):  # noqa: ANN001, ANN002, ANN003, ANN201
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def generate(url: str, customers: int, orders: int) -> dict[str, float]:
    figures = {}
    with connect(url, autocommit=True) as c:
        for name in INDEXES:
            c.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        c.execute("SELECT setseed(0.42)")
        figures["generate_s"], _ = timed(c.execute, GENERATE, {"customers": customers, "orders": orders})
        for name, ddl in INDEXES.items():
            figures[f"{name}_s"], _ = timed(c.execute, ddl)
        figures["vacuum_analyze_s"], _ = timed(c.execute, "VACUUM ANALYZE orders")
    return figures


def touch(url: str, customers: int, round_no: int) -> None:
    with connect(url, autocommit=True) as c:
        keys = [
            r[0]
            for r in c.execute(
                "SELECT customer_key FROM customer_metrics ORDER BY md5(customer_key || %s) LIMIT %s",
                (str(round_no), customers),
            )
        ]
        c.execute(TOUCH, {"keys": keys, "round": round_no})


def trigger_overhead(url: str, rows: int, repeat: int = 4) -> tuple[float, float]:
    """An upsert-like UPDATE of ``rows`` orders (identity unchanged) with and without the identity trigger.

    Alternating, with a VACUUM before each, so neither side runs on the other's dead tuples.
    """
    stmt = "UPDATE orders SET email = email, synced_at = synced_at WHERE code = ANY(%s)"
    times: dict[bool, list[float]] = {True: [], False: []}
    with connect(url, autocommit=True) as c:
        codes = [r[0] for r in c.execute("SELECT code FROM orders ORDER BY code LIMIT %s", (rows,))]
        for i in range(2 * repeat):
            on = i % 2 == 0
            c.execute(
                sql.SQL("ALTER TABLE orders {} TRIGGER metrics_moved_order").format(
                    sql.SQL("ENABLE" if on else "DISABLE")
                )
            )
            c.execute("VACUUM orders")
            times[on].append(timed(c.execute, stmt, (codes,))[0])
        c.execute("ALTER TABLE orders ENABLE TRIGGER metrics_moved_order")
    return statistics.median(times[True]), statistics.median(times[False])


def explain(url: str) -> None:
    """Plans of the incremental run's order-side queries, with a watermark one minute back."""
    with connect(url, autocommit=True) as c:
        since = c.execute("SELECT now() - interval '1 minute'").fetchone()[0]
        touched = """SELECT metrics_customer_key(email, customer_guid) FROM orders
                     WHERE (synced_at >= %(s)s OR changed_at >= %(s)s)"""
        agg = f"""SELECT metrics_customer_key(o.email, o.customer_guid), count(*), sum(o.price_with_vat)
                  FROM orders o WHERE metrics_customer_key(o.email, o.customer_guid) IN ({touched})
                  GROUP BY 1"""
        unattributed = "SELECT count(*) FROM orders WHERE metrics_customer_key(email, customer_guid) IS NULL"
        for title, q in (("touched identities", touched), ("their aggregates", agg), ("unattributed", unattributed)):
            print(f"--- EXPLAIN ANALYZE: {title}")
            for (line,) in c.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + q, {"s": since}):
                print("    " + line)
        # The boundary cursor (db.metrics._boundaries) must walk the index, not sort: a cursor is planned
        # for its first 10 % (cursor_tuple_fraction), which is what DECLARE … CURSOR gets too.
        cols = ", ".join(ORDERINGS["f"])
        with c.transaction():
            c.execute(f"DECLARE probe NO SCROLL CURSOR FOR SELECT {cols} FROM customer_metrics ORDER BY {cols}")
            print("--- plan of the F boundary cursor")
            for (line,) in c.execute("EXPLAIN (COSTS OFF) SELECT " + cols + " FROM customer_metrics ORDER BY " + cols):
                print("    " + line)
            c.execute("CLOSE probe")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-url", help="PostgreSQL server URL (default: the embedded PostgreSQL 18)")
    ap.add_argument("--customers", type=int, default=500_000)
    ap.add_argument("--orders", type=int, default=2_700_000)
    ap.add_argument("--touched", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--explain", action="store_true")
    args = ap.parse_args()

    server = server_url(args.server_url)
    url = fresh_db(server, "hub_bench_metrics")
    with connect(url) as c:
        version = c.execute("SHOW server_version").fetchone()[0]
    print(
        f"PostgreSQL {version}; {os.cpu_count()} cores; {args.orders:,} orders for {args.customers:,} customers",
        flush=True,
    )
    figures = generate(url, args.customers, args.orders)
    print("generated: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)

    rows = []

    def record(label: str, seconds: float, r) -> None:  # noqa: ANN001
        rows.append((label, seconds, r))
        print(
            f"  {label:<44} {seconds:7.2f} s  mode {r.mode:<11} customers {r.customers:>9,}  recomputed "
            f"{r.recomputed:>9,}  rescored {r.rescored:>9,}  moved {r.moved:>7,}",
            flush=True,
        )

    record("full, first run", *timed(recalculate, url, full=True))
    as_of = rows[0][2].as_of
    full_again = timed(recalculate, url, full=True, as_of=as_of)
    record("full, nothing changed", *full_again)
    record("incremental, nothing changed", *timed(recalculate, url, as_of=as_of))
    inc = []
    for i in range(args.repeat):
        touch(url, args.touched, i)
        s, r = timed(recalculate, url, as_of=as_of)
        inc.append(s)
        record(f"incremental, {args.touched:,} customers touched #{i + 1}", s, r)
    # Back to back, every run clears more of the visibility map the boundary walk relies on; between
    # scheduled runs autovacuum (at 1 % changed rows, migration 0003) restores it. Both cases:
    with connect(url, autocommit=True) as c:
        c.execute("VACUUM customer_metrics")
    vacuumed = []
    for i in range(3):
        touch(url, args.touched, 1000 + i)
        s, r = timed(recalculate, url, as_of=as_of)
        vacuumed.append(s)
        record(f"incremental, {args.touched:,} touched, after VACUUM #{i + 1}", s, r)
        with connect(url, autocommit=True) as c:
            c.execute("VACUUM customer_metrics")
    record("incremental, next day (all recency moves)", *timed(recalculate, url, as_of=as_of + timedelta(days=1)))
    if args.explain:
        touch(url, args.touched, 99)
        explain(url)

    with_t, without_t = trigger_overhead(url, 100_000)
    print(
        f"identity trigger on a 100k-row upsert-like UPDATE: {with_t:.2f} s with, {without_t:.2f} s without "
        f"({100 * (with_t - without_t) / without_t:+.1f} %)"
    )

    full_s = min(rows[0][1], full_again[0])
    inc_median = statistics.median(inc)
    print()
    checks = [
        (f"full recompute <= 30 s (first run {rows[0][1]:.1f} s)", rows[0][1] <= 30),
        (
            f"incremental, {args.touched:,} touched customers <= 1 s, back to back (median {inc_median:.2f} s, "
            f"worst {max(inc):.2f} s)",
            inc_median <= 1,
        ),
        (
            f"incremental, {args.touched:,} touched customers <= 1 s, vacuumed between runs (median "
            f"{statistics.median(vacuumed):.2f} s)",
            statistics.median(vacuumed) <= 1,
        ),
    ]
    for name, ok in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    print(
        json.dumps(
            {
                "generate": figures,
                "runs": {label: round(s, 3) for label, s, _ in rows},
                "incremental_median_s": round(inc_median, 3),
                "full_best_s": round(full_s, 3),
                "incremental_vacuumed_median_s": round(statistics.median(vacuumed), 3),
                "trigger_s": {"with": round(with_t, 3), "without": round(without_t, 3)},
            }
        )
    )


if __name__ == "__main__":
    main()
