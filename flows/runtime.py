"""Where the flows get their database and their Shoptet client.

Both come from the config by default. ``hub demo`` and tests point the flows elsewhere through the
override functions below (module-level, because Prefect runs tasks in worker threads).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from db.connection import ensure_database
from db.embedded import embedded_server_url
from db.migrate import is_up_to_date, upgrade
from flows.config import HubConfig, get_config
from shoptet.client import ShoptetClient

DEFAULT_DATABASE = "shoptet_hub"

_lock = threading.Lock()
_database_url: str | None = None
_client_factory: Callable[[], ShoptetClient] | None = None
_webhook_url: str | None = None
_migrated: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Hub:
    """Where a flow works: the config, the database URL and schema (migrated)."""

    cfg: HubConfig
    url: str
    schema: str


def hub() -> Hub:
    """The hub this process works on, its schema migrated (once per process; a cheap check afterwards).

    Every flow and task starts here instead of repeating the config → URL → migrate block.
    """
    cfg = get_config()
    url = database_url(cfg)
    ensure_schema(url, cfg.db_schema)
    return Hub(cfg, url, cfg.db_schema)


class DatabaseNotConfigured(RuntimeError):
    """A deployment run on a worker that has no ``HUB_DATABASE_URL``."""


def database_url(cfg: HubConfig | None = None) -> str:
    """``HUB_DATABASE_URL``, or the embedded server's ``shoptet_hub`` database (started if needed).

    The embedded default is for one machine (local commands, ``hub demo``, ``hub serve``, which hands
    its worker the URL). A deployment run on a worker without ``HUB_DATABASE_URL`` fails instead: an
    embedded database of its own would be a second, private mirror that nothing else sees.
    """
    cfg = cfg or get_config()
    if _database_url:
        return _database_url
    if cfg.database_url is not None:
        return cfg.database_url.get_secret_value()
    run = deployment_run_id()
    if run is not None:
        raise DatabaseNotConfigured(
            f"HUB_DATABASE_URL is not set on this worker (flow run {run} of a deployment). A deployment run "
            "never starts an embedded database of its own: set HUB_DATABASE_URL in the worker's environment "
            "to the hub's database (the one `hub db url` prints where the hub runs) and restart the worker."
        )
    return ensure_database(embedded_server_url(cfg.home), DEFAULT_DATABASE)


def deployment_run_id() -> str | None:
    """The flow run id when this process runs a deployment's flow run (started by a worker), else None.

    A worker starts each run in a process with ``PREFECT__FLOW_RUN_ID`` set; the run's context names its
    deployment. A flow called from the CLI or a notebook has neither.
    """
    if os.environ.get("PREFECT__FLOW_RUN_ID"):
        return os.environ["PREFECT__FLOW_RUN_ID"]
    if "prefect" not in sys.modules:  # no flow runs without Prefect; do not import it for the check
        return None
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx and ctx.flow_run and ctx.flow_run.deployment_id:
        return str(ctx.flow_run.id)
    return None


def ensure_schema(url: str, schema: str) -> None:
    """Run pending migrations once per process (cheap check afterwards)."""
    with _lock:
        if (url, schema) in _migrated:
            return
        if not is_up_to_date(url, schema):
            upgrade(url, schema)
        _migrated.add((url, schema))


def make_client(cfg: HubConfig | None = None) -> ShoptetClient:
    cfg = cfg or get_config()
    if _client_factory is not None:
        return _client_factory()
    if cfg.shoptet_token is None:
        raise RuntimeError("HUB_SHOPTET_TOKEN is not set: a Shoptet API token is needed to talk to a shop")
    return ShoptetClient(cfg.shoptet_base_url, cfg.shoptet_token.get_secret_value(), token_kind=cfg.shoptet_token_kind)


def webhook_url(cfg: HubConfig | None = None) -> str | None:
    return _webhook_url or (cfg or get_config()).webhook_url


@contextmanager
def override(
    *,
    database_url: str | None = None,
    client_factory: Callable[[], ShoptetClient] | None = None,
    webhook_url: str | None = None,
) -> Iterator[None]:
    """Point the flows at another database and/or Shoptet API for the duration of the block."""
    global _database_url, _client_factory, _webhook_url
    saved = (_database_url, _client_factory, _webhook_url)
    _database_url = database_url or _database_url
    _client_factory = client_factory or _client_factory
    _webhook_url = webhook_url or _webhook_url
    try:
        yield
    finally:
        _database_url, _client_factory, _webhook_url = saved


def current_flow_run_id() -> str | None:
    """The id of the Prefect flow run we are in, if any (recorded with runs and lock holders)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None
