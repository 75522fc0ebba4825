"""The ``hub-status`` flow: the hub's health page in the Prefect UI (artifact key ``hub-status``).

Deployed every 15 minutes, and published again at the end of each maintenance flow (partitions, indexes,
backups) so the page shows what they just changed. The page holds counts, names and paths only: no
personal data, no secrets (the checks' details are those of ``hub status``).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from db import clock
from db import status_page as dbpage
from db.connection import connection
from db.partitions.rollover import partition_stats
from flows import runtime
from flows.reporting import logger
from flows.run_names import run_name
from flows.status import gather
from flows.status_page import PageData, render

KEY = "hub-status"


def page_data(now: datetime | None = None, *, prefect: bool = True) -> PageData:
    hub = runtime.hub()
    report = gather(hub.url, hub.schema, prefect=prefect, now=now, backup_dir=hub.cfg.backup_path)
    with connection(hub.url, hub.schema, autocommit=True) as conn:
        rows = dbpage.partition_rows(conn)
        parts = [{**asdict(p), "quarter": p.quarter.name if p.quarter else None, "rows": rows.get(p.name, 0)}
                 for p in partition_stats(conn)]  # fmt: skip
        return PageData(
            report=report.as_dict(),
            now=report.generated_at,
            freshness=dbpage.entity_freshness(conn),
            partitions=parts,
            archives=dbpage.archives(conn),
            throughput=dbpage.recent_throughput(conn),
        )


def publish(now: datetime | None = None) -> dict[str, Any]:
    """Render the page and store it under ``hub-status`` (a new version of the one artifact)."""
    page = page_data(now)
    create_markdown_artifact(markdown=render(page), key=KEY, description="What `hub status` says, as a page")
    return {"level": page.report["level"], "checks": {c["name"]: c["level"] for c in page.report["checks"]}}


def publish_quietly() -> None:
    """At the end of a maintenance flow: the page follows what the flow changed; a failure only warns.

    Not in Prefect's ephemeral mode: its throwaway server would keep the page for no one."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return
    try:
        publish()
    except Exception as exc:  # noqa: BLE001 - the maintenance itself is done; the page is a report
        logger().warning("could not publish the %s page: %s: %s", KEY, type(exc).__name__, str(exc)[:300])


@flow(name="hub-status", flow_run_name=run_name("hub-status"))
def hub_status() -> dict[str, Any]:
    """Publish the hub's health page (artifact ``hub-status``): every check of ``hub status`` with its
    reason, freshness per entity, partitions and archives, backups, failed snapshots, locks, throughput.

    Completes also when a check fails: the page says so (the run is the messenger, not the problem).
    """
    out = publish(clock.now())
    logger().info("hub-status page published: %s (%s)", out["level"], out["checks"])
    return out
