"""The Shoptet client as the snapshot flows use it: add-on tokens, cross-process slots, poll counts.

``shoptet/`` knows nothing about the database or Prefect; what needs them is built here and injected:

* ``make_client``: ``runtime.make_client`` (or its test override), except that with the add-on flow
  (``HUB_SHOPTET_TOKEN_KIND=addon``, or ``access`` plus ``HUB_SHOPTET_OAUTH_TOKEN``) the client gets a
  process-wide ``AddonTokenSource`` that obtains and refreshes the 30-minute API access tokens; and
  with ``HUB_SHOPTET_SHARED_SLOTS`` (default on) every API call holds one of the token's 3 connection
  slots as a PostgreSQL advisory lock (``db.api_slots``), so the cap holds across processes and machines.
* ``RunPollCounter``: the job's detail polls, persisted in ``snapshot_runs.job_detail_polls`` and
  summed over every run that waited for the job, so task retries and the retry flow share one budget.
"""

from __future__ import annotations

from db.api_slots import shared_slots
from db.connection import connection
from db.runs import add_job_detail_poll, job_detail_polls
from flows import runtime
from flows.config import HubConfig, get_config
from shoptet.client import ShoptetClient
from shoptet.oauth import shared_token_source


def make_client(cfg: HubConfig | None = None, database_url: str | None = None) -> ShoptetClient:
    cfg = cfg or get_config()
    if cfg.uses_addon_oauth and runtime._client_factory is None:
        client = _addon_client(cfg)
    else:
        client = runtime.make_client(cfg)
    if cfg.shoptet_shared_slots and client.slot_provider is None:
        url = database_url or runtime.database_url(cfg)
        client.use_slot_provider(shared_slots(url, max_wait=cfg.shoptet_slot_wait_seconds))
    return client


def _addon_client(cfg: HubConfig) -> ShoptetClient:
    if cfg.shoptet_oauth_token is None or not cfg.shoptet_oauth_url:
        raise RuntimeError(
            "the add-on flow needs HUB_SHOPTET_OAUTH_TOKEN (the installation's OAuth access token) and "
            "HUB_SHOPTET_OAUTH_URL (https://<eshop-domain>/action/ApiOAuthServer/getAccessToken)"
        )
    source = shared_token_source(cfg.shoptet_oauth_url, cfg.shoptet_oauth_token.get_secret_value())
    return ShoptetClient(cfg.shoptet_base_url, token_source=source)


class RunPollCounter:
    """``shoptet.snapshots.DetailPollCounter`` kept in the database (one short connection per call)."""

    def __init__(self, url: str, schema: str, run_id: int, job_id: str) -> None:
        self.url, self.schema, self.run_id, self.job_id = url, schema, run_id, job_id

    def used(self) -> int:
        with connection(self.url, self.schema) as conn:
            return job_detail_polls(conn, self.job_id)

    def add(self) -> None:
        with connection(self.url, self.schema) as conn:
            add_job_detail_poll(conn, self.run_id)
