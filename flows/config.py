"""The one configuration object: where and how to connect, paths and secrets (env prefix ``HUB_``).

Business rules an operator changes at runtime (cancelled statuses, segment mapping, thresholds) live in
the ``settings`` table instead; see DESIGN.md.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

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
    db_schema: str = "public"
    home: Path = Field(default_factory=default_home)

    # Shoptet
    shoptet_base_url: str = "https://api.myshoptet.com"
    shoptet_token: SecretStr | None = None
    shoptet_token_kind: str = "private"  # private | access
    webhook_url: str | None = None
    job_deadline_seconds: float = 3600.0

    # Loader
    keep_raw_json: bool = True
    batch_rows: int = 20_000
    reject_threshold: float = 0.01
    download_dir: Path | None = None
    min_free_disk_mb: int = 512

    backup_dir: Path | None = None

    @field_validator("shoptet_token_kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in ("private", "access"):
            raise ValueError("HUB_SHOPTET_TOKEN_KIND must be 'private' or 'access'")
        return v

    @property
    def scratch_dir(self) -> Path:
        return self.download_dir or (self.home / "downloads")


@lru_cache(maxsize=1)
def get_config() -> HubConfig:
    return HubConfig()
