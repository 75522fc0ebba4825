"""The maintenance flows' time on the queries benchmark's database (issue 18 §5): what a nightly costs at that size.

Run by ``benchmarks/queries.py`` after the query cases, on its ``public`` schema (the hub's own tables), each
flow called in-process as a notebook would (one ephemeral Prefect for the whole phase; its start is paid by
a warm-up run of ``hub-status`` and reported apart). With the clock set to 2027-01-02 and retention at 4
years, exactly one quarter (2022 Q4, the oldest) is past retention and one runway quarter (2027 Q3) is due:

- ``hub status`` as the operator runs it (a process, ``--json --no-prefect``: the database checks only);
- ``partition-maintenance --dry-run`` (the plan alone), then the real run: rollover + retention of that one
  quarter (pg_dump archive + sha256 + manifest → verify → detach concurrently → drop);
- ``ensure-indexes`` with nothing to do;
- ``restore-partition-archive`` of that archive (checksummed, loaded unattached, attached), which puts the
  rows back, so the query cases can be measured again with ``--reuse``.

The phase changes the database, so it runs once per built database (recorded in ``bench_meta``); a
``--reuse`` run after it skips it and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from db.connection import connect

NOW = datetime(2027, 1, 2, 3, 0, tzinfo=UTC)
RETENTION_YEARS = 4  # horizon 2023-01-02: 2022 Q4 (ends 2023-01-01) is past it, 2023 Q1 is not
SCHEMA = "public"


def already_ran(url: str) -> bool:
    with connect(url, autocommit=True) as c:
        c.execute("ALTER TABLE bench_meta ADD COLUMN IF NOT EXISTS maintenance jsonb")
        return c.execute("SELECT maintenance IS NOT NULL FROM bench_meta").fetchone()[0]


def run(url: str) -> dict[str, Any]:
    """Time each flow; returns {step: seconds} plus what the retention moved."""
    if already_ran(url):
        print("\nmaintenance: already run on this database (it drops and restores a quarter); rebuild to run it again")
        return {}
    home = Path(tempfile.mkdtemp(prefix="hub-bench-maint-"))
    os.environ.update(HUB_DATABASE_URL=url, HUB_HOME=str(home), HUB_ARCHIVE_DIR=str(home / "archive"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

    from db.partitions.rollover import existing_partitions
    from db.settings.registry import get_settings_service
    from flows.config import get_config
    from flows.hub_status import hub_status
    from flows.indexes import ensure_indexes
    from flows.partitions import partition_maintenance, restore_partition_archive

    get_config.cache_clear()
    get_settings_service(url, SCHEMA).set("partition_retention_years", RETENTION_YEARS)
    out: dict[str, Any] = {}

    def timed(name: str, fn, *a, **kw):  # noqa: ANN001, ANN202 - a tiny local helper
        t = time.perf_counter()
        result = fn(*a, **kw)
        out[name] = round(time.perf_counter() - t, 2)
        print(f"  {out[name]:8.2f} s  {name}", flush=True)
        return result

    print("\nmaintenance flows on the public schema (in-process, ephemeral Prefect; clock 2027-01-02, retention 4 y):")
    timed("hub status (process: hub status --json --no-prefect)", _status_process, url, home)
    timed("hub-status flow, first (pays the ephemeral Prefect start)", hub_status)
    timed("hub-status flow", hub_status)
    timed("an empty flow (Prefect's own cost of a run, for comparison)", _empty_flow())
    with connect(url, autocommit=True) as c:
        before = existing_partitions(c)
    plan = timed("partition-maintenance --dry-run (the plan)", partition_maintenance, dry_run=True, now=NOW)
    for line in plan["plan"]:
        print(f"             plan: {line}")
    done = timed("partition-maintenance (rollover + retention)", partition_maintenance, now=NOW)
    with connect(url, autocommit=True) as c:
        after = existing_partitions(c)
    archived = done["archived"]
    out["created"] = sorted(after - before)
    out["dropped"] = sorted(before - after)
    out["archived"] = [{k: a[k] for k in ("partition", "rows")} | {"bytes": Path(a["file"]).stat().st_size}
                       for a in archived]  # fmt: skip
    print(f"             created {out['created']}, dropped {out['dropped']}, archived {out['archived']}")
    idx = timed("ensure-indexes (nothing to do)", ensure_indexes)
    out["index_actions"] = len(idx.get("actions", []))
    print(f"             index actions: {out['index_actions']}")
    for a in archived:
        timed(f"restore-partition-archive {a['partition']}", restore_partition_archive, Path(a["file"]))
        Path(a["file"]).unlink()  # the rows are back in the database; the dump is only a benchmark's copy
    with connect(url, autocommit=True) as c:
        restored = existing_partitions(c)
        c.execute("UPDATE bench_meta SET maintenance = %s", (psycopg.types.json.Jsonb(out),))
    if not before <= restored:
        raise SystemExit(f"maintenance: partitions missing after the restore: {sorted(before - restored)}")
    print(f"             partitions now {len(restored)} (before {len(before)}): every one is back")
    shutil.rmtree(home, ignore_errors=True)
    return out


def _empty_flow():  # noqa: ANN202 - a Prefect flow object
    from prefect import flow

    @flow(name="bench-empty-flow")
    def empty() -> None:
        return None

    return empty


def _status_process(url: str, home: Path) -> int:
    env = {**os.environ, "HUB_DATABASE_URL": url, "HUB_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "deployments.cli", "status", "--json", "--no-prefect"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode == 3 or not done.stdout.strip():
        raise SystemExit(f"hub status could not read the database: {done.stdout[-500:]} {done.stderr[-500:]}")
    level = json.loads(done.stdout)["level"]
    print(f"             hub status level: {level} (exit {done.returncode})")
    return done.returncode
