"""The short soak: 120 simulated days of a small living shop, every fault kind at least once, checked daily.

The long run is ``benchmarks/soak.py`` (docs/reliability.md has its figures). Slow: one CI leg only.
"""

from __future__ import annotations

import pytest

from tests.soak.driver import soak, soak_server
from tests.soak.faults import KINDS
from tests.soak.world import ShopSize

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.soak, pytest.mark.timeout(900)]

SEED = 7
DAYS = 120
STRIDE = 20  # one schedule day per 20 simulated days: 6 checked spans, each with up to 8 faults


@pytest.fixture(scope="module")
def harness():
    """A Prefect server of its own, with a patient start: on a loaded 2-core machine it took over 60 s."""
    with soak_server(startup_timeout=300):
        yield


def test_a_small_shop_lives_120_days_with_every_fault_and_the_mirror_stays_equal(db_url, harness, tmp_path):
    size = ShopSize(orders=800, customers=250, products=30, history_years=2.2, scale=0.003)
    report = soak(db_url, tmp_path, days=DAYS, seed=SEED, size=size, stride=STRIDE, fault_rate=1.0, per_day=8)
    print("\n".join(report.lines()))
    assert report.days >= DAYS
    assert report.divergences == []
    assert {k.name for k in KINDS} <= set(report.faults), (
        f"kinds never injected: {set(report.faults) ^ {k.name for k in KINDS}}"
    )
    assert report.rows_compared > 0
