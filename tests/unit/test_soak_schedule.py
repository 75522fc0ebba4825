"""The soak's cadence comes from prefect.yaml: which deployment fires when, coalesced as documented."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.soak.schedule import fires_between, load

SUNDAY = datetime(2024, 3, 31, 6, tzinfo=UTC)  # a Sunday; the next day starts a quarter


def _at(fires) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in fires:
        out.setdefault(f.name, []).append(f"{f.at:%d %H:%M}")
    return out


def test_one_day_of_the_schedule_with_the_frequent_jobs_in_the_job_hours() -> None:
    fires = fires_between(load(), SUNDAY, SUNDAY + timedelta(days=1), every=12)
    at = _at(fires)
    assert at["fetch-new-orders"] == ["31 11:02", "31 23:02"]  # first cron fire of each job hour
    assert at["customer-metrics"] == ["31 11:40", "31 23:40"]
    assert at["orders-full-snapshot"] == ["01 01:25"] and at["nightly-backup"] == ["01 02:00"]
    assert at["partition-maintenance"] == ["01 03:00"]  # the quarter's first day (Monday)
    assert "backup-test-restore" not in at  # Sundays at 05:00: before this day's 06:00 start
    assert [f.at for f in fires] == sorted(f.at for f in fires)
    assert "forget-person" not in at  # ad-hoc deployments have no schedule


def test_stride_mode_fires_each_deployment_once_at_its_last_time_in_the_span() -> None:
    fires = fires_between(load(), SUNDAY, SUNDAY + timedelta(days=10), every=12, last_only=True)
    at = _at(fires)
    assert all(len(v) == 1 for v in at.values())
    assert at["backup-test-restore"] == ["07 05:00"] and at["nightly-backup"] == ["10 02:00"]
    assert at["fetch-new-orders"] == ["09 23:02"]  # the span ends on the 10th at 06:00
