"""The checks of ``hub status``: each ``(StatusContext) -> Check``, listed in ``flows.status.CHECKS``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from db import locks as dblocks
from db import status as dbstatus
from db.connection import connection
from db.partitions.rollover import Quarter
from db.settings import stats as settings_stats
from flows.lock_view import lock_table
from flows.prefect_read import PrefectReader
from flows.status_model import (
    FAIL,
    OK,
    PREFECT_FLOWS,
    RETRY_OVERDUE,
    STUCK_AFTER,
    WARN,
    Check,
    StatusContext,
    _ago,
    _iso,
    worst,
)
from flows.status_prefect import DB_FLOWS, _prefect_run_items, unrecorded_failures

# --- last runs ------------------------------------------------------------------------------------------


def _run_name(r: dict[str, Any]) -> tuple[str, str]:
    """(flow, what) of a snapshot_runs row."""
    if r["source"] == "fetch":
        return ("fetch-new-orders" if r["entity"] == "orders" else "fetch-changes"), f"{r['entity']} fetch"
    if r["source"] == "file":
        return "import-file", f"{r['entity']} file import" + (" (full)" if r["full"] else "")
    return "import-snapshot", f"{r['entity']} {'full' if r['full'] else 'changes'} snapshot"


def _db_run_item(r: dict[str, Any], now: datetime) -> dict[str, Any]:
    flow, what = _run_name(r)
    end = r["finished_at"]
    state, level, note = r["status"], OK, ""
    if state == "running" and now - r["started_at"] > STUCK_AFTER:
        state = "stuck"
        note = f"running since {_ago(now, r['started_at'])} with no end recorded: its process probably died"
    elif state == "failed":
        note = (r["error"] or "")[:300]
    if state in ("failed", "stuck"):
        level = FAIL
        if r["superseded_by"] is not None:  # a later full run of the entity brought everything
            level, note = OK, f"superseded by the full run #{r['superseded_by']}; {note}"
    return {
        "run": what,
        "flow": flow,
        "source": "database",
        "state": state,
        "level": level,
        "started_at": _iso(r["started_at"]),
        "finished_at": _iso(end),
        "duration_s": round((end - r["started_at"]).total_seconds(), 1) if end else None,
        "counters": {c: r[c] for c in dbstatus.RUN_COUNTERS if r[c] is not None},
        "note": note,
        "run_id": r["id"],
        "flow_run_id": r["flow_run_id"],
    }


def _metrics_item(conn: Any) -> dict[str, Any] | None:
    from db.metrics.compute import STATE_KEY
    from db.sync_state import get_state

    st = get_state(conn, STATE_KEY)
    if st is None:
        return None
    d = st.details
    return {
        "run": "customer metrics (last success)",
        "flow": "recalculate-customer-metrics",
        "source": "database",
        "state": "succeeded",
        "level": OK,
        "started_at": None,
        "finished_at": _iso(st.updated_at),
        "duration_s": None,
        "counters": {k: d[k] for k in ("customers", "recomputed", "removed", "moved") if k in d},
        "note": f"{d.get('mode', '')} run",
        "run_id": None,
        "flow_run_id": None,
    }


def check_runs(ctx: StatusContext) -> Check:
    """The last run of each kind: failed or stuck → fail."""
    with connection(ctx.url, ctx.schema, autocommit=True) as conn:
        items = [_db_run_item(r, ctx.now) for r in dbstatus.last_runs(conn)]
        if (m := _metrics_item(conn)) is not None:
            items.append(m)
    prefect_note = ""
    if ctx.prefect:
        try:
            with PrefectReader() as reader:
                items += _prefect_run_items(PREFECT_FLOWS, reader)
                items += unrecorded_failures(DB_FLOWS, items, reader)
        except Exception as exc:  # noqa: BLE001 - the database's runs are still worth showing
            prefect_note = f"; Prefect API not readable ({type(exc).__name__}: {str(exc)[:120]}): "
            prefect_note += f"runs of {', '.join(PREFECT_FLOWS)} unknown"
    # Not seeing half the flows needs attention, though nothing is known to be wrong.
    level = worst([i["level"] for i in items] + [WARN if prefect_note else OK])
    bad = [f"{i['run']} {i['state']}" for i in items if i["level"] != OK]
    if not items:
        detail = "no run recorded yet"
    elif bad:
        detail = "; ".join(bad)
    else:
        newest = max((i["finished_at"] or i["started_at"] or "" for i in items), default="")
        kinds = f"{len(items)} kind{'s' if len(items) != 1 else ''} of run"
        detail = f"{kinds}, all fine (newest {newest[:19].replace('T', ' ')})"
    return Check("runs", level, detail + prefect_note, {"items": items, "prefect": ctx.prefect and not prefect_note})


# --- failed snapshots -----------------------------------------------------------------------------------


def check_failed_snapshots(ctx: StatusContext) -> Check:
    """Pending (the retry flow will take them) → warn; overdue or given up with nothing after → fail."""
    with connection(ctx.url, ctx.schema, autocommit=True) as conn:
        rows = dbstatus.failed_snapshots_open(conn)
    items = []
    for r in rows:
        due = r["next_attempt_at"]
        if r["status"] == "gave_up":
            note = f"gave up after {r['attempts']} retries; a full snapshot (`hub sync {r['entity']}`) closes it"
            level = FAIL
        elif due is not None and ctx.now - due > RETRY_OVERDUE:
            level, note = FAIL, f"retry due {_ago(ctx.now, due)}: is the retry flow running? (`hub retry-failed`)"
        else:
            level, note = WARN, f"retry {r['attempts'] + 1} due {_iso(due) or 'now'}"
        items.append({
            "id": r["id"], "entity": r["entity"], "full": r["full"], "stage": r["stage"],
            "error_class": r["error_class"], "status": r["status"], "attempts": r["attempts"],
            "next_attempt_at": _iso(due), "created_at": _iso(r["created_at"]), "level": level, "note": note,
        })  # fmt: skip
    counts = {
        "open": len(items),
        "pending": sum(i["status"] == "pending" for i in items),
        "overdue": sum(i["status"] == "pending" and i["level"] == FAIL for i in items),
        "gave_up": sum(i["status"] == "gave_up" for i in items),
    }
    if not items:
        detail = "none open"
    else:
        detail = f"{counts['open']} open: {counts['pending']} pending ({counts['overdue']} overdue), "
        detail += f"{counts['gave_up']} gave up"
        detail += " — " + "; ".join(f"#{i['id']} {i['entity']}: {i['note']}" for i in items if i["level"] == FAIL)[:400]
    return Check("failed_snapshots", worst([i["level"] for i in items]), detail, {**counts, "items": items})


# --- partition runway -----------------------------------------------------------------------------------


def check_partition_runway(ctx: StatusContext) -> Check:
    """Quarters of ``order_items`` ready past the current one; below ``partition_runway_quarters`` → warn."""
    from db.settings.service import SettingsService

    # A one-off reader: the cache counters this report shows must not count the report itself.
    with SettingsService(ctx.url, ctx.schema, listen=False, persist_stats=False) as rules:
        wanted = rules.get("partition_runway_quarters")
    with connection(ctx.url, ctx.schema, autocommit=True) as conn:
        current_exists, ahead, existing = dbstatus.partition_runway(conn, ctx.now)
    current = Quarter.of(ctx.now)
    data = {
        "current_quarter": current.name,
        "current_exists": current_exists,
        "quarters_ahead": ahead,
        "wanted": wanted,
        "partitions": len(existing),
    }
    if not current_exists:
        detail = f"{current.name} (the current quarter) is missing: run `hub partitions`"
        return Check("partition_runway", FAIL, detail, data)
    detail = f"{ahead} quarter(s) ready past {current.name}, setting partition_runway_quarters = {wanted}"
    if ahead < wanted:
        return Check("partition_runway", WARN, detail + ": run `hub partitions`", data)
    return Check("partition_runway", OK, detail, data)


# --- settings cache -------------------------------------------------------------------------------------


def check_settings_cache(ctx: StatusContext) -> Check:
    """The settings cache's hit rate over every process (persisted totals); informational, always ok."""
    with connection(ctx.url, ctx.schema, autocommit=True) as conn:
        totals = settings_stats.read_totals(conn)
    data = {**totals.as_dict(), "scope": "every process, added at exit and once a minute"}
    if not totals.reads:
        return Check("settings_cache", OK, "no reads counted yet", data)
    detail = (
        f"hit rate {totals.hit_rate:.1%} over {totals.reads:,} reads in every process since "
        f"{totals.since:%Y-%m-%d %H:%M} UTC ({totals.loads:,} database loads, {totals.load_errors} failed)"
    )
    return Check("settings_cache", OK, detail, data)


# --- locks ----------------------------------------------------------------------------------------------


def _db_lock_rows(ctx: StatusContext) -> list[dict[str, Any]]:
    """What ``flows.locks.lock_table`` gives, from the database alone (no limit state)."""
    from flows.lock_view import GROUPS, limit_name

    with connection(ctx.url, ctx.schema, autocommit=True) as conn:
        inst = dblocks.instance_id(conn)
        holders = dblocks.read_holders(conn)
        rows = []
        for g in GROUPS:
            h = holders.get(limit_name(g, inst))
            rows.append({
                "lock": limit_name(g, inst), "exists": None, "active": None, "limit": None, "slots_in_use": None,
                "holder": h.describe() if h else None, "holder_alive": dblocks.holder_alive(conn, h) if h else None,
                "advisory_lock": dblocks.advisory_lock_backend(conn, limit_name(g, inst)),
            })  # fmt: skip
    return rows


def _lock_level(r: dict[str, Any]) -> tuple[str, str]:
    from flows.lock_view import release_command

    if r["holder"] and r["holder_alive"] is False:
        return FAIL, f"held by a dead holder: `{release_command(r['lock'])}` frees it"
    if r["exists"] is False:
        return OK, "not created yet (`hub bootstrap` or the first job creates it)"
    if r["exists"] and (not r["active"] or r["limit"] != 1):
        return WARN, f"limit {'inactive' if not r['active'] else r['limit']}: `hub bootstrap` repairs it"
    if r["slots_in_use"] and not r["holder"] and r.get("advisory_lock") is None:
        # On an ephemeral server or after a restart no lease expiry ever frees it.
        return WARN, f"a slot in use, no holder, no session holding it: a crashed job's; `{release_command(r['lock'])}`"
    if r["slots_in_use"] and not r["holder"]:
        return WARN, "a slot in use with no holder recorded: a job starting"
    return OK, "held, holder alive" if r["holder"] else "free"


def check_locks(ctx: StatusContext) -> Check:
    """Each job lock: exists, active, slots in use, holder. A dead holder → fail."""
    if ctx.prefect:
        rows = lock_table(ctx.url, ctx.schema)
    else:
        rows = _db_lock_rows(ctx)
    for r in rows:
        r["level"], r["note"] = _lock_level(r)
    held = [r["lock"] for r in rows if r["holder"]]
    bad = [f"{r['lock']}: {r['note']}" for r in rows if r["level"] != OK]
    detail = "; ".join(bad) or f"{len(rows)} locks, {len(held)} held" + ("" if ctx.prefect else " (database only)")
    return Check("locks", worst([r["level"] for r in rows]), detail, {"items": rows, "prefect": ctx.prefect})


# --- backups --------------------------------------------------------------------------------------------

# Nightly backups: one missed night warns, two fail. Weekly test restores: a missed week warns.
BACKUP_WARN, BACKUP_FAIL = timedelta(hours=26), timedelta(hours=50)
RESTORE_TEST_WARN = timedelta(days=8)


def _backup_level(ctx: StatusContext, newest: datetime | None, tested: datetime | None) -> tuple[str, list[str]]:
    notes, level = [], OK
    if newest is None:
        level, notes = WARN, ["no verified backup yet: `hub backup`"]
    elif ctx.now - newest > BACKUP_FAIL:
        level, notes = FAIL, [f"the newest verified backup is {_ago(ctx.now, newest)} (nightly expected)"]
    elif ctx.now - newest > BACKUP_WARN:
        level, notes = WARN, [f"the newest verified backup is {_ago(ctx.now, newest)} (nightly expected)"]
    if tested is None or ctx.now - tested > RESTORE_TEST_WARN:
        level = worst([level, WARN])
        when = "never restore-tested" if tested is None else f"no restore test in {RESTORE_TEST_WARN.days} days"
        notes.append(f"{when}: `hub backups test-restore`")
    return level, notes


def check_backups(ctx: StatusContext) -> Check:
    """Age of the newest verified and newest restore-tested backup of this database; a failed last one → fail."""
    from db.backups import list_backups

    with connection(ctx.url, ctx.schema, autocommit=True) as conn:  # the server names it, whatever the URL says
        dbname = conn.execute("SELECT current_database()").fetchone()[0]
    ours = [m for _, m in list_backups(ctx.backup_dir) if m.database == dbname]
    newest = max((m.finished for m in ours if m.verified), default=None)
    tested = max((m.finished for m in ours if m.restore_tested), default=None)
    level, notes = _backup_level(ctx, newest, tested)
    last = ours[-1] if ours else None
    if last is not None and last.verified is False:
        level, notes = FAIL, [f"the last backup {last.file} failed verification: {last.verify_error}", *notes]
    tried = [m for m in ours if m.restore_tested is not None]
    if tried and tried[-1].restore_tested is False:
        level, notes = FAIL, [f"the last test restore ({tried[-1].file}) failed: {tried[-1].restore_error}", *notes]
    data = {
        "dir": str(ctx.backup_dir) if ctx.backup_dir else None,
        "backups": len(ours),
        "newest_verified": _iso(newest),
        "newest_restore_tested": _iso(tested),
    }
    summary = f"newest verified {_ago(ctx.now, newest)}, newest restore-tested {_ago(ctx.now, tested)}"
    return Check("backups", level, "; ".join(notes) or summary, data)
