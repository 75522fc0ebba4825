"""Settings cache: a cached read against a database read, measured side by side in one run, and the hit
rate of a steady read-mostly workload with writes from another service (as another process would).

    uv run python benchmarks/settings_cache.py                 # embedded PostgreSQL 18
    uv run python benchmarks/settings_cache.py --server-url postgresql://postgres@/postgres?host=/var/run/postgresql
    uv run python benchmarks/settings_cache.py --reads 100000 --keys 100 --write-share 0.001

Prints p50/p99 of single ``get`` calls (each timed alone with perf_counter_ns, so the timer's own ~50 ns is
included): a cache hit (list and scalar values, untyped and typed), and a database read two ways (the
service's miss path after ``invalidate``, and the bare SELECT on a held connection), with the ratios.
Then the workload: a cold reader service, N random reads over K keys, and a write with the given share,
made by a second service; the reader only learns of writes through NOTIFY.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import fresh_db, server_url  # noqa: E402
from db.connection import connect, libpq_url  # noqa: E402
from db.settings.service import SettingsService  # noqa: E402
from db.settings.store import fetch_json  # noqa: E402

DB_NAME = "hub_bench_settings"


def pct(samples: list[int], q: float) -> float:
    """Percentile in microseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def timed(fn, n: int) -> list[int]:  # noqa: ANN001
    out = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t = clock()
        fn()
        out.append(clock() - t)
    return out


def row(name: str, samples: list[int]) -> tuple[str, float, float]:
    return name, pct(samples, 0.5), pct(samples, 0.99)


def latency(url: str, n_cached: int, n_db: int) -> None:
    with SettingsService(url) as svc:
        svc.wait_listening(10)
        svc.set("cancelled_statuses", [-4, 7])
        svc.set("threshold", 0.02)
        for key in ("cancelled_statuses", "threshold"):
            svc.get(key)
        rows = [
            row("hit: rule list[int], validated", timed(lambda: svc.get("cancelled_statuses"), n_cached)),
            row("hit: untyped scalar", timed(lambda: svc.get("threshold"), n_cached)),
            row("hit: typed get(type_=float)", timed(lambda: svc.get("threshold", type_=float), n_cached)),
            row("hit: absent key (negative entry)", timed(lambda: svc.get("absent"), n_cached)),
        ]

        def miss() -> None:
            svc.invalidate("cancelled_statuses")
            svc.get("cancelled_statuses")

        for _ in range(200):  # warm the connection and the server's plan/buffer caches
            miss()
        rows.append(row("DB: service miss path (invalidate+get)", timed(miss, n_db)))
    with connect(url, autocommit=True) as conn:
        rows.append(
            row(
                "DB: bare SELECT on a held connection",
                timed(lambda: fetch_json(conn, "public", "cancelled_statuses"), n_db),
            )
        )

    def connect_and_read() -> None:  # what a task without the cache does: db.connection.connection() per call
        with connect(url, autocommit=True) as conn:
            fetch_json(conn, "public", "cancelled_statuses")

    rows.append(row("DB: connect + SELECT + close", timed(connect_and_read, max(1, n_db // 10))))

    print(f"{'read':<42} {'p50 µs':>9} {'p99 µs':>9}")
    for name, p50, p99 in rows:
        print(f"{name:<42} {p50:>9.2f} {p99:>9.2f}")
    print(f"\n{'ratio of p50s: DB read / cache hit':<42} {'rule':>9} {'scalar':>9}")
    for name, p50, _ in rows[4:]:
        print(f"{name:<42} {p50 / rows[0][1]:>8,.0f}x {p50 / rows[1][1]:>8,.0f}x")


def workload(url: str, reads: int, keys: int, write_share: float, seed: int) -> None:
    rng = random.Random(seed)
    names = [f"rule_{i:03d}" for i in range(keys)]
    with SettingsService(url, listen=False) as writer:
        for name in names:
            writer.set(name, [rng.randint(-10, 10)])
        with SettingsService(url) as reader:  # cold: every key's first read is a miss
            reader.wait_listening(10)
            writes = 0
            start = time.perf_counter()
            for _ in range(reads):
                if rng.random() < write_share:
                    writer.set(rng.choice(names), [rng.randint(-10, 10)])
                    writes += 1
                reader.get(rng.choice(names))
            elapsed = time.perf_counter() - start
            deadline = time.monotonic() + 5  # let the last notifications land before reading counters
            while reader.stats().notifications < writes and time.monotonic() < deadline:
                time.sleep(0.01)
            s = reader.stats()
    print(
        f"\nworkload: {reads:,} reads over {keys} keys, {writes} writes from another service "
        f"({write_share:.2%}), seed {seed}"
    )
    print(
        f"hits {s.hits:,}  misses {s.misses:,}  loads {s.loads:,}  notifications {s.notifications:,}  "
        f"invalidations {s.invalidations:,}"
    )
    print(f"hit rate {s.hit_rate:.4%}  (cold misses alone: {keys}; reads/s incl. writes {reads / elapsed:,.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-url", help="a URL to any database on the server (default: embedded)")
    ap.add_argument("--cached-samples", type=int, default=200_000)
    ap.add_argument("--db-samples", type=int, default=5_000)
    ap.add_argument("--reads", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--write-share", type=float, default=0.001)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    url = fresh_db(server_url(args.server_url), DB_NAME)
    with psycopg.connect(libpq_url(url)) as c:
        version = c.execute("SHOW server_version").fetchone()[0]
    print(f"PostgreSQL {version}, Python {sys.version.split()[0]}\n")
    latency(url, args.cached_samples, args.db_samples)
    workload(url, args.reads, args.keys, args.write_share, args.seed)


if __name__ == "__main__":
    main()
