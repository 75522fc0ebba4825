"""The long soak run: the hub on a living sandbox shop for N simulated days, with faults, checked daily.

    uv run python benchmarks/soak.py --days 1100 --seed 9001 --scale 0.005

The default is the real cadence: the schedule every simulated day and the checker after every day
(``--stride 1``). ``--stride N`` runs the schedule once per N days and checks once per span (faster, coarser;
keep N < 30, the change logs' horizon); ``--every 24`` puts the frequent jobs in one job hour a day instead of
two (about 6 fewer flow runs a day).

Runs on the embedded PostgreSQL (``HUB_TEST_HOME``, like the tests) under a temporary Prefect server. On the
first broken invariant it stops, prints the seed, day and step, and keeps the database and the work folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=1100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=0.005, help="life rates x this (1 = ~1 800 orders a day)")
    ap.add_argument("--orders", type=int, default=2000, help="orders in the shop's history at the start")
    ap.add_argument("--every", type=int, default=12, help="frequent jobs: once per this many hours (12: 11:xx, 23:xx)")
    ap.add_argument("--fault-rate", type=float, default=0.5)
    ap.add_argument("--faults-per-day", type=int, default=3)
    ap.add_argument("--only", help="only fault kinds whose name contains one of these (comma-separated)")
    ap.add_argument("--stride", type=int, default=1, help="simulated days per schedule day and check (1: daily)")
    args = ap.parse_args()

    from db.connection import ensure_database
    from db.embedded import embedded_server_url
    from tests.conftest import server_home
    from tests.soak.driver import Divergence, soak, soak_server
    from tests.soak.world import ShopSize

    server = embedded_server_url(server_home())
    dbname = f"soak_{args.seed}_{os.getpid()}"
    db_url = ensure_database(server, dbname)
    workdir = Path(tempfile.mkdtemp(prefix=f"soak-{args.seed}-"))
    size = ShopSize(
        orders=args.orders, customers=max(10, args.orders // 3), products=max(20, args.orders // 40), scale=args.scale
    )
    print(
        f"soak: seed {args.seed}, {args.days} days, scale {args.scale}; database {dbname}, files {workdir}", flush=True
    )
    with soak_server(startup_timeout=120):
        try:
            report = soak(
                db_url,
                workdir,
                days=args.days,
                seed=args.seed,
                size=size,
                every=args.every,
                fault_rate=args.fault_rate,
                per_day=args.faults_per_day,
                only=args.only,
                progress=True,
                stride=args.stride,
            )
        except Divergence as exc:
            print(f"DIVERGENCE: {exc}\nkept: database {dbname}, files {workdir}", flush=True)
            return 1
    print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
