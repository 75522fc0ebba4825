"""The ``job:finished`` webhook that Shoptet requires before it accepts snapshot requests (reference §8).

Shoptet allows one URL per event. A registration that already exists is reused whatever its URL: it
may belong to another integration of the same e-shop, and replacing or deleting it would break that
integration. We register our URL only when there is none.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shoptet import errors as e

if TYPE_CHECKING:
    from shoptet.client import ShoptetClient

log = logging.getLogger(__name__)

JOB_FINISHED = "job:finished"
ALLOWED_PORTS = {80, 443, 8080, 8443}  # DEV-WH
MAX_URL_LENGTH = 2000


def list_webhooks(client: ShoptetClient) -> list[dict[str, Any]]:
    """``GET /api/webhooks`` -> registrations ``{id, event, url, created, updated, sendPayload}``."""
    try:
        data = client.get("/api/webhooks")
    except e.PermissionDeniedError as exc:
        raise _no_rights(exc) from exc
    if isinstance(data, dict):
        data = data.get("webhooks")
    return [w for w in (data or []) if isinstance(w, dict)]


def ensure_job_finished_webhook(client: ShoptetClient, url: str | None) -> dict[str, Any]:
    """Return the ``job:finished`` registration, registering ``url`` only when none exists."""
    existing = _find(list_webhooks(client))
    if existing is not None:
        if url and existing.get("url") != url:
            log.warning(
                "job:finished webhook already registered to host %s (not ours); reusing it",
                urlsplit(str(existing.get("url"))).netloc,
            )
        return existing
    if not url:
        raise e.WebhookNotConfiguredError("no job:finished webhook is registered and no URL was given to register one")
    _validate_url(url)
    try:
        response = client.request("POST", "/api/webhooks", json={"data": [{"event": JOB_FINISHED, "url": url}]})
    except e.PermissionDeniedError as exc:
        raise _no_rights(exc) from exc
    except e.UnprocessableError:
        # Someone registered one between our list and our POST (one URL per event): use theirs.
        existing = _find(list_webhooks(client))
        if existing is None:
            raise
        return existing
    data = response.data if isinstance(response.data, dict) else {}
    created = _find(data.get("webhooks") or []) or {"event": JOB_FINISHED, "url": url}
    log.info("registered job:finished webhook to host %s", urlsplit(url).netloc)
    return created


def _find(webhooks: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((w for w in webhooks if w.get("event") == JOB_FINISHED), None)


def _validate_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL must be an absolute http(s) URL (check HUB_WEBHOOK_URL): {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if port not in ALLOWED_PORTS:
        raise ValueError(f"Shoptet only calls webhooks on ports {sorted(ALLOWED_PORTS)}, not {port}")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"webhook URL longer than {MAX_URL_LENGTH} characters")


def _no_rights(exc: e.ShoptetError) -> e.WebhookPermissionError:
    return e.WebhookPermissionError(
        "the API token may not manage webhooks",
        status=exc.status,
        error_code=exc.error_code,
        instance=exc.instance,
        request_id=exc.request_id,
        path=exc.path,
    )
