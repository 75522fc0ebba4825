"""Backups: raw ``pg_dump`` against the backup's dump step, then the verification read and a test restore.

    uv run python benchmarks/backup.py                          # ~600k orders, 2.4M items, embedded PG 18
    uv run python benchmarks/backup.py --server-url 'postgresql://postgres@/postgres?host=/var/run/postgresql'
    uv run python benchmarks/backup.py --orders 20000 --repeat 2   # quick

One database (``hub_bench_backup`` on the benchmarks' own server), filled with ``INSERT … SELECT`` into
the real ``orders`` and ``order_items`` tables (three quarter partitions, all indexes). Then, alternating
so that drift in the shared box's load hits both sides alike, ``--repeat`` times each:
  raw        ``pg_dump -Fc -f FILE`` with the same binary, nothing else;
  dump step  ``db.backups.dump.take_backup``: what ``nightly_backup``'s dump task runs (exported
             snapshot, row counts in it, ``--lock-wait-timeout``, 0600 temp file, fsync, rename,
             sha256, manifest).
Medians and the overhead ratio (target ≤ 10 %). Then the verification (``verify_backup``: sha256 and
``pg_restore -f /dev/null``, each also timed on its own) and ``test_restore`` (scratch database,
``pg_restore -j2``, compare, drop), timed separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import fresh_db, server_url  # noqa: E402
from db import pg_tools  # noqa: E402
from db.backups import dump, restore, verify  # noqa: E402
from db.backups.manifest import read_manifest  # noqa: E402
from db.connection import libpq_url, with_database  # noqa: E402
from db.dates import DateWindow  # noqa: E402
from db.partitions.rollover import Quarter, ensure_partitions  # noqa: E402

DB = "hub_bench_backup"
QUARTERS = [Quarter(2026, 1), Quarter(2026, 2), Quarter(2026, 3)]

ORDERS_SQL = """
INSERT INTO orders (code, guid, created_at, changed_at, status_id, status_name, source_name, email, phone,
    customer_guid, currency_code, exchange_rate, price_with_vat, price_without_vat, price_vat, price_to_pay,
    paid, billing_full_name, billing_street, billing_house_number, billing_city, billing_zip,
    billing_country_code, delivery_full_name, delivery_street, delivery_city, delivery_zip, content_hash, raw)
SELECT 'B' || lpad(g::text, 9, '0'), md5(g::text), t, t + interval '1 day', g %% 7, 'Vyřizuje se', 'e-shop',
    'customer' || (g %% 150000) || '@example.cz', '+420' || (600000000 + g %% 99999999), md5((g %% 150000)::text),
    'CZK', 1, p, round(p / 1.21, 2), round(p - p / 1.21, 2), p, g %% 3 = 0, 'Jana Nováková ' || g %% 1000,
    'Korunní', (g %% 200)::text, 'Praha ' || g %% 10, '120 00', 'CZ', 'Jana Nováková ' || g %% 1000, 'Korunní',
    'Praha 2', '120 00', md5('h' || g),
    json_build_object('code', g, 'note', repeat('poznámka ', 1 + g %% 8), 'items', g %% 9)
FROM (SELECT g, timestamptz '2026-01-01 00:00+00' + (g %% 270) * interval '1 day' + (g %% 86400) * interval '1 s' AS t,
             round((100 + g %% 9000)::numeric * 1.07, 2) AS p
      FROM generate_series(%(lo)s::int, %(hi)s::int) g) s
"""

ITEMS_SQL = """
INSERT INTO order_items (order_code, item_id, created_at, position, item_type, product_guid, code, ean, name,
    variant_name, brand, amount, amount_unit, price_ratio, status_id, unit_price_with_vat, unit_price_without_vat,
    item_price_with_vat, item_price_without_vat, item_price_vat, vat_rate)
SELECT o.code, 1000 + i, o.created_at, i, CASE WHEN i = %(per)s::int THEN 'shipping' ELSE 'product' END,
    md5('p' || (hashtext(o.code) %% 20000 + i)), 'SKU-' || (hashtext(o.code) %% 20000 + i), '8591234567890',
    'Hrnek smaltovaný 0,5 l ' || i, 'Barva: modrá', 'Smalt Co.', 1 + i %% 3, 'ks', 1, o.status_id, 499, 412.40,
    499 * (1 + i %% 3), 412.40 * (1 + i %% 3), 86.60 * (1 + i %% 3), 21
FROM orders o CROSS JOIN generate_series(1, %(per)s::int) i
WHERE o.code BETWEEN %(lo)s AND %(hi)s
"""


def populate(url: str, orders: int, per: int) -> None:
    t = time.perf_counter()
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        window = DateWindow(datetime(2025, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
        ensure_partitions(c, QUARTERS, window=window)
        step = 100_000
        for lo in range(1, orders + 1, step):
            hi = min(orders, lo + step - 1)
            c.execute(ORDERS_SQL, {"lo": lo, "hi": hi})
            c.execute(ITEMS_SQL, {"per": per, "lo": f"B{lo:09d}", "hi": f"B{hi:09d}"})
        c.execute("VACUUM ANALYZE")
    print(f"generated {orders:,} orders, {orders * per:,} items in {time.perf_counter() - t:.0f} s", flush=True)


def rows_of(url: str) -> int:
    with psycopg.connect(libpq_url(url)) as c:
        return c.execute("SELECT count(*) FROM orders").fetchone()[0]


def db_size(url: str) -> int:
    with psycopg.connect(libpq_url(url)) as c:
        return c.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def raw_dump(url: str, out: Path) -> float:
    with psycopg.connect(libpq_url(url)) as c:
        pg_dump = pg_tools.find_tool("pg_dump", pg_tools.server_major(c))
    with pg_tools.libpq_env(url) as (conninfo, env):
        t = time.perf_counter()
        done = pg_tools.run([str(pg_dump), "-Fc", "-f", str(out), "--dbname", conninfo], env)
        elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"raw pg_dump failed: {done.stderr}")
    return elapsed


def timed(fn, *args, **kw) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-url", help="PostgreSQL server URL (default: the benchmarks' embedded PostgreSQL 18)")
    ap.add_argument("--orders", type=int, default=600_000)
    ap.add_argument("--items-per-order", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--restores", type=int, default=1, help="test restores (each a full restore with indexes)")
    ap.add_argument("--keep", action="store_true", help="keep the generated database for the next run")
    ap.add_argument("--out-dir", type=Path, default=Path(tempfile.gettempdir()) / "shoptet-hub-bench-backup")
    args = ap.parse_args()

    server = server_url(args.server_url)
    url = with_database(server, DB)
    try:
        reuse = rows_of(url) == args.orders
    except psycopg.Error:
        reuse = False
    if not reuse:
        url = fresh_db(server, DB)
        populate(url, args.orders, args.items_per_order)
    shutil.rmtree(args.out_dir, ignore_errors=True)
    args.out_dir.mkdir(parents=True)
    with psycopg.connect(libpq_url(url)) as c:
        version = c.execute("SHOW server_version").fetchone()[0]
    print(f"PostgreSQL {version}; database {db_size(url) / 2**20:.0f} MB; {os.cpu_count()} CPUs", flush=True)

    raw_t, step_t, backups = [], [], []
    for i in range(args.repeat):
        out = args.out_dir / f"raw-{i}.dump"
        raw_t.append(raw_dump(url, out))
        out.unlink()
        t, (path, _m) = timed(dump.take_backup, url, "public", args.out_dir)
        step_t.append(t)
        backups.append(path)
        print(f"  run {i + 1}: raw pg_dump {raw_t[-1]:.2f} s, dump step {step_t[-1]:.2f} s", flush=True)
        time.sleep(1.1)  # backups are named by the second
    path = backups[-1]
    manifest = read_manifest(path)
    for p in backups[:-1]:
        p.unlink()

    with psycopg.connect(libpq_url(url)) as c:
        count_t = statistics.median(timed(dump.count_rows, c)[0] for _ in range(args.repeat))
    sha_t, read_t, verify_t = [], [], []
    for _ in range(args.repeat):
        sha_t.append(timed(pg_tools.sha256_of, path)[0])
        read_t.append(timed(verify.full_read, path, manifest)[0])
        verify_t.append(timed(verify.verify_backup, path)[0])
    restore_t = [timed(restore.test_restore, url, path, jobs=2)[0] for _ in range(args.restores)]

    raw, step = statistics.median(raw_t), statistics.median(step_t)
    print()
    print(f"dump {manifest.size_bytes / 2**20:.1f} MB (custom format, default compression); medians of {args.repeat}")
    print(
        f"raw pg_dump runs: {', '.join(f'{t:.1f}' for t in raw_t)} s; dump step runs: "
        f"{', '.join(f'{t:.1f}' for t in step_t)} s"
    )
    print(f"raw pg_dump                     {raw:7.2f} s")
    print(f"backup dump step (take_backup)  {step:7.2f} s   overhead {100 * (step / raw - 1):+.1f} %  (target ≤ 10 %)")
    print(f"  of which: row counts alone    {count_t:7.2f} s   (in the step they run while pg_dump runs)")
    print(f"verification: sha256            {statistics.median(sha_t):7.2f} s")
    print(f"verification: pg_restore read   {statistics.median(read_t):7.2f} s")
    print(f"verification: both (verify)     {statistics.median(verify_t):7.2f} s")
    restore_label = f"test restore (median of {args.restores})"
    print(f"{restore_label:32}{statistics.median(restore_t):7.2f} s   (pg_restore -j2, checks, drop)")
    shutil.rmtree(args.out_dir, ignore_errors=True)
    if args.keep:
        return
    with psycopg.connect(libpq_url(with_database(server, "postgres")), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))


if __name__ == "__main__":
    main()
