"""The faults that are more than a sandbox knob: a backend terminated or the process SIGKILLed mid-apply,
PostgreSQL restarted, two runs of one locked job, erasures, a backup restored and compared.

Each replaces one scheduled fire's run (``Kind.run``) and leaves a note of how the hub recovered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from typer.testing import CliRunner

from db.connection import libpq_url, with_database
from tests.faults.pg_restart import restart_server
from tests.soak.schedule import Fire

if TYPE_CHECKING:
    from tests.soak.driver import Soak

ROOT = Path(__file__).resolve().parents[2]
CHECKSUM_TABLES = ("orders", "order_items", "customers", "products", "product_variants", "customer_metrics")
KEYED = {"orders": "code", "customers": "guid"}  # erased_keys' entities are these tables' names
APPLYING = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND state = 'active' AND (query ILIKE 'COPY%%' OR query ILIKE '%%stage_%%')"
)


def _note(soak: Soak, text: str) -> None:
    soak.note = text


def recovery(soak: Soak, kind: str, fire: Fire, outcome: Any) -> str:
    note, soak.note = getattr(soak, "note", None), None
    if note:
        return note
    if isinstance(outcome, Exception):
        later = "retry-failed-snapshots" if "full-snapshot" in fire.name else "the next scheduled run"
        return f"run failed ({type(outcome).__name__}), then {later}"
    return "within the run (task retries)"


def settle(soak: Soak) -> None:
    w = soak.world
    w.state.faults.path_faults.clear()


# ------------------------------------------------------------ backend terminated, SIGKILL


def _watch(url: str, hit: list[int], stop: threading.Event, action) -> None:  # noqa: ANN001 - a callable
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        while not stop.is_set():
            row = c.execute(APPLYING).fetchone()
            if row:
                action(c, row[0])
                hit.append(row[0])
                return
            time.sleep(0.005)


def terminate_apply(soak: Soak, fire: Fire) -> Any:
    hit: list[int] = []
    stop = threading.Event()
    t = threading.Thread(
        target=_watch,
        args=(soak.world.db_url, hit, stop, lambda c, pid: c.execute("SELECT pg_terminate_backend(%s)", (pid,))),
    )
    t.start()
    try:
        out = soak.run(fire.deployment)
    finally:
        stop.set()
        t.join()
    if not hit:
        _note(soak, "missed (the apply ended before the watcher saw it)")
    elif isinstance(out, Exception):
        _note(soak, f"apply rolled back ({type(out).__name__}), then retry-failed-snapshots")
    else:
        _note(soak, "apply rolled back, the task's retry completed it")
    return out


# The killed run's own process: its Shoptet client on the simulated clock (shifted wall time), as the
# sandbox's validUntil and job times are simulated.
_KILLED = """
import os, sys, time
from flows import runtime
from flows.snapshot import import_snapshot
from shoptet.client import ShoptetClient
offset = float(sys.argv[1])
clock = lambda: time.time() + offset
def client():
    return ShoptetClient(os.environ["HUB_SHOPTET_BASE_URL"], os.environ["HUB_SHOPTET_TOKEN"], clock=clock)
with runtime.override(client_factory=client):
    import_snapshot("orders", lock_wait=0)
"""


def _prefect_env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING"}


def sigkill_apply(soak: Soak, fire: Fire) -> Any:
    """The full orders snapshot in its own process, SIGKILLed once its apply writes; then `hub locks release`."""
    w = soak.world
    env = {**os.environ, **w.env(), **_prefect_env(), "PYTHONPATH": str(ROOT)}
    soak.report.flow_runs[fire.name] += 1
    log = (w.workdir / "killed-import.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED, str(w.clock.time() - time.time())],
        env=env,
        cwd=ROOT,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    killed = False
    with psycopg.connect(libpq_url(w.db_url), autocommit=True) as c:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if c.execute(APPLYING).fetchone():
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            w.clock.advance(0.05)  # the sandbox's clock moves on about as fast as the process's
            time.sleep(0.01)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        killed = True
    proc.wait()
    log.close()
    released = CliRunner().invoke(_cli(), ["locks", "release", "orders"])
    if not killed:
        # a constant label: the report counts outcomes by it (killed-import.log keeps the output until the next kill)
        _note(soak, f"the process ended (exit {proc.returncode}) before its apply was seen; not killed")
        return None
    soak.report.flow_failures[fire.name] += 1
    _note(soak, f"killed mid-apply; `hub locks release orders` exit {released.exit_code}; the next run completes")
    return None


def _cli():
    from deployments.cli import app

    return app


# ------------------------------------------------------------ PostgreSQL restart, two runs at once


def pg_restart(soak: Soak, fire: Fire) -> Any:
    restart_server(libpq_url(with_database(soak.world.db_url, "postgres")))
    out = soak.run(fire.deployment)
    _note(soak, "fresh connections: the next flow ran" if not isinstance(out, Exception) else f"run failed: {out!r}")
    return out


def two_at_once(soak: Soak, fire: Fire) -> Any:
    """Another run of the same locked job holds the lock (a process, as a second worker's run would); the
    scheduled run must end LockHeld and write nothing; the next scheduled run does its work."""
    from flows.locks import LockHeld

    w = soak.world
    group = fire.deployment.parameters.get("entity", "products")
    env = {**os.environ, **w.env(), **_prefect_env(), "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "faults" / "lock_holder.py"), w.db_url, group],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        held = holder.stdout.readline()  # one JSON line once the lock is held
        before = w.q("SELECT count(*) FROM snapshot_runs")[0][0]
        out = soak.run(fire.deployment, lock_wait=0)
        wrote = w.q("SELECT count(*) FROM snapshot_runs")[0][0] - before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    if held and isinstance(out, LockHeld) and not wrote:
        soak.report.flow_failures[fire.name] -= 1  # the refused run is the expected outcome
        _note(soak, "the second run ended LockHeld and wrote nothing; the next scheduled run did the work")
    else:
        soak.restore_problems.append(f"two runs of {fire.name}: the second was not refused ({out!r}, {wrote} runs)")
    return out


# ------------------------------------------------------------ erasures


def _forget(soak: Soak, email: str) -> Any:
    forget = soak.deployment_any("forget-person")
    soak.report.flow_runs["forget-person"] += 1
    return forget.flow()(email=email, lock_wait=0)


def erase_held(soak: Soak, fire: Fire) -> Any:
    """`hub forget` for someone the shop still holds: the next full snapshots write them back."""
    w = soak.world
    rows = w.q("SELECT email FROM customers WHERE email IS NOT NULL ORDER BY guid")
    if rows:
        email = soak.faults.rng.choice(rows)[0]
        _forget(soak, email)
        soak.check.skip_metrics_reason = "an erasure since the last metrics run"
        # The snapshot is requested after the erasure, not at its very instant (no evidence either way).
        w.move_to(fire.at + timedelta(minutes=1))
    out = soak.run(fire.deployment)
    _note(soak, "erased, then written back by the full snapshots (the shop still holds them)")
    return out


def erase_gone(soak: Soak, fire: Fire) -> Any:
    """The shop anonymises a person (account deleted, orders blanked), and the hub forgets them."""
    w = soak.world
    store = w.state.store
    people = sorted({o["email"] for o in (r.data() for r in store.records("orders")) if o.get("email")})
    if people:
        email = soak.faults.rng.choice(people)
        for rec in store.records("customers"):
            if any((a.get("email") or "").lower() == email.lower() for a in rec.data().get("accounts") or []):
                store.delete("customers", rec.key)
        for rec in store.records("orders"):
            o = rec.data()
            if (o.get("email") or "").lower() == email.lower():
                billing = dict(o.get("billingAddress") or {}, fullName=None, street=None, city=None)
                store.update("orders", rec.key, email=None, phone=None, billingAddress=billing, deliveryAddress=None)
        _forget(soak, email)
        soak.check.erased_gone.add(email)
        soak.check.skip_metrics_reason = "an erasure since the last metrics run"
    out = soak.run(fire.deployment)
    _note(soak, "erased in the shop and the hub; absent at every later check")
    return out


# ------------------------------------------------------------ backups restored and compared


def checksums(url: str) -> dict[str, tuple[int, str]]:
    out = {}
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        for t in CHECKSUM_TABLES:
            q = sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') FROM {} t"
            ).format(sql.Identifier(t))
            out[t] = tuple(c.execute(q).fetchone())
    return out


def row_hashes(url: str) -> dict[str, dict[str, str]]:
    """Per key, for the tables a restore's re-applied erasures may change (orders, customers)."""
    query = sql.SQL("SELECT {}, md5(t::text) FROM {} t")
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        return {t: dict(c.execute(query.format(sql.Identifier(k), sql.Identifier(t)))) for t, k in KEYED.items()}


def after_fire(soak: Soak, fire: Fire, outcome: Any) -> None:
    """After each nightly backup: what the mirror was at that backup, for a later restore to match."""
    if fire.name != "nightly-backup" or isinstance(outcome, Exception):
        return
    backups = sorted((soak.world.workdir / "backups").glob("*.dump"), key=lambda p: p.stat().st_mtime)
    if backups:
        url = soak.world.db_url
        mark = soak.world.q("SELECT coalesce(max(id), 0) FROM erasures")[0][0]
        soak.backup_sums[backups[-1].name] = (checksums(url), row_hashes(url), mark)


def _restore_differences(soak: Soak, got: dict, got_rows: dict, want: dict, want_rows: dict, mark: int) -> list[str]:
    """Tables the restore got wrong. A restore re-applies the erasures recorded after its backup (review M2):
    the rows of those erased keys, and the metrics identities they drop, are expected to differ; every
    other row must equal the mirror at the backup."""
    later: dict[str, set[str]] = {}
    for entity, key in soak.world.q("SELECT entity, key FROM erased_keys WHERE erasure_id > %s", mark):
        later.setdefault(entity, set()).add(key)
    if not later:
        return [t for t in CHECKSUM_TABLES if got[t] != want[t]]
    soak.report.excused["customer_metrics of a restore that re-applied later erasures"] += 1
    bad = [t for t in CHECKSUM_TABLES if t not in KEYED and t != "customer_metrics" and got[t] != want[t]]
    for t in KEYED:
        skip = later.get(t, set())
        if {k: v for k, v in got_rows[t].items() if k not in skip} != {
            k: v for k, v in want_rows[t].items() if k not in skip
        } or got_rows[t].keys() != want_rows[t].keys():
            bad.append(t)
    return bad


def restore_compare(soak: Soak, fire: Fire) -> Any:
    w = soak.world
    on_disk = [n for n in sorted(soak.backup_sums) if (w.workdir / "backups" / n).exists()]
    if on_disk:
        name = soak.faults.rng.choice(on_disk)
        target = f"soak_restore_{soak.seed}"
        soak.report.flow_runs["restore-backup"] += 1
        soak.deployment_any("restore-backup").flow()(backup=name, target_db=target, force=True)
        got, got_rows = checksums(with_database(w.db_url, target)), row_hashes(with_database(w.db_url, target))
        with psycopg.connect(libpq_url(with_database(w.db_url, "postgres")), autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target)))
        want, want_rows, mark = soak.backup_sums[name]
        bad = _restore_differences(soak, got, got_rows, want, want_rows, mark)
        soak.report.rows_compared += sum(n for n, _ in want.values())
        if bad:
            soak.restore_problems.append(f"backup {name} restores to something else than the mirror was: {bad}")
        _note(soak, f"restored into a scratch database: {'equal' if not bad else 'DIFFERENT ' + ','.join(bad)}")
    out = soak.run(fire.deployment)
    if not on_disk:
        _note(soak, "no backup to restore yet")
    return out
