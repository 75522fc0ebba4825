"""The one configuration object: where and how to connect, paths and secrets (env prefix ``HUB_``).

Business rules an operator changes at runtime (cancelled statuses, segment mapping, thresholds) live in
the ``settings`` table instead; see DESIGN.md.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """Where the embedded database and scratch files live unless ``HUB_HOME`` says otherwise.

    As root, the embedded PostgreSQL wheel runs the server as a ``pgserver`` system user and opens
    read/execute permission on every parent of its data folder. Under ``/var/lib`` those parents are
    already world-readable, so nothing is opened up (``/root`` would be).
    """
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/shoptet-hub")
    return Path(platformdirs.user_data_dir("shoptet-hub", appauthor=False))


class HubConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", env_file=None, extra="ignore")

    # Database: unset → embedded PostgreSQL under HUB_HOME.
    database_url: SecretStr | None = None
    # hub serve's Prefect database (created if missing); unset → `prefect` on the embedded PostgreSQL, never
    # on the server of HUB_DATABASE_URL unless named here (deployments/prefect_server.py).
    prefect_database_url: SecretStr | None = None
    db_schema: str = "public"
    home: Path = Field(default_factory=default_home)

    # Shoptet
    shoptet_base_url: str = "https://api.myshoptet.com"
    shoptet_token: SecretStr | None = None
    # private: a private API token; access: a fixed add-on API access token (expires after 30 min);
    # addon: the add-on flow - HUB_SHOPTET_OAUTH_TOKEN obtains short-lived access tokens, refreshed.
    shoptet_token_kind: str = "private"
    # The add-on installation's OAuth access token, and the e-shop's URL or its token endpoint
    # (https://<eshop-domain>/action/ApiOAuthServer/getAccessToken); reference §1.
    shoptet_oauth_token: SecretStr | None = None
    shoptet_oauth_url: str | None = None
    # Hold Shoptet's 3-connections-per-token cap across processes and machines with advisory locks in
    # the hub's database (off: the cap holds only inside one process).
    shoptet_shared_slots: bool = True
    shoptet_slot_wait_seconds: float = 600.0
    webhook_url: str | None = None
    job_deadline_seconds: float = 3600.0

    # Loader
    keep_raw_json: bool = True
    reject_threshold: float = 0.01
    download_dir: Path | None = None
    min_free_disk_mb: int = 512
    # Snapshot flows delete their own download files older than this (left by a killed run).
    download_sweep_hours: float = 24.0

    # Lease of a job lock's Prefect slot (renewed at 75 %): how long a crashed holder's slot stays taken.
    # Prefect accepts 60 s to 1 day; shorter only for tests of crash recovery.
    lock_lease_seconds: float = Field(600.0, ge=60, le=86400)

    # Nightly backups (default HUB_HOME/backups) and their optional off-machine copy (e.g. a network share).
    backup_dir: Path | None = None
    backup_copy_dir: Path | None = None
    # Where retention writes the pg_dump archives of old order_items quarters (default HUB_HOME/archive).
    archive_dir: Path | None = None

    @field_validator("shoptet_token_kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in ("private", "access", "addon"):
            raise ValueError("HUB_SHOPTET_TOKEN_KIND must be 'private', 'access' or 'addon'")
        return v

    @property
    def uses_addon_oauth(self) -> bool:
        """The add-on flow: an OAuth token obtains (and refreshes) the short-lived API access tokens."""
        return self.shoptet_token_kind == "addon" or (
            self.shoptet_token_kind == "access" and self.shoptet_oauth_token is not None
        )

    @property
    def scratch_dir(self) -> Path:
        return self.download_dir or (self.home / "downloads")

    @property
    def backup_path(self) -> Path:
        return self.backup_dir or (self.home / "backups")

    @property
    def archive_path(self) -> Path:
        return self.archive_dir or (self.home / "archive")


# Values set in code (``reload_config(**values)``); they win over HUB_* environment variables.
_explicit: dict[str, Any] = {}


@lru_cache(maxsize=1)
def get_config() -> HubConfig:
    """The process's config, read once (every flow and task calls this; see ``reload_config``)."""
    return HubConfig(**_explicit)


def reload_config(**values: Any) -> HubConfig:
    """Read the configuration again; every later call of a flow, task or CLI function uses the new one.

    For a notebook: after changing ``os.environ["HUB_…"]``, call ``reload_config()``. Keyword values
    (field names of ``HubConfig``, e.g. ``database_url=…``) are set in code and win over the
    environment until the next ``reload_config`` call, which starts again from the environment.
    """
    global _explicit
    HubConfig(**values)  # validate first: a bad value leaves the current config in place
    _explicit = dict(values)
    get_config.cache_clear()
    return get_config()
