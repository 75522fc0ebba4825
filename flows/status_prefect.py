"""What only Prefect knows for ``hub status``: the last runs of flows that keep no run record, and scheduled
(deployment) runs that failed before they could write one (a fetch with no token fails before its first hub
table). Runs outside a deployment are left out there: a CLI run's failure is printed to its user, and a
test's or a notebook's direct call is no scheduled job."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flows.prefect_read import PrefectReader, RunInfo
from flows.status_model import FAIL, OK, STUCK_AFTER, WARN, _iso

# Flows that record their runs in snapshot_runs: a failure shows there, unless it came before the record.
DB_FLOWS = ("fetch-new-orders", "fetch-changes", "import-snapshot", "import-file")
RECENT = 20  # runs of one flow read to find the newest of each entity


def _prefect_run_items(names: tuple[str, ...], reader: PrefectReader) -> list[dict[str, Any]]:
    """The newest run of each flow in ``names`` that started, from the Prefect API."""
    items = []
    for name in names:
        if runs := reader.flow_runs(name, limit=1):
            items.append(_prefect_item(name, runs[0]))
    return items


def _prefect_item(name: str, run: RunInfo) -> dict[str, Any]:
    state = run.state_type.lower() if run.state_type else "unknown"
    message = run.state_message
    level, note = OK, ""
    if state == "running" and run.start_time and datetime.now(UTC) - run.start_time > STUCK_AFTER:
        level, note = FAIL, "running for hours: a crashed process that Prefect never marked (no heartbeat check)"
    if state in ("failed", "crashed"):
        # A run that found its lock held did nothing wrong: another run of the same job was busy.
        level, note = (WARN, "skipped: its lock was held") if "LockHeld" in message else (FAIL, message[:300])
    end = run.end_time
    return {
        "run": name,
        "flow": name,
        "source": "prefect",
        "state": state,
        "level": level,
        "started_at": _iso(run.start_time),
        "finished_at": _iso(end),
        "duration_s": round(run.total_run_time.total_seconds(), 1) if end else None,
        "counters": {},
        "note": note,
        "run_id": None,
        "flow_run_id": run.id,
    }


def _newest_per_entity(reader: PrefectReader, flow: str) -> list[RunInfo]:
    newest: dict[str, RunInfo] = {}
    for run in reader.flow_runs(flow, deployment_only=True, limit=RECENT):
        # one job per entity (fetch-changes of customers, of products): the newest of each
        newest.setdefault(str(run.parameters.get("entity")), run)
    return list(newest.values())


def unrecorded_failures(
    flows: tuple[str, ...], items: list[dict[str, Any]], reader: PrefectReader
) -> list[dict[str, Any]]:
    """The newest deployment run of each (flow, entity) that failed or crashed without a hub run record."""
    recorded = {i["flow_run_id"] for i in items if i["flow_run_id"]}
    found = []
    for flow in flows:
        for run in _newest_per_entity(reader, flow):
            if run.id in recorded or run.state_type not in ("FAILED", "CRASHED"):
                continue
            item = _prefect_item(flow, run)
            item["run"] = run.name
            if item["level"] == FAIL:
                item["note"] = f"failed before recording a run: {item['note']}"
            found.append(item)
    return found
