"""Add-on (OAuth partner) authentication: short-lived API access tokens (reference §1).

An add-on installation holds a long-lived *OAuth access token*. With it, the add-on asks the e-shop's
own OAuth server for an *API access token*::

    GET https://<eshop-domain>/action/ApiOAuthServer/getAccessToken
    Authorization: Bearer <OAuth access token>
    -> {"access_token": "...", "expires_in": 1800}      (error: "maximum_tokens_reached")

The API access token goes into ``Shoptet-Access-Token`` and is valid 30 minutes; at most 5 may be valid
per OAuth token at once (OA; DEV-TOK). ``AddonTokenSource`` therefore keeps one access token per
process (``shared_token_source``), fetches a new one ``refresh_margin`` seconds before it expires, and
once more when the API answers ``401 expired-token`` anyway (the client calls ``invalidate``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from shoptet import errors as e
from shoptet.ratelimit import token_fingerprint
from shoptet.tls import tls_context

log = logging.getLogger(__name__)

OAUTH_PATH = "/action/ApiOAuthServer/getAccessToken"
#: Fetch a new access token when the current one has less than this many seconds left.
DEFAULT_REFRESH_MARGIN = 300.0
#: Used when the response has no usable ``expires_in`` (DEV-TOK: 30 minutes).
DEFAULT_LIFETIME = 1800.0


def oauth_url_for(eshop_url: str) -> str:
    """The token endpoint on the e-shop's domain (``https://shop.example`` -> ``.../getAccessToken``)."""
    url = eshop_url.rstrip("/")
    return url if url.endswith(OAUTH_PATH) else url + OAUTH_PATH


class AddonTokenSource:
    """Hands out a valid API access token, refreshing it before it expires; safe across threads."""

    def __init__(
        self,
        oauth_url: str,
        oauth_token: str,
        *,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not oauth_token:
            raise ValueError("the add-on's OAuth access token is empty: set HUB_SHOPTET_OAUTH_TOKEN")
        if not oauth_url.startswith(("https://", "http://")):
            raise ValueError("HUB_SHOPTET_OAUTH_URL must be the e-shop's https:// URL or its token endpoint")
        self.oauth_url = oauth_url_for(oauth_url)
        self.__oauth_token = oauth_token  # never in repr/logs/errors
        #: Names the add-on installation (OAuth token) in lock keys; not reversible.
        self.fingerprint = token_fingerprint(self.oauth_url, oauth_token)
        self.clock = clock
        self.refresh_margin = refresh_margin
        self._http = httpx.Client(timeout=timeout, transport=transport, verify=tls_context(), follow_redirects=False)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.fetches = 0  # observability (and tests): access tokens obtained

    def __repr__(self) -> str:
        return f"AddonTokenSource(oauth_url={self.oauth_url!r}, oauth_token='***')"

    def __reduce__(self) -> Any:
        raise TypeError("AddonTokenSource is not picklable (it holds a secret)")

    def secrets(self) -> tuple[str, ...]:
        """Every secret this source knows, for scrubbing server text."""
        return tuple(s for s in (self.__oauth_token, self._token) if s)

    def token(self) -> str:
        """A token valid for at least ``refresh_margin`` more seconds (fetched if needed)."""
        with self._lock:
            if self._token is None or self.clock() >= self._expires_at - self.refresh_margin:
                self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """The API said ``expired-token`` for ``token``: the next ``token()`` fetches a new one."""
        with self._lock:
            if token == self._token:
                self._token = None

    def close(self) -> None:
        self._http.close()

    def _fetch(self) -> None:
        started = self.clock()
        headers = {"Authorization": f"Bearer {self.__oauth_token}", "Accept": "application/json"}
        try:
            response = self._http.get(self.oauth_url, headers=headers)
        except httpx.HTTPError as exc:
            raise e.TransportError(
                f"getting an API access token failed: {type(exc).__name__}", path=OAUTH_PATH
            ) from None  # the httpx exception may carry request details
        try:
            body = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError:
            body = {}
        body = body if isinstance(body, dict) else {}
        access = body.get("access_token")
        if not response.is_success or not isinstance(access, str) or not access:
            raise self._error(response.status_code, body)
        try:
            lifetime = float(body.get("expires_in") or DEFAULT_LIFETIME)
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME
        self._token = access
        self._expires_at = started + max(lifetime, 1.0)
        self.fetches += 1
        log.info("obtained a Shoptet API access token valid %.0f s", lifetime)

    def _error(self, status: int, body: dict[str, Any]) -> e.ShoptetError:
        code = str(body.get("error") or "") or None
        text = str(body.get("error_description") or body.get("message") or f"HTTP {status}")
        for secret in self.secrets():
            text = e.scrub(text, secret)
        if code == "maximum_tokens_reached":
            return e.AddonTokenLimitError(text, status=status, error_code=code, path=OAUTH_PATH)
        if status in (401, 403) or code in ("invalid_token", "invalid_grant"):
            return e.AddonAuthorizationError(text, status=status, error_code=code, path=OAUTH_PATH)
        if status >= 500 or status == 429:
            return e.ServerError(f"OAuth server: {text}", status=status, error_code=code, path=OAUTH_PATH)
        return e.AddonAuthorizationError(text, status=status, error_code=code, path=OAUTH_PATH)


# Strong references on purpose: the token must outlive the short-lived clients of one task.
_registry: dict[tuple[object, ...], AddonTokenSource] = {}
_registry_lock = threading.Lock()


def shared_token_source(
    oauth_url: str,
    oauth_token: str,
    *,
    clock: Callable[[], float] = time.time,
    refresh_margin: float = DEFAULT_REFRESH_MARGIN,
    transport: httpx.BaseTransport | None = None,
) -> AddonTokenSource:
    """One source per (URL, OAuth token, clock) in the process: flows build a client per task, and every
    fetched access token stays valid 30 min - fetching one per client would exhaust the 5 allowed."""
    digest = hashlib.sha256(oauth_token.encode()).hexdigest()
    key = (oauth_url_for(oauth_url), digest, clock, refresh_margin, transport)
    with _registry_lock:
        source = _registry.get(key)
        if source is None:
            source = AddonTokenSource(
                oauth_url, oauth_token, clock=clock, refresh_margin=refresh_margin, transport=transport
            )
            _registry[key] = source
        return source
