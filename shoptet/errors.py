"""Typed exceptions for the Shoptet API client.

Every class carries a class attribute ``transient``: True when retrying the same call later can
succeed (5xx, 423, 429, transport failures, a corrupt download), False when it cannot without a
change by the user (bad request, missing rights, failed job, expired result). The orchestration
layer reads it to decide retries.

Messages never contain the API token: the client scrubs it from server text (see ``scrub``), and
paths are shown without their query string (queries can carry personal data).
"""

from __future__ import annotations

from typing import Any, ClassVar


class ShoptetError(Exception):
    """Base class: one failed Shoptet call (or snapshot step)."""

    transient: ClassVar[bool] = False
    #: What the user should do; appended to str() when set.
    hint: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        instance: str | None = None,
        request_id: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.instance = instance
        self.request_id = request_id
        self.path = strip_query(path) if path else None

    def __str__(self) -> str:
        head = " ".join(str(p) for p in (self.status, self.error_code) if p is not None)
        text = f"[{head}] {self.message}" if head else self.message
        details = []
        if self.instance and self.instance != "unknown":
            details.append(f"instance={self.instance}")
        if self.path:
            details.append(f"path={self.path}")
        if self.request_id:
            details.append(f"request_id={self.request_id}")
        if details:
            text += f" ({', '.join(details)})"
        if self.hint:
            text += f". {self.hint}"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep keyword attributes when pickled (Prefect may persist task exceptions).
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls: type[ShoptetError], message: str, state: dict[str, Any]) -> ShoptetError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


# --- HTTP status errors -------------------------------------------------------------------------


class InvalidRequestError(ShoptetError):
    """400: validation failed (bad or unknown query parameter, too many codes)."""


class AuthenticationError(ShoptetError):
    """401: token missing, unknown or expired (``missing-access-token``, ``expired-token``)."""

    hint = "Check HUB_SHOPTET_TOKEN and the token kind (private API token vs. add-on access token)"


class AccessTokenExpiredError(AuthenticationError):
    """401 ``expired-token``: an add-on API access token outlived its 30 minutes."""

    hint = (
        "API access tokens of an add-on live 30 minutes: set HUB_SHOPTET_OAUTH_TOKEN and "
        "HUB_SHOPTET_OAUTH_URL so the hub obtains fresh ones (HUB_SHOPTET_TOKEN_KIND=addon)"
    )


class AddonAuthorizationError(AuthenticationError):
    """The e-shop's OAuth server refused the add-on's OAuth access token."""

    hint = "Check HUB_SHOPTET_OAUTH_TOKEN (the add-on installation's OAuth access token) and HUB_SHOPTET_OAUTH_URL"


class AddonTokenLimitError(AuthenticationError):
    """``maximum_tokens_reached``: 5 API access tokens are already valid for this OAuth token."""

    transient = True  # the oldest one expires within 30 minutes
    hint = (
        "At most 5 API access tokens may be valid at once per add-on installation; fewer processes "
        "sharing the OAuth token, or wait for one to expire (30 min)"
    )


class PermissionDeniedError(ShoptetError):
    """403 ``invalid-token-no-rights`` (or any other 403 without a more specific class)."""

    hint = (
        "Grant the token the endpoint-group right for this endpoint in Shoptet admin "
        "(Connections > Private API > token rights)"
    )


class WebhookPermissionError(PermissionDeniedError):
    """403 on /api/webhooks: the token may not list or register webhooks."""

    hint = (
        "Grant the private API token the 'Webhooks' endpoint-group right (read and write) in Shoptet "
        "admin (Connections > Private API); snapshots need a job:finished webhook"
    )


class MissingModuleError(ShoptetError):
    """403 ``missing-module``: an include section needs a module the e-shop has not enabled."""

    hint = "Drop that include section or enable the module in the e-shop"


class WebhookRegistrationRequiredError(ShoptetError):
    """403 ``required-webhook-registration``: snapshots need a registered job:finished webhook."""

    hint = "Register a job:finished webhook first (set HUB_WEBHOOK_URL and run ensure_job_finished_webhook)"


class JobPollLimitError(ShoptetError):
    """403 ``job-detail-try-counter-exceeded-limit``: >10 detail polls of an unfinished job."""

    hint = "Wait for the job via the job list or the job:finished webhook; detail polls are exhausted"


class NotFoundError(ShoptetError):
    """404: unknown endpoint or entity."""


class JobNotFoundError(NotFoundError):
    """404 ``job-not-found``."""


class ConflictError(ShoptetError):
    """409: consistency conflict."""


class PayloadTooLargeError(ShoptetError):
    """413: too many entities in one request."""


class UnprocessableError(ShoptetError):
    """422: unparsable body or schema mismatch (also: webhook already exists for the event)."""


class LockedError(ShoptetError):
    """423: the same write was repeated within ~5 s; retry later."""

    transient = True


class RateLimitedError(ShoptetError):
    """429 that outlasted the client's bounded 429 retries."""

    transient = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(ShoptetError):
    """5xx (500 error, 503 maintenance) after the client's bounded retries."""

    transient = True


class TransportError(ShoptetError):
    """Timeout or connection failure after the client's bounded retries."""

    transient = True


class ConnectionSlotTimeoutError(ShoptetError):
    """No connection slot of the token became free in time (other workers hold all 3)."""

    transient = True
    hint = "Other hub processes hold all 3 connection slots of this token; retry later or run fewer workers"


class ProtocolError(ShoptetError):
    """A response that is not the documented JSON envelope (e.g. an HTML page from a proxy)."""

    transient = True


# --- configuration / snapshot errors ----------------------------------------------------------


class WebhookNotConfiguredError(ShoptetError):
    """No job:finished webhook is registered and no URL was given to register one."""

    hint = "Set HUB_WEBHOOK_URL to a public URL (ports 80, 443, 8080 or 8443) that receives job:finished"


class JobFailedError(ShoptetError):
    """The snapshot job ended as failed, killed or expired; ``log`` holds Shoptet's explanation."""

    def __init__(self, message: str, *, job_id: str, status: str, log: str | None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.job_id = job_id
        self.status = status  # job status here, not an HTTP status
        self.log = log

    def __str__(self) -> str:
        log = f" log: {self.log}" if self.log else ""
        return f"job {self.job_id} {self.status}: {self.message}.{log}"


class JobDeadlineExceededError(ShoptetError):
    """The job did not finish before the caller's deadline (a broken job is only failed after 3 h)."""

    hint = "Request a new snapshot later; Shoptet marks an errored job failed only after 3 h, without webhook"

    def __init__(self, message: str, *, job_id: str, last_status: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.job_id = job_id
        self.last_status = last_status


class ResultExpiredError(ShoptetError):
    """The result file is gone (404/410, validUntil passed, or no resultUrl): request a new snapshot."""

    hint = "Request a new snapshot; result files live 24 h"


class CorruptResultError(ShoptetError):
    """The downloaded file does not decompress to its end (truncated or damaged)."""

    transient = True


class InsufficientDiskSpaceError(ShoptetError):
    """Not enough free space in the download directory."""

    hint = "Free disk space or point the download directory elsewhere"


# --- mapping ------------------------------------------------------------------------------------

_BY_CODE: dict[str, type[ShoptetError]] = {
    "invalid-token-no-rights": PermissionDeniedError,
    "missing-module": MissingModuleError,
    "required-webhook-registration": WebhookRegistrationRequiredError,
    "job-detail-try-counter-exceeded-limit": JobPollLimitError,
    "job-not-found": JobNotFoundError,
    "missing-access-token": AuthenticationError,
    "expired-token": AccessTokenExpiredError,
}

_BY_STATUS: dict[int, type[ShoptetError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableError,
    423: LockedError,
    429: RateLimitedError,
}


def error_class(status: int, error_code: str | None) -> type[ShoptetError]:
    """The exception class for an HTTP status + Shoptet errorCode."""
    by_code = _BY_CODE.get(error_code or "")
    if by_code is not None:
        return by_code
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, ShoptetError)


def strip_query(path: str) -> str:
    """Path without query string or fragment: queries may carry personal data."""
    return path.split("?", 1)[0].split("#", 1)[0]


def scrub(text: str, secret: str | None) -> str:
    """Remove a secret from text a server echoed back (defence in depth)."""
    if secret and secret in text:
        return text.replace(secret, "***")
    return text
