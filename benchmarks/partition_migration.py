"""Online partitioning of a plain 8.2M-row ``order_items`` while a writer keeps inserting and updating.

    uv run python benchmarks/partition_migration.py                  # 8.2M rows, embedded PostgreSQL 18
    uv run python benchmarks/partition_migration.py --rows 200000    # a quick run
    uv run python benchmarks/partition_migration.py --server-url postgresql://postgres@/postgres?host=/var/run/postgresql

A fresh database in the old layout (``benchmarks/legacy_layout.py``: plain table keyed by order_code, item_id),
its rows generated server-side (2.7M orders' worth of items over six years). Then the steps of
``hub migrate-partitions`` and of ``--split`` (the db/ functions the flow's tasks call), each timed,
while one writer thread runs without pause: insert a new item, update it, update an existing legacy
row. Printed: each step's time; per phase the writer's statements, failures, longest and p99 wait;
row counts and a checksum of the rows the writer never touched before and after (must be equal), and
that every value the writer last wrote is there (no lost insert or update).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import fresh_db, server_url  # noqa: E402
from benchmarks.legacy_layout import make_legacy_order_items  # noqa: E402
from db.connection import libpq_url  # noqa: E402
from db.dates import DateWindow  # noqa: E402
from db.partitions import migration as mig  # noqa: E402
from db.partitions import split  # noqa: E402

TOUCHED_EVERY = 10_007  # the writer updates every such legacy order (a fixed set)


def generate(url: str, rows: int) -> float:
    t = time.perf_counter()
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        make_legacy_order_items(c)
        c.execute("ALTER TABLE order_items SET (autovacuum_enabled = false)")  # no vacuum racing the steps
        c.execute(
            """INSERT INTO order_items (order_code, item_id, created_at, position, item_type, product_guid, code, ean,
                                        name, amount, amount_unit, status_id, unit_price_with_vat,
                                        item_price_with_vat, vat_rate)
               SELECT 'O' || lpad((g / 3)::text, 8, '0'), g %% 3 + 1,
                      timestamptz '2020-12-01 00:00+00' + (g / 3) * (interval '6 years' / %s),
                      g %% 3 + 1, 'product', md5((g %% 50000)::text), 'V' || (g %% 50000), '859' || (g %% 50000),
                      'Item ' || (g %% 50000), 1 + g %% 4, 'ks', 1 + g %% 20, (g %% 997) + 0.5, (g %% 997) * 2 + 1, 21
                 FROM generate_series(0, %s - 1) g""",
            (rows // 3 + 1, rows),
        )
        c.execute("ALTER TABLE order_items RESET (autovacuum_enabled)")
        c.execute("VACUUM ANALYZE order_items")
    return time.perf_counter() - t


UNTOUCHED = sql.SQL("order_code NOT LIKE 'W%' AND order_code <> ALL({})")


class Writer(threading.Thread):
    def __init__(self, url: str, touched: list[str]):
        super().__init__(daemon=True)
        self.url, self.touched = url, touched
        self.stop = threading.Event()
        self.phase = "before"
        self.waits: dict[str, list[float]] = {}
        self.failures: dict[str, list[str]] = {}
        self.expected: dict[str, Decimal] = {}
        self.slow: list[tuple[float, str, float]] = []  # (when, statement, seconds) of waits over 0.5 s
        self.pid: int | None = None
        self.seen: Counter[tuple[str, str]] = Counter()  # (phase, wait event) sampled every 20 ms

    def sample(self) -> None:
        """What the writer's backend waits on, every 20 ms: a lock (a DDL step, a copy batch) or I/O."""
        with psycopg.connect(libpq_url(self.url), autocommit=True) as c:
            while not self.stop.is_set():
                if self.pid:
                    r = c.execute("SELECT wait_event_type, wait_event, state FROM pg_stat_activity WHERE pid = %s",
                                  (self.pid,)).fetchone()  # fmt: skip
                    if r and r[2] == "active":
                        self.seen[(self.phase, f"{r[0]}:{r[1]}" if r[0] else "CPU")] += 1
                time.sleep(0.02)

    def run(self) -> None:
        with psycopg.connect(libpq_url(self.url), autocommit=True) as c:
            self.pid = c.info.backend_pid
            n = 0
            while not self.stop.is_set():
                n += 1
                code = f"W{n:08d}"
                if self._do(c, "INSERT INTO order_items (order_code, item_id, created_at, position, amount) "
                               "VALUES (%s, 1, now() - %s * interval '1 hour', 1, 0)", (code, n % 5000)):  # fmt: skip
                    self.expected[code] = Decimal(0)
                for target in (code, self.touched[n % len(self.touched)]):
                    if self._do(c, "UPDATE order_items SET amount = %s WHERE order_code = %s", (n, target)):
                        self.expected[target] = Decimal(n)

    def _do(self, c: psycopg.Connection, stmt: str, args: tuple) -> bool:
        phase = self.phase
        t = time.perf_counter()
        try:
            c.execute(stmt, args)
            ok = True
        except psycopg.Error as exc:
            self.failures.setdefault(phase, []).append(str(exc).splitlines()[0])
            ok = False
        took = time.perf_counter() - t
        self.waits.setdefault(phase, []).append(took)
        if took > 0.5:
            self.slow.append((t, stmt.split()[0], took))
        return ok


def untouched(c: psycopg.Connection, touched: list[str]) -> tuple[int, int]:
    return split.checksum(c, "order_items", UNTOUCHED.format(sql.Literal(touched)))


STEPS: list[tuple[float, float, str]] = []  # (start, end, step): to place the writer's slow statements


def timed(label: str, fn, times: dict[str, float]):  # noqa: ANN001, ANN201
    t = time.perf_counter()
    out = fn()
    times[label] = time.perf_counter() - t
    STEPS.append((t, t + times[label], label))
    print(f"  {label:<34} {times[label]:8.2f} s", flush=True)
    return out


def _index_like_ensure_indexes(conn: psycopg.Connection) -> None:
    """A new index on the parent as ``ensure-indexes`` builds one: ON ONLY, then per leaf CONCURRENTLY and attach."""
    conn.execute("CREATE INDEX ix_bench_amount ON ONLY order_items (amount)")
    for (leaf,) in conn.execute(
        "SELECT relid::regclass::text FROM pg_partition_tree('order_items') WHERE isleaf"
    ).fetchall():
        conn.execute(sql.SQL("CREATE INDEX CONCURRENTLY {} ON {} (amount)").format(
            sql.Identifier(f"ix_bench_amount_{leaf}"), sql.Identifier(leaf)))  # fmt: skip
        conn.execute(sql.SQL("ALTER INDEX ix_bench_amount ATTACH PARTITION {}").format(
            sql.Identifier(f"ix_bench_amount_{leaf}")))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-url", help="PostgreSQL server URL (default: the benchmarks' embedded PostgreSQL 18)")
    ap.add_argument("--rows", type=int, default=8_200_000)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between copy batches (--pause of the CLI)")
    ap.add_argument(
        "--index-after-prepare",
        action="store_true",
        help="add an index to order_items after the split's prepare (as ensure-indexes would): the flip must not "
        "build it under its lock",
    )
    args = ap.parse_args()

    url = fresh_db(server_url(args.server_url), "hub_bench_partition_migration")
    print(f"generating {args.rows:,} order items in the old plain layout …", flush=True)
    gen = generate(url, args.rows)
    print(f"  generated in {gen:.0f} s", flush=True)
    touched = [f"O{n:08d}" for n in range(0, args.rows // 3, TOUCHED_EVERY)]
    conn = psycopg.connect(libpq_url(url), autocommit=True)
    rows_before = conn.execute("SELECT count(*) FROM order_items").fetchone()[0]
    sum_before = untouched(conn, touched)

    writer = Writer(url, touched)
    writer.start()
    sampler = threading.Thread(target=writer.sample, daemon=True)
    sampler.start()
    time.sleep(1)
    window = DateWindow.default()
    times: dict[str, float] = {}
    writer.phase = "migrate"
    print("migrate (writer running):", flush=True)
    plan = mig.make_plan(conn, window)
    timed("build indexes CONCURRENTLY", lambda: [mig.build_index(conn, n) for n in mig.needed_indexes()], times)
    timed("add CHECK NOT VALID", lambda: mig.add_range_check(conn, plan.cutover), times)
    timed("VALIDATE CHECK", lambda: mig.validate_range_check(conn), times)
    timed(
        "swap (one transaction)", lambda: mig.retry_on_lock_timeout("swap", lambda: mig.swap(conn, plan.cutover)), times
    )
    migrate_total = sum(times.values())
    writer.phase = "split"
    print("split (writer running):", flush=True)
    timed("prepare (shadow, trigger)", lambda: split.prepare(conn), times)
    if args.index_after_prepare:
        timed("index added after prepare", lambda: _index_like_ensure_indexes(conn), times)
    batches = timed("copy in batches", lambda: _copy_all(conn, args.batch_size, args.pause), times)
    verified = timed("verify (count + checksum)", lambda: split.verify(conn), times)
    attached = timed(
        "flip (one transaction)", lambda: split.flip_with_retries(conn, verified, window, sleep=time.sleep), times
    )
    timed("drop the detached legacy", lambda: split.drop_legacy(conn), times)
    split_total = sum(times.values()) - migrate_total
    writer.phase = "after"
    time.sleep(1)
    writer.stop.set()
    writer.join()
    sampler.join()

    rows_after = conn.execute("SELECT count(*) FROM order_items").fetchone()[0]
    w_rows = conn.execute("SELECT count(*) FROM order_items WHERE order_code LIKE 'W%'").fetchone()[0]
    sum_after = untouched(conn, touched)
    have = dict(conn.execute(
        "SELECT order_code, amount FROM order_items "
        "WHERE order_code LIKE 'W%%' OR (item_id = 1 AND order_code = ANY(%s))",
        (touched,),
    ).fetchall())  # fmt: skip
    lost = sum(1 for k, v in writer.expected.items() if have.get(k) != v)

    print(f"\n{args.rows:,} rows; {batches:,} copy batches of {args.batch_size}; "
          f"{len(attached)} quarter partitions attached by the flip")  # fmt: skip
    print(f"migration total {migrate_total:.1f} s; split total {split_total:.1f} s")
    print(f"{'writer phase':<10} {'statements':>10} {'failed':>7} {'longest ms':>11} {'p99 ms':>8} {'median ms':>10}")
    for phase in ("before", "migrate", "split", "after"):
        w = sorted(writer.waits.get(phase, [0.0]))
        p99 = w[min(len(w) - 1, int(len(w) * 0.99))]
        print(f"{phase:<10} {len(w):>10,} {len(writer.failures.get(phase, [])):>7} {w[-1] * 1000:>11.1f} "
              f"{p99 * 1000:>8.1f} {statistics.median(w) * 1000:>10.2f}")  # fmt: skip
    for when, what, took in writer.slow:
        step = next((f"{label} (+{when - a:.1f} s)" for a, b, label in STEPS if a <= when <= b), "between steps")
        print(f"  slow writer {what}: {took * 1000:.0f} ms, during {step}")
    for phase in ("migrate", "split"):
        top = sorted(((n, ev) for (ph, ev), n in writer.seen.items() if ph == phase), reverse=True)[:5]
        print(f"  writer backend while {phase} (20 ms samples, active): " + ", ".join(f"{ev} {n}" for n, ev in top))
    for phase, errs in writer.failures.items():
        print(f"  {phase} failures, first: {errs[0]}")
    print(f"rows: before {rows_before:,}; after {rows_after:,} = before + {w_rows:,} inserted by the writer: "
          f"{'OK' if rows_after == rows_before + w_rows else 'MISMATCH'}")  # fmt: skip
    print(f"untouched rows before {sum_before[0]:,} checksum {sum_before[1]}; after {sum_after[0]:,} checksum "
          f"{sum_after[1]}: {'EQUAL' if sum_before == sum_after else 'DIFFERENT'}")  # fmt: skip
    print(f"values the writer last wrote: {len(writer.expected):,}, missing or stale after: {lost}")
    conn.close()


def _copy_all(conn: psycopg.Connection, size: int, pause: float) -> int:
    batches = 0
    while split.copy_batch(conn, size):
        batches += 1
        time.sleep(pause)
        if batches % 200 == 0:
            print(f"    {batches * size:,} rows copied", flush=True)
    return batches


if __name__ == "__main__":
    main()
