"""README's "From a notebook" section runs as written: its python blocks, in order, as notebook cells.

Against a test database and the sandbox as the Shoptet API (configured through HUB_*, as a user would).
The one change to the text: the example URL the configuration block switches to becomes a second test
database, so the test can see that the switch took effect.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from db.connection import libpq_url
from flows.config import reload_config
from shoptet.sandbox.generator import write_snapshot
from shoptet.sandbox.server import SandboxServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## From a notebook"
EXAMPLE_URL = "postgresql://hub:secret@db.example:5432/shop"
FILE_ORDERS = 7


def notebook_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    section = section[: section.find("\n## ", len(SECTION))]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def count(url: str, statement: str):
    with psycopg.connect(libpq_url(url)) as c:
        return c.execute(statement).fetchone()[0]


@pytest.fixture
def notebook_env(make_db, monkeypatch, tmp_path):
    first, second = make_db(), make_db()
    with SandboxServer(orders=40, seed=7, job_seconds=0.2) as sb:
        monkeypatch.setenv("HUB_DATABASE_URL", first)
        monkeypatch.setenv("HUB_SHOPTET_BASE_URL", sb.base_url)
        monkeypatch.setenv("HUB_SHOPTET_TOKEN", sb.token)
        monkeypatch.setenv("HUB_WEBHOOK_URL", "https://hub.example/hook")
        monkeypatch.chdir(tmp_path)
        write_snapshot("orders", FILE_ORDERS, tmp_path / "orders.jsonl.gz", seed=99)
        reload_config()
        try:
            yield first, second
        finally:
            reload_config()


def test_the_blocks_are_there():
    blocks = notebook_blocks()
    assert len(blocks) == 3
    assert "import_snapshot" in blocks[0] and "get_settings_service" in blocks[1] and "reload_config()" in blocks[2]
    assert EXAMPLE_URL in blocks[2]


def test_readme_notebook_section_runs(notebook_env):
    first, second = notebook_env
    cells = notebook_blocks()
    cells[2] = cells[2].replace(EXAMPLE_URL, second)
    namespace: dict = {}
    for cell in cells:
        exec(compile(cell, f"{README.name} ({SECTION})", "exec"), namespace)  # noqa: S102 - the README's code

    # The first cells worked on the first database: the sandbox's orders, the file, metrics, the setting.
    assert count(first, "SELECT count(*) FROM orders") >= 40
    assert count(first, "SELECT count(*) FROM customer_metrics") > 0
    assert count(first, "SELECT value FROM settings WHERE key = 'cancelled_statuses'") == [-4, 7]
    # After os.environ changed and reload_config(): the file went into the second database, and only there.
    assert count(second, "SELECT count(*) FROM orders") == FILE_ORDERS
    assert namespace["get_config"]().reject_threshold == 0.05
