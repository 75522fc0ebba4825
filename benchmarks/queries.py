"""The shop's everyday queries at the original's scale, without and with partitions + strategic indexes.

    uv run python benchmarks/queries.py                       # 8.2M items, embedded PostgreSQL 18
    uv run python benchmarks/queries.py --items 200000        # a small shop while developing
    uv run python benchmarks/queries.py --reuse               # measure again on the database already built

One database, two schemas holding the same rows (generated inside PostgreSQL, ``benchmarks/shop_data.py``):

- ``public``: what the product builds, a freshly migrated hub database: ``order_items`` partitioned
  by quarter (``db.partitions.rollover.ensure_partitions`` for every quarter with data plus the current one and
  the next two), the migrations' indexes, then the strategic ones built by ``db.indexes.ensure_indexes``
  (what ``hub indexes`` runs); ``VACUUM ANALYZE``.
- ``baseline``: the same rows in plain tables with only their primary keys (no partitioning, no
  secondary index); ``VACUUM ANALYZE``.

Each case runs on one connection per schema with server-side prepared statements, random keys drawn
with a fixed seed (the same keys in the same order on both sides), after up to --warmup unmeasured
runs, for up to --iterations runs or until --budget seconds are spent (at least --min-runs). Times are
client-side (execute + fetch over the Unix socket). Then p50/p95 per side, the ratio of the p50s, and
each plan's shape (EXPLAIN) so the figures can be checked; the quarter report's full EXPLAIN ANALYZE.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import queries_maintenance  # noqa: E402
from benchmarks.common import fresh_db  # noqa: E402
from benchmarks.shop_data import TABLES, Sizes, baseline_tables, copy_tables, generate  # noqa: E402
from db.connection import connect, libpq_url, with_database  # noqa: E402
from db.indexes import ensure as db_indexes  # noqa: E402
from db.metrics.rules import DEFAULT_CANCELLED_STATUSES  # noqa: E402
from db.partitions.rollover import Quarter, ensure_partitions  # noqa: E402

BASELINE = "baseline"
QUARTER_NAME = re.compile(r"order_items_\d{4}_q\d")
PRODUCT = "public"

# The product's e-mail lookup (``ix_customers_email_normalized``: ``hub forget`` and support ask it).
EMAIL = "SELECT guid, email, full_name FROM customers WHERE lower(btrim(email)) = lower(btrim(%s))"
# A customer's last 50 orders with their lines, by the metrics identity (``ix_orders_customer_history``);
# the lines by (order_code, created_at): the order's primary key prefix and, partitioned, its quarter.
HISTORY = """
SELECT o.code, o.created_at, o.status_name, o.price_with_vat, i.item_id, i.code, i.name, i.amount,
       i.item_price_with_vat
  FROM (SELECT code, created_at, status_name, price_with_vat FROM orders
         WHERE metrics_customer_key(email, customer_guid) = %s
         ORDER BY created_at DESC LIMIT 50) o
  LEFT JOIN order_items i ON i.order_code = o.code AND i.created_at = o.created_at
 ORDER BY o.created_at DESC, i.position"""
VARIANT_COLUMNS = "SELECT code, product_guid, ean, name, price, stock FROM product_variants"
VARIANT_CODE = VARIANT_COLUMNS + " WHERE code = %s"
VARIANT_EAN = VARIANT_COLUMNS + " WHERE ean = %s"
VARIANT_CODES = VARIANT_COLUMNS + " WHERE code = ANY(%s)"
VARIANT_EANS = VARIANT_COLUMNS + " WHERE ean = ANY(%s)"
# A quarter's sales by month: lines, units, revenue without and with VAT, cancelled lines left out.
QUARTER = """
SELECT date_trunc('month', created_at AT TIME ZONE 'UTC') AS month, count(*) AS lines, sum(amount) AS units,
       sum(item_price_without_vat) AS revenue_without_vat, sum(item_price_with_vat) AS revenue_with_vat
  FROM order_items
 WHERE created_at >= %s AND created_at < %s AND coalesce(status_id, 0) <> ALL(%s)
 GROUP BY 1 ORDER BY 1"""
# The same quarter's totals in one row: no grouping, so no sort.
QUARTER_TOTALS = """
SELECT count(*) AS lines, sum(amount) AS units, sum(item_price_without_vat) AS revenue_without_vat,
       sum(item_price_with_vat) AS revenue_with_vat
  FROM order_items
 WHERE created_at >= %s AND created_at < %s AND coalesce(status_id, 0) <> ALL(%s)"""
NO_PARALLEL = ("max_parallel_workers_per_gather", "0")
# Their own statement text for the diagnostics: a prepared statement's cached plan ignores a later SET.
QUARTER_SERIAL, TOTALS_SERIAL = QUARTER + "\n-- serial", QUARTER_TOTALS + "\n-- serial"


@dataclass(frozen=True)
class Case:
    name: str
    query: str
    params: Callable[[random.Random], tuple]
    target: str
    passed: Callable[[float, float], bool]  # (p50 ms with, ratio) -> met
    setting: tuple[str, str] | None = None  # a session setting for this case only (diagnostics)


@dataclass
class Keys:
    emails: list[str]
    customers: list[str]
    busy: list[str]  # identities with at least 50 orders: the history's LIMIT bites
    codes: list[str]
    eans: list[str]
    quarters: list[Quarter]


def cases(k: Keys, cancelled: list[int]) -> list[Case]:
    def typed(e: str) -> str:  # as someone types it: trimmed, sometimes in capitals
        return e.strip().upper() if len(e) % 3 == 0 else e.strip()

    def batch(r: random.Random, pool: list[str]) -> list[str]:  # 1 000 distinct (all of a tiny test shop)
        return r.sample(pool, min(1000, len(pool)))

    def quarter(r: random.Random) -> tuple:
        q = r.choice(k.quarters)
        return q.start, q.end, cancelled

    return [
        Case("customer e-mail lookup", EMAIL, lambda r: (typed(r.choice(k.emails)),), "<= 1 ms", _ms(1)),
        Case("order history (last 50 + items)", HISTORY, lambda r: (r.choice(k.customers),), "<= 5 ms", _ms(5)),
        Case("  history, buyers of >= 50 orders", HISTORY, lambda r: (r.choice(k.busy),), "<= 5 ms", _ms(5)),
        Case("variant by code", VARIANT_CODE, lambda r: (r.choice(k.codes),), "<= 1 ms", _ms(1)),
        Case("variant by EAN", VARIANT_EAN, lambda r: (r.choice(k.eans),), "<= 1 ms", _ms(1)),
        Case("variants by 1 000 codes", VARIANT_CODES, lambda r: (batch(r, k.codes),), "<= 20 ms", _ms(20)),
        Case("variants by 1 000 EANs", VARIANT_EANS, lambda r: (batch(r, k.eans),), "<= 20 ms", _ms(20)),
        Case("quarter revenue report", QUARTER, quarter, ">= 4x faster", _faster(4)),
        Case("quarter revenue totals", QUARTER_TOTALS, quarter, ">= 4x faster", _faster(4)),
        # Diagnostics: the same two without parallel workers on either side (the work, not the wall clock).
        Case("  report, no parallel workers", QUARTER_SERIAL, quarter, "(diagnostic)", _faster(4), NO_PARALLEL),
        Case("  totals, no parallel workers", TOTALS_SERIAL, quarter, "(diagnostic)", _faster(4), NO_PARALLEL),
    ]


def _faster(times: float) -> Callable[[float, float], bool]:
    return lambda ms, ratio: ratio >= times


def _ms(limit: float) -> Callable[[float, float], bool]:
    return lambda ms, ratio: ms <= limit


# --- building the two schemas --------------------------------------------------------------------------


def build(server: str, name: str, sizes: Sizes) -> str:
    url = fresh_db(server, name)
    steps: dict[str, float] = {}
    t = time.perf_counter()
    with connect(url) as c:
        baseline_tables(c, BASELINE)
        counts = generate(c, BASELINE, sizes)
        c.commit()
    steps["generate (baseline schema)"] = _lap(t)
    with connect(url, autocommit=True) as c:
        t = time.perf_counter()
        quarters = _data_quarters(c) + _runway(3)
        ensure_partitions(c, sorted(set(quarters)))
        with c.transaction():
            copy_tables(c, BASELINE, PRODUCT)
        steps["copy into the product tables (partitioned, migration indexes)"] = _lap(t)
        t = time.perf_counter()
        report = db_indexes.ensure_indexes(c, PRODUCT)
        if report.failed:
            raise SystemExit(f"ensure_indexes failed: {report.failed}")
        built = sorted({a["index"] for a in report.actions if a["action"] == "built" and a["table"] in TABLES})
        steps[f"ensure_indexes ({len(report.actions)} builds/attaches; on the tables: {', '.join(built)})"] = _lap(t)
        t = time.perf_counter()
        for schema in (BASELINE, PRODUCT):
            for table in TABLES:
                c.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, table)))
        steps["VACUUM ANALYZE both schemas"] = _lap(t)
        c.execute("CREATE TABLE bench_meta (sizes jsonb, counts jsonb, built_at timestamptz DEFAULT now())")
        c.execute("INSERT INTO bench_meta (sizes, counts) VALUES (%s, %s)", (_json(sizes.__dict__), _json(counts)))
    print("built:", ", ".join(f"{k}: {n:,}" for k, n in counts.items()))
    for step, s in steps.items():
        print(f"  {s:7.1f} s  {step}")
    return url


def _lap(t: float) -> float:
    return time.perf_counter() - t


def _json(d: dict) -> psycopg.types.json.Jsonb:
    return psycopg.types.json.Jsonb(d)


def _data_quarters(c: psycopg.Connection) -> list[Quarter]:
    rows = c.execute(
        sql.SQL(
            """SELECT DISTINCT extract(year FROM created_at AT TIME ZONE 'UTC')::int,
                      extract(quarter FROM created_at AT TIME ZONE 'UTC')::int FROM {}"""
        ).format(sql.Identifier(BASELINE, "orders"))
    ).fetchall()
    return [Quarter(y, q) for y, q in rows]


def _runway(n: int) -> list[Quarter]:
    q = Quarter.of(datetime.now(UTC))
    out = [q]
    for _ in range(n - 1):
        out.append(out[-1].next())
    return out


def reusable(server: str, name: str, sizes: Sizes) -> str | None:
    url = with_database(server, name)
    try:
        with connect(url) as c:
            row = c.execute("SELECT sizes FROM bench_meta").fetchone()
    except psycopg.Error:
        return None
    return url if row and row[0] == sizes.__dict__ else None


# --- measuring ---------------------------------------------------------------------------------------------


def sample_keys(url: str, seed: int) -> Keys:
    r = random.Random(seed)
    with connect(url, BASELINE) as c:
        emails = [e for (e,) in c.execute("SELECT email FROM customers WHERE email IS NOT NULL")]
        # identities of random orders' buyers: busier customers come up more often, as in a shop
        customers = [
            k
            for (k,) in c.execute(
                "SELECT metrics_customer_key(email, customer_guid) FROM orders TABLESAMPLE BERNOULLI (1) "
                "REPEATABLE (%s) WHERE metrics_customer_key(email, customer_guid) IS NOT NULL",
                (seed,),
            )
        ]
        busy = [
            k
            for (k,) in c.execute(
                "SELECT metrics_customer_key(email, customer_guid) FROM orders GROUP BY 1 HAVING count(*) >= 50"
            )
            if k is not None
        ]
        variants = c.execute("SELECT code, ean FROM product_variants").fetchall()
        quarters = sorted(_data_quarters(c))
    full = [q for q in quarters if q != quarters[0] and q != quarters[-1]] or quarters  # whole quarters only
    codes = [code for code, _ in variants]
    eans = [ean for _, ean in variants if ean]
    return Keys(r.sample(emails, min(5000, len(emails))), customers, busy or customers, codes, eans, full)


def run_case(conn: psycopg.Connection, case: Case, seed: int, args: argparse.Namespace) -> list[float]:
    r = random.Random(seed)
    cur = conn.cursor()
    deadline = time.perf_counter() + args.budget / 3
    for _ in range(args.warmup):  # at least one, then while a third of the budget lasts
        cur.execute(case.query, case.params(r), prepare=True)
        cur.fetchall()
        if time.perf_counter() > deadline:
            break
    r = random.Random(seed + 1)
    times: list[float] = []
    deadline = time.perf_counter() + args.budget
    while len(times) < args.iterations and (len(times) < args.min_runs or time.perf_counter() < deadline):
        params = case.params(r)
        t = time.perf_counter()
        cur.execute(case.query, params, prepare=True)
        cur.fetchall()
        times.append((time.perf_counter() - t) * 1000)
    return times


def pct(times: list[float], p: float) -> float:
    s = sorted(times)
    return s[min(len(s) - 1, round(p * (len(s) - 1)))]


def plan_shape(conn: psycopg.Connection, case: Case, r: random.Random) -> str:
    """The plan's scan nodes, e.g. ``Index Scan ix_orders_customer_history; Append (16 of 19 pruned)``."""
    plan = conn.execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + case.query,  # the case's own fixed text, no input
        case.params(r),
    ).fetchone()[0][0]["Plan"]
    parts: dict[str, int] = {}
    for node in _nodes(plan):
        kind = node["Node Type"]
        if kind == "Append" and "Subplans Removed" in node:
            label = f"Append over {len(node.get('Plans', [])) + node['Subplans Removed']} partitions"
            label += f" ({node['Subplans Removed']} pruned at start)" if node["Subplans Removed"] else ""
        elif "Scan" in kind and kind not in ("Function Scan", "Subquery Scan"):
            on = QUARTER_NAME.sub("order_items_<quarter>", node.get("Index Name") or node.get("Relation Name", ""))
            label = f"{kind} {on}".strip()
        else:
            continue
        parts[label] = parts.get(label, 0) + 1
    return "; ".join(k if n == 1 else f"{k} (x{n})" for k, n in parts.items())


def _nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def explain_text(conn: psycopg.Connection, case: Case, r: random.Random) -> str:
    rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + case.query, case.params(r)).fetchall()
    return "\n".join(row[0] for row in rows)


def measure(url: str, args: argparse.Namespace) -> list[dict]:
    keys = sample_keys(url, args.seed)
    results = []
    conns = {side: connect(url, side, autocommit=True) for side in (BASELINE, PRODUCT)}
    try:
        for i, case in enumerate(cases(keys, list(DEFAULT_CANCELLED_STATUSES))):
            if args.cases and not any(c in case.name for c in args.cases):
                continue
            row: dict = {"case": case.name, "target": case.target}
            for side, conn in conns.items():
                if case.setting:
                    conn.execute("SELECT set_config(%s, %s, false)", case.setting)
                times = run_case(conn, case, args.seed + 10 * i, args)
                row[side] = {"p50": statistics.median(times), "p95": pct(times, 0.95), "n": len(times)}
                row[side]["plan"] = plan_shape(conn, case, random.Random(args.seed))
                if "quarter" in case.name or case.setting:
                    row[side]["explain"] = explain_text(conn, case, random.Random(args.seed))
                if case.setting:
                    conn.execute(sql.SQL("RESET {}").format(sql.Identifier(case.setting[0])))
            row["ratio"] = row[BASELINE]["p50"] / row[PRODUCT]["p50"]
            row["met"] = case.passed(row[PRODUCT]["p50"], row["ratio"])
            results.append(row)
            b, p = row[BASELINE], row[PRODUCT]
            print(
                f"{case.name:<33} {b['p50']:>9.3f} {b['p95']:>9.3f} {b['n']:>5} {p['p50']:>8.3f} {p['p95']:>8.3f} "
                f"{p['n']:>5} {row['ratio']:>8.1f}x  {case.target:<13} {'PASS' if row['met'] else 'MISS'}",
                flush=True,
            )
    finally:
        for conn in conns.values():
            conn.close()
    return results


def describe(url: str) -> None:
    with connect(url, autocommit=True) as c:
        version, buffers, workers = c.execute(
            "SELECT current_setting('server_version'), current_setting('shared_buffers'), "
            "current_setting('max_parallel_workers_per_gather')"
        ).fetchone()
        print(f"PostgreSQL {version}, shared_buffers {buffers}, max_parallel_workers_per_gather {workers}")
        for schema in (BASELINE, PRODUCT):
            sizes = []
            for table in TABLES:
                heap, total, parts = c.execute(
                    """SELECT sum(pg_table_size(r)), sum(pg_total_relation_size(r)), count(*)
                         FROM (SELECT relid AS r FROM pg_partition_tree(to_regclass(%(t)s)) WHERE isleaf
                               UNION ALL SELECT to_regclass(%(t)s) WHERE NOT EXISTS (
                                   SELECT 1 FROM pg_partition_tree(to_regclass(%(t)s)))) x""",
                    {"t": f"{schema}.{table}"},
                ).fetchone()
                label = f"{table} {heap / 2**20:,.0f}+{(total - heap) / 2**20:,.0f} MB"
                sizes.append(label + (f" ({parts} partitions)" if parts > 1 else ""))
            print(f"  {schema}: table+indexes: " + "; ".join(sizes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-url", help="PostgreSQL server URL (default: an embedded PostgreSQL 18 of its own)")
    ap.add_argument("--items", type=int, default=8_200_000, help="order items; the rest scales with it")
    ap.add_argument("--database", help="default: hub_bench_queries_<items> (one per size, so --reuse finds it)")
    ap.add_argument("--reuse", action="store_true", help="measure on the database a previous run built")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--min-runs", type=int, default=10)
    ap.add_argument("--budget", type=float, default=15.0, help="seconds per case and side (after --min-runs)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--cases", nargs="*", help="only the cases whose name contains one of these")
    ap.add_argument("--json", type=Path, help="write the figures (and the EXPLAIN texts) here")
    ap.add_argument(
        "--no-maintenance", action="store_true",
        help="skip the maintenance flows' timing (benchmarks/queries_maintenance.py; once per built database)",
    )  # fmt: skip
    args = ap.parse_args()

    server = args.server_url or _own_server()
    sizes = Sizes.scaled(args.items)
    args.database = args.database or f"hub_bench_queries_{args.items}"
    url = (reusable(server, args.database, sizes) if args.reuse else None) or build(server, args.database, sizes)
    with psycopg.connect(libpq_url(with_database(server, "postgres"))) as c:
        c.execute("SELECT 1")
    describe(url)
    print(
        f"\n{'':<33} {'baseline (plain tables, primary keys only)':^25} {'partitioned + strategic indexes':^24}\n"
        f"{'case':<33} {'p50 ms':>9} {'p95 ms':>9} {'runs':>5} {'p50 ms':>8} {'p95 ms':>8} {'runs':>5} "
        f"{'ratio':>9}  {'target':<13}"
    )
    results = measure(url, args)
    print("\nplans (baseline | partitioned + indexes):")
    for row in results:
        print(f"  {row['case']}: {row[BASELINE]['plan']} | {row[PRODUCT]['plan']}")
    for row in results:
        for side in (BASELINE, PRODUCT):
            if "explain" in row[side]:
                print(f"\n{row['case'].strip()}, EXPLAIN (ANALYZE, BUFFERS), {side}:\n{row[side]['explain']}")
    maintenance = {} if args.no_maintenance else queries_maintenance.run(url)
    if args.json:
        figures = {"sizes": sizes.__dict__, "results": results, "maintenance": maintenance}
        args.json.write_text(json.dumps(figures, indent=1, default=str))


def _own_server() -> str:
    """The benchmark's own embedded server: the other benchmarks' and the tests' servers stay out of the way."""
    from db.embedded import embedded_server_url

    return embedded_server_url(Path(tempfile.gettempdir()) / "shoptet-hub-bench-queries-pg")


if __name__ == "__main__":
    main()
