"""Everything a running sandbox holds: data, tokens, jobs, webhooks, limits and fault knobs.

All of it is live-mutable from tests (`state.faults.fail_next_n = 2`, `state.store.update_order(...)`).
"""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import orjson

from .clock import Clock, RealClock
from .formats import PRAGUE, fmt_dt
from .generator import ShopSpec
from .jobs import Job, JobManager, ResultFaults
from .ratelimit import Limits, RateLimiter
from .store import EntityStore
from .vocab import ESHOP_ID
from .webhooks import WebhookRegistry, deliver_async


@dataclass
class PathFault:
    """A fault for the next ``count`` requests whose path starts with ``prefix`` (API or result files).

    ``after=True`` runs the handler first and loses only its answer (the job IS queued, the webhook IS
    registered) - what a proxy timeout or a 5xx after the backend committed looks like. ``delay`` is
    real seconds before answering: longer than the client's timeout, it is a timeout.
    """

    prefix: str
    count: int = 1
    status: int = 503  # 0: answer normally (only the delay)
    after: bool = False
    delay: float = 0.0
    method: str | None = None  # None: any method
    retry_after: str | None = None  # Retry-After header value for a 429 (seconds or HTTP-date)
    exact: bool = False  # match the path exactly (e.g. the job list, not a job's detail)
    skip: int = 0  # let this many matching requests through first


@dataclass
class Faults:
    """Fault knobs; change them at any time."""

    error_5xx_rate: float = 0.0  # fraction of API requests answered 500/503 (seeded RNG)
    fail_next_n: int = 0  # the next N API requests get 503
    storm_429: int = 0  # the next N API requests get 429 + Retry-After
    slow_seconds: float = 0.0  # real seconds of delay added to each API request
    job_outcome: str = "completed"  # outcome of jobs created from now on: completed|failed|killed|expired
    truncate_gzip: bool = False  # result downloads return only the first half of the file
    malformed_line_at: int | None = None  # 1-based line replaced by invalid JSON in new result files
    expire_results: bool = False  # result downloads answer 410 as if expired
    path_faults: list[PathFault] = field(default_factory=list)  # targeted faults, see PathFault
    jobs_listed: bool = True  # False: GET /api/system/jobs does not show unfinished jobs (list lag)


def shop_reference(clock: Clock) -> datetime:
    """Anchor generated data at the Prague midnight of the clock's today (stable within a day)."""
    local = clock.now().astimezone(PRAGUE)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


class SandboxState:
    def __init__(
        self,
        orders: int = 1000,
        seed: int = 42,
        clock: Clock | None = None,
        job_seconds: float = 2.0,
        *,
        spec: ShopSpec | None = None,
        reference: datetime | None = None,
        tokens: dict[str, set[str] | None] | None = None,
        faults: Faults | None = None,
        limits: Limits | None = None,
        amount_as_number: bool = False,
        send_webhooks: bool = False,
        results_dir: Path | None = None,
        base_url: str | None = None,
        oauth_tokens: dict[str, set[str] | None] | None = None,
        access_token_ttl: float = 1800.0,
        write_lock_seconds: float = 5.0,
    ) -> None:
        self.clock: Clock = clock or RealClock()
        if spec is None:
            spec = ShopSpec.for_orders(orders, seed, reference=reference or shop_reference(self.clock))
        self.spec = spec
        self.store = EntityStore(spec, self.clock)
        self.faults = faults or Faults()
        self.rate = RateLimiter(self.clock, limits or Limits())
        self.token = f"sandbox-{secrets.token_hex(16)}"  # 40 chars, alnum + '-', like a private token
        # token -> endpoint-group rights (None = all); groups: orders customers products webhooks system
        self.tokens: dict[str, set[str] | None] = {self.token: None} if tokens is None else dict(tokens)
        self.job_seconds = job_seconds
        # Add-on installations: OAuth access token -> rights; each obtains short-lived API access tokens
        # from /action/ApiOAuthServer/getAccessToken (reference §1), valid access_token_ttl seconds.
        self.oauth_token = f"oauth-{secrets.token_hex(20)}"
        self.oauth_tokens: dict[str, set[str] | None] = (
            {self.oauth_token: None} if oauth_tokens is None else dict(oauth_tokens)
        )
        self.access_token_ttl = access_token_ttl
        self.max_access_tokens = 5  # valid API access tokens per OAuth token (OA; DEV-TOK)
        self.access_tokens: dict[str, tuple[str, float]] = {}  # access token -> (OAuth token, expires at)
        self.access_tokens_issued = 0
        # 423: an identical write (token, method, path, body) repeated within this many seconds (§11.13)
        self.write_lock_seconds = write_lock_seconds
        self._writes: dict[tuple[str, str, str, str], float] = {}
        self.amount_as_number = amount_as_number
        self.send_webhooks = send_webhooks
        self.base_url = base_url  # overrides the request host in resultUrl, if set
        self.eshop_id = ESHOP_ID
        self.signature_key = secrets.token_hex(16)
        self.webhooks = WebhookRegistry()
        self.webhook_deliveries: list[dict] = []
        self.rng = random.Random(f"{spec.seed}/faults")
        self._lock = threading.Lock()
        self.jobs = JobManager(
            self.clock,
            random.Random(f"{spec.seed}/jobs"),
            self._result_faults,
            self._job_finished,
            results_dir,
        )

    @property
    def limits(self) -> Limits:
        return self.rate.limits

    @limits.setter
    def limits(self, value: Limits) -> None:
        self.rate.limits = value

    def _result_faults(self) -> ResultFaults:
        return ResultFaults(self.faults.malformed_line_at, self.amount_as_number)

    def _job_finished(self, job: Job) -> None:
        hook = self.webhooks.for_event("job:finished")
        if not (self.send_webhooks and hook):
            return
        body = orjson.dumps(
            {
                "eshopId": self.eshop_id,
                "event": "job:finished",
                "eventCreated": fmt_dt(self.clock.time()),
                "eventInstance": job.job_id,
            }
        )
        deliver_async(hook.url, body, self.signature_key, self.webhook_deliveries)

    def take_fault(self) -> int | None:
        """Status code of an injected failure for this request, or None. Counters are consumed here."""
        f = self.faults
        with self._lock:
            if f.storm_429 > 0:
                f.storm_429 -= 1
                return 429
            if f.fail_next_n > 0:
                f.fail_next_n -= 1
                return 503
            if f.error_5xx_rate > 0 and self.rng.random() < f.error_5xx_rate:
                return 500 if self.rng.random() < 0.5 else 503
        return None

    def take_path_fault(self, method: str, path: str) -> PathFault | None:
        """The first matching targeted fault (one use consumed), or None."""
        with self._lock:
            for rule in self.faults.path_faults:
                hit = path == rule.prefix if rule.exact else path.startswith(rule.prefix)
                if rule.count > 0 and hit and rule.method in (None, method):
                    if rule.skip > 0:
                        rule.skip -= 1
                        return None
                    rule.count -= 1
                    return replace(rule)
        return None

    def issue_access_token(self, oauth_token: str) -> tuple[str, float] | None:
        """A new API access token for the installation, or None when 5 are already valid."""
        now = self.clock.time()
        with self._lock:
            live = [t for t, (o, exp) in self.access_tokens.items() if o == oauth_token and exp > now]
            if len(live) >= self.max_access_tokens:
                return None
            token = f"access-{secrets.token_hex(20)}"
            self.access_tokens[token] = (oauth_token, now + self.access_token_ttl)
            self.access_tokens_issued += 1
            return token, self.access_token_ttl

    def write_locked(self, token: str, method: str, path: str, body: bytes) -> bool:
        """True when the same write came within ``write_lock_seconds`` (then 423); records it otherwise."""
        if self.write_lock_seconds <= 0:
            return False
        key = (token, method, path, hashlib.sha256(body).hexdigest())
        now = self.clock.time()
        with self._lock:
            last = self._writes.get(key)
            if last is not None and now - last < self.write_lock_seconds:
                return True
            self._writes[key] = now
            return False

    def reset_write_locks(self) -> None:
        with self._lock:
            self._writes.clear()

    def request_id(self) -> str:
        """uuid7-shaped id like Shoptet's `metadata.requestId`."""
        ms = int(self.clock.time() * 1000)
        h = f"{ms & (2**48 - 1):012x}{secrets.token_hex(10)}"
        return f"{h[:8]}-{h[8:12]}-7{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"

    def close(self) -> None:
        self.jobs.close()
