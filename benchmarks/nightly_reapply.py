"""The loader's nightly case: a full orders snapshot re-applied with 2 % of orders changed and 1 % new.

    uv run python benchmarks/nightly_reapply.py                   # 2.7M orders (the original's shop)
    uv run python benchmarks/nightly_reapply.py --orders 100000   # a small shop while developing

Two gzip JSON Lines files in the Shoptet snapshot format, written in one pass of the sandbox generator
(``shoptet/sandbox/generator.py``) and kept under --data-dir for the next run:

- ``first``: the shop's first ``--orders`` orders;
- ``nightly``: the same shop a day later: every order of ``first`` (byte for byte the same line), except
  a random ``--changed`` share whose status and ``changeTime`` moved on, plus ``--new`` more orders,
  the newest ones, after them.

On a fresh migrated database whose strategic indexes ``db.indexes.ensure_indexes`` has made present
(as after ``hub indexes``): ``apply_snapshot_file`` of ``first`` as a full snapshot (the first load),
then ``VACUUM ANALYZE`` of the shop tables (a day of autovacuum, not timed), then of ``nightly`` as a
full snapshot. Printed: both times and their ratio (target <= 0.4), the runs' counters against the
expected ones, and a check in the database: the rows the nightly transaction wrote (``xmin`` none of
the first load's) are exactly the changed and the new orders and their items, the row counts are the
first load's plus the new orders', and nothing was deleted.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import orjson
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import fresh_db  # noqa: E402
from db.connection import connect  # noqa: E402
from db.indexes import ensure as db_indexes  # noqa: E402
from db.loader import ApplyOptions, apply_snapshot_file  # noqa: E402
from db.runs import start_run  # noqa: E402
from shoptet.sandbox.generator import ShopSpec, iter_orders  # noqa: E402

NIGHTLY_CHANGE_TIME = "2026-10-01T12:00:00+0200"  # after every generated changeTime (the shop's "now")
STATUSES = {-3: "Vyřízena", -2: "Odeslána"}


def write_files(data_dir: Path, orders: int, changed: float, new: float, seed: int) -> dict:
    """Write (or reuse) the two snapshot files; return their manifest (paths, expected codes and items)."""
    stem = f"nightly-{orders}-{changed}-{new}-{seed}"
    manifest_path = data_dir / f"{stem}.json"
    if manifest_path.exists():
        return json.loads(manifest_path.read_text())
    t = time.perf_counter()
    extra = round(orders * new)
    spec = ShopSpec.for_orders(orders + extra, seed)
    pick = random.Random(f"{seed}/nightly")
    m = {
        "first": str(data_dir / f"{stem}-first.jsonl.gz"),
        "nightly": str(data_dir / f"{stem}-nightly.jsonl.gz"),
        "orders": orders,
        "changed": [],
        "new": [],
        "items_first": 0,
        "items_changed": 0,
        "items_new": 0,
    }
    with _gz(m["first"] + ".partial") as first, _gz(m["nightly"] + ".partial") as nightly:
        for i, order in enumerate(iter_orders(orders + extra, seed, spec=spec)):
            line = orjson.dumps(order)
            n_items = len(order["items"])
            if i >= orders:
                m["new"].append(order["code"])
                m["items_new"] += n_items
                nightly.write(line + b"\n")
                continue
            first.write(line + b"\n")
            m["items_first"] += n_items
            if pick.random() < changed:
                m["changed"].append(order["code"])
                m["items_changed"] += n_items
                line = orjson.dumps(_changed(order))
            nightly.write(line + b"\n")
    for key in ("first", "nightly"):
        Path(m[key] + ".partial").rename(m[key])
    manifest_path.write_text(json.dumps(m))
    print(f"generated {orders:,} + {extra:,} orders in two files in {time.perf_counter() - t:.0f} s", flush=True)
    return m


def _gz(path: str) -> gzip.GzipFile:
    return gzip.GzipFile(path, "wb", compresslevel=1, mtime=0)


def _changed(order: dict) -> dict:
    """The order a day later: another status, a newer changeTime."""
    status = -2 if (order.get("status") or {}).get("id") == -3 else -3
    return {**order, "status": {"id": status, "name": STATUSES[status]}, "changeTime": NIGHTLY_CHANGE_TIME}


def apply(url: str, path: str) -> tuple[float, dict]:
    with connect(url) as c:
        run_id = start_run(c, "orders", source="file", full=True)
    t = time.perf_counter()
    r = apply_snapshot_file(url, "orders", Path(path), run_id=run_id, options=ApplyOptions(full=True))
    seconds = time.perf_counter() - t
    return seconds, r.counters()


def first_load_xmins(url: str) -> dict[str, list[str]]:
    with connect(url) as c:
        return {
            t: [x for (x,) in c.execute(sql.SQL("SELECT DISTINCT xmin::text FROM {}").format(sql.Identifier(t)))]
            for t in ("orders", "order_items")
        }


def written_since(url: str, xmins: dict[str, list[str]]) -> dict:
    """Rows whose xmin is none of the first load's: what the nightly wrote (inserted or updated)."""
    out = {}
    with connect(url) as c:
        for table, code in (("orders", "code"), ("order_items", "order_code")):
            rows = c.execute(
                sql.SQL("SELECT {c}, count(*) FROM {t} WHERE xmin::text <> ALL(%s) GROUP BY {c}").format(
                    c=sql.Identifier(code), t=sql.Identifier(table)
                ),
                (xmins[table],),
            ).fetchall()
            out[table] = {"codes": {r[0] for r in rows}, "rows": sum(r[1] for r in rows)}
    return {t: {**v, "count": counts(url)[t]} for t, v in out.items()}


def checks(m: dict, first: dict, nightly: dict, db: dict, before: dict) -> list[tuple[str, bool, str]]:
    changed, new = set(m["changed"]), set(m["new"])
    n = m["orders"]
    c = nightly
    return [
        ("first load: every order inserted", first["inserted"] == n and first["child_rows"] == m["items_first"], ""),
        (
            "nightly counters: inserted = new, updated = changed, unchanged = the rest, nothing deleted/rejected",
            (c["inserted"], c["updated"], c["unchanged"], c["deleted"], c["rejected"], c["skipped_older"])
            == (len(new), len(changed), n - len(changed), 0, 0, 0),
            f"inserted {c['inserted']:,}, updated {c['updated']:,}, unchanged {c['unchanged']:,}, "
            f"deleted {c['deleted']}, rejected {c['rejected']}, skipped_older {c['skipped_older']}",
        ),
        (
            "orders the nightly wrote = exactly the changed + the new ones",
            db["orders"]["codes"] == changed | new and db["orders"]["rows"] == len(changed | new),
            f"{db['orders']['rows']:,} rows written",
        ),
        (
            "order items the nightly wrote = exactly those of the changed + new orders",
            db["order_items"]["codes"] == changed | new
            and db["order_items"]["rows"] == m["items_changed"] + m["items_new"],
            f"{db['order_items']['rows']:,} rows written (expected {m['items_changed'] + m['items_new']:,})",
        ),
        (
            "row counts = first load + new, nothing deleted",
            db["orders"]["count"] == before["orders"] + len(new)
            and db["order_items"]["count"] == before["order_items"] + m["items_new"],
            f"orders {before['orders']:,} -> {db['orders']['count']:,}, "
            f"items {before['order_items']:,} -> {db['order_items']['count']:,}",
        ),
    ]


def counts(url: str) -> dict[str, int]:
    with connect(url) as c:
        return {
            t: c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
            for t in ("orders", "order_items")
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-url", help="PostgreSQL server URL (default: an embedded PostgreSQL 18 of its own)")
    ap.add_argument("--orders", type=int, default=2_700_000)
    ap.add_argument("--changed", type=float, default=0.02)
    ap.add_argument("--new", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "shoptet-hub-bench")
    ap.add_argument("--database", default="hub_bench_nightly")
    ap.add_argument("--files-only", action="store_true", help="write the two files and stop")
    args = ap.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)

    m = write_files(args.data_dir, args.orders, args.changed, args.new, args.seed)
    sizes = {k: Path(m[k]).stat().st_size / 1e6 for k in ("first", "nightly")}
    print(
        f"files: first {m['orders']:,} orders / {m['items_first']:,} items ({sizes['first']:,.0f} MB gz); nightly "
        f"{len(m['changed']):,} changed, {len(m['new']):,} new ({sizes['nightly']:,.0f} MB gz)",
        flush=True,
    )
    if args.files_only:
        return
    server = args.server_url or _own_server()
    url = fresh_db(server, args.database)
    with connect(url, autocommit=True) as c:
        db_indexes.ensure_indexes(c, "public")
    first_s, first = apply(url, m["first"])
    print(f"first load: {first_s:.1f} s ({m['items_first'] / first_s:,.0f} items/s)", flush=True)
    t = time.perf_counter()
    with connect(url, autocommit=True) as c:
        for table in ("orders", "order_items"):
            c.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
    print(f"(VACUUM ANALYZE between the two, not timed: {time.perf_counter() - t:.0f} s)", flush=True)
    xmins, before = first_load_xmins(url), counts(url)
    nightly_s, nightly = apply(url, m["nightly"])
    print(f"nightly re-apply: {nightly_s:.1f} s; ratio to the first load {nightly_s / first_s:.2f} (target <= 0.4)")
    db = written_since(url, xmins)
    print()
    results = checks(m, first, nightly, db, before)
    results.append(("nightly <= 0.4 x first load", nightly_s / first_s <= 0.4, f"{nightly_s / first_s:.2f}"))
    for name, ok, detail in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}" + (f": {detail}" if detail else ""))
    print(
        json.dumps(
            {
                "orders": m["orders"],
                "items": m["items_first"],
                "first_s": first_s,
                "nightly_s": nightly_s,
                "ratio": nightly_s / first_s,
                "first": first,
                "nightly": nightly,
            },
            default=str,
        )
    )


def _own_server() -> str:
    from db.embedded import embedded_server_url

    return embedded_server_url(Path(tempfile.gettempdir()) / "shoptet-hub-bench-queries-pg")


if __name__ == "__main__":
    main()
