"""Run the sandbox: in a background thread for tests/benchmarks, or blocking for `hub sandbox`."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from .app import create_app
from .clock import Clock
from .state import SandboxState

TICK_SECONDS = 0.2  # real seconds between job refreshes (moves jobs along and fires webhooks)


class SandboxServer:
    """Sandbox Shoptet API on 127.0.0.1 in a background thread.

    >>> with SandboxServer(orders=500, clock=ManualClock(REFERENCE)) as sb:
    ...     httpx.get(f"{sb.base_url}/api/orders", headers={"Shoptet-Private-API-Token": sb.token})

    `state_kwargs` go to `SandboxState` (tokens, faults, limits, amount_as_number, send_webhooks, ...).
    """

    def __init__(
        self,
        orders: int = 1000,
        seed: int = 42,
        clock: Clock | None = None,
        job_seconds: float = 2.0,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        state: SandboxState | None = None,
        log_level: str = "warning",
        **state_kwargs: Any,
    ) -> None:
        self.state = state or SandboxState(orders, seed, clock, job_seconds, **state_kwargs)
        self.host = host
        self._requested_port = port
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()
        self.port = 0

    @property
    def clock(self) -> Clock:
        return self.state.clock

    @property
    def token(self) -> str:
        return self.state.token

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Shoptet-Private-API-Token": self.token, "Content-Type": "application/json"}

    def start(self, timeout: float = 15.0) -> SandboxServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.state),
            log_level=self._log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="shoptet-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sandbox did not start on {self.base_url}")
            time.sleep(0.01)
        self._ticker = threading.Thread(target=self._tick, name="shoptet-sandbox-ticker", daemon=True)
        self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._stopping.wait(TICK_SECONDS):
            self.state.jobs.refresh()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        self.state.close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_standalone(
    port: int = 8765,
    orders: int = 1000,
    seed: int = 42,
    *,
    host: str = "127.0.0.1",
    job_seconds: float = 2.0,
    scale: float = 1.0,
    token: str | None = None,
    send_webhooks: bool = False,
    print_fn: Callable[[str], None] = print,
    extra_tokens: dict[str, set[str] | None] | None = None,
    oauth_token: str | None = None,
    state_hook: Callable[[SandboxState], None] | None = None,
    serve: bool = True,
    **state_kwargs: Any,
) -> None:
    """Serve the sandbox until interrupted; prints the base URL and the accepted tokens.

    ``extra_tokens``: more private tokens with their endpoint-group rights (None = all);
    ``oauth_token``: the add-on OAuth token accepted by the OAuth server endpoint; other keywords go to
    ``SandboxState`` (faults, limits, access_token_ttl, write_lock_seconds, ...). ``serve=False`` builds
    and prints everything without listening (``state_hook`` sees the state; used by tests).
    """
    from .app import OAUTH_PATH
    from .clock import RealClock

    started = time.monotonic()
    state = SandboxState(orders, seed, RealClock(scale), job_seconds, send_webhooks=send_webhooks, **state_kwargs)
    if token:
        state.tokens = {token: None}
        state.token = token
    state.tokens.update(extra_tokens or {})
    if oauth_token:
        state.oauth_tokens = {oauth_token: None}
        state.oauth_token = oauth_token
    print_fn(f"Shoptet sandbox: {orders} orders (seed {seed}) generated in {time.monotonic() - started:.1f}s")
    print_fn(f"  base URL: http://{host}:{port}   (time scale {scale:g}x)")
    print_fn(f"  token:    {state.token}   (header Shoptet-Private-API-Token)")
    for extra, rights in (extra_tokens or {}).items():
        print_fn(f"  token:    {extra}   (rights: {'all' if rights is None else ','.join(sorted(rights)) or 'none'})")
    print_fn(f"  add-on:   OAuth token {state.oauth_token} at http://{host}:{port}{OAUTH_PATH}")
    if state_hook is not None:
        state_hook(state)
    if not serve:
        state.close()
        return
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(TICK_SECONDS):
            state.jobs.refresh()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn that into SystemExit so the
    # `finally` below still deletes the result files
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(create_app(state), host=host, port=port, log_level="info", access_log=False, lifespan="off")
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        state.close()
