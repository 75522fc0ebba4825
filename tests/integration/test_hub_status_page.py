"""The hub's health page: artifact `hub-status` holds what `hub status` says, with tables and bar charts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from db.connection import libpq_url
from db.partitions import rollover as partitions
from db.partitions.plan import runway
from db.partitions.rollover import Quarter
from flows.config import get_config
from flows.entities import Entity
from flows.hub_status import KEY, hub_status
from flows.snapshot import import_file
from flows.status_page import PageData, bars, render
from tests.factories import order, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


def _pages() -> list[str]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[KEY])), sort=ArtifactSort.CREATED_DESC
        )
    return [a.data for a in found]


@pytest.fixture
def hub(hub_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HUB_BACKUP_DIR", str(tmp_path / "backups"))
    get_config.cache_clear()
    with psycopg.connect(libpq_url(hub_env), autocommit=True) as c:
        partitions.ensure_partitions(c, runway(datetime.now(UTC), 2))
    import_file(Entity.orders, write_jsonl(tmp_path / "o.gz", [order(str(i)) for i in range(1, 40)]), full=True)
    return hub_env


def test_the_page_says_what_hub_status_says(hub):
    before = len(_pages())
    out = hub_status()
    pages = _pages()
    assert len(pages) == before + 1
    page = pages[0]
    assert page.startswith(f"# Hub health: {dict(ok='ok', warn='**WARN**', fail='**FAIL**')[out['level']]}\n")
    for check in ("runs", "failed_snapshots", "partition_runway", "settings_cache", "locks", "backups"):
        assert f"| {check} | " in page
    assert "no verified backup yet" in page  # the backups check's reason, as `hub status` gives it
    freshness = page.split("## Freshness of each entity")[1].split("##")[0]
    assert "| orders | " in freshness and "min ago" in freshness
    parts = page.split("## Partitions of order_items")[1].split("## ")[0]
    assert f"| {Quarter.of(datetime.now(UTC)).name} | " in parts and "Rows per quarter" in parts
    # 39 orders of 3 items each, in their quarter: counted from the statistics, no ANALYZE ran.
    assert "| order_items_2026_q3 | 117 | " in parts, parts
    throughput = page.split("## Apply throughput of the last 1 run ")[1].split("## ")[0]
    assert "orders file full" in throughput and "/s" in throughput and "█" in throughput
    assert "## Backups" in page and "## Open failed snapshots" in page and "None open." in page
    locks = page.split("## Locks")[1]
    assert "orders" in locks and "free" in locks


def test_a_maintenance_flow_publishes_the_page_when_it_ends(hub):
    from flows.indexes import ensure_indexes

    before = len(_pages())
    ensure_indexes()
    assert len(_pages()) == before + 1
    ensure_indexes(dry_run=True)  # a dry run changed nothing: no new page
    assert len(_pages()) == before + 1


def test_render_archives_bars_and_escaping():
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    report = {"level": "warn", "instance": "abc", "exit_code": 1, "checks": [
        {"name": "runs", "level": "warn", "detail": "a | b", "data": {}},
        {"name": "backups", "level": "ok", "detail": "fine", "data": {"backups": 2,
         "newest_verified": (now - timedelta(hours=3)).isoformat(), "newest_restore_tested": None}},
    ]}  # fmt: skip
    page = render(PageData(
        report=report, now=now,
        partitions=[{"name": "order_items_2026q4", "quarter": "2026q4", "rows": 1000, "bytes": 2048},
                    {"name": "order_items_2026q3", "quarter": "2026q3", "rows": 500, "bytes": 1024}],
        archives=[{"partition": "order_items_2023q1", "rows": 77, "path": "/srv/archive/q1.dump",
                   "dropped_at": now, "restored_at": None}],
    ))  # fmt: skip
    assert page.startswith("# Hub health: **WARN**")
    assert "| runs | **WARN** | a \\| b |" in page  # a pipe in a reason does not break the table
    assert "| order_items_2023q1 (dropped) | 77 | — | /srv/archive/q1.dump |" in page
    assert "| order_items_2026q4 | 1,000 | 2.0 kB | — |" in page
    assert "newest verified" in page and "3.0 h ago" in page and "never" in page
    assert page.index("order_items_2023q1") < page.index("order_items_2026q4")  # by quarter, dropped ones too
    assert "## Apply throughput (lines per second)\n\nNo finished run yet." in page
    chart = bars([("a", 100), ("b", 50), ("c", 0)])
    assert chart[0] == "```text" and chart[1].count("█") == 40 and chart[2].count("█") == 20 and "█" not in chart[3]
