"""Read-only Prefect API for ``hub status`` and ``hub locks``, without importing Prefect.

``import prefect`` costs ~2–2.5 s of CPU on a 2-core machine, most of a status check a monitor runs every
minute. What status reads (the newest runs of a flow, a global concurrency limit) is two REST endpoints,
so when this process knows the server — ``PREFECT_API_URL`` in the environment, which the CLI sets for
``hub serve``'s server and for the ephemeral one it starts — they are read with httpx. Credentials come
from ``PREFECT_API_KEY`` / ``PREFECT_API_AUTH_STRING`` in the environment; a server that refuses them
(401/403: the key may live in a Prefect profile) or a URL known only to Prefect's settings (a profile,
prefect.toml) is read with Prefect's own client instead, which knows every settings source.
"""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx


@dataclass
class LimitStatus:
    name: str
    exists: bool
    active: bool | None = None
    limit: int | None = None
    active_slots: int | None = None

    @property
    def healthy(self) -> bool:
        return self.exists and bool(self.active) and self.limit == 1


@dataclass
class RunInfo:
    """The fields of a Prefect flow run that status reads, whichever way they were read."""

    id: str
    name: str
    state_type: str  # Prefect's StateType value: "COMPLETED", "FAILED", …; "" without a state
    state_message: str
    start_time: datetime | None
    end_time: datetime | None
    total_run_time: timedelta
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunInfo:
        state = d.get("state") or {}
        return cls(
            str(d["id"]),
            d.get("name") or "",
            state.get("type") or "",
            state.get("message") or "",
            _dt(d.get("start_time")),
            _dt(d.get("end_time")),
            timedelta(seconds=float(d.get("total_run_time") or 0)),
            d.get("parameters") or {},
        )

    @classmethod
    def from_client(cls, run: Any) -> RunInfo:  # noqa: ANN401 - prefect.client.schemas.objects.FlowRun
        return cls(
            str(run.id),
            run.name or "",
            run.state.type.value if run.state else "",
            (run.state.message or "") if run.state else "",
            run.start_time,
            run.end_time,
            run.total_run_time,
            run.parameters or {},
        )


def _dt(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None


class _Refused(Exception):
    """The REST path cannot read this server (auth it does not have): use Prefect's client."""


class PrefectReader:
    """``flow_runs`` and ``limit_status`` over REST when the server is known here, else Prefect's client."""

    def __init__(self) -> None:
        self.api = _rest_url()
        self._http: httpx.Client | None = None
        self._fallback = not self.api

    def __enter__(self) -> PrefectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._http is not None:
            self._http.close()

    @property
    def via(self) -> str:
        return "prefect-client" if self._fallback else "rest"

    def flow_runs(self, flow: str, *, deployment_only: bool = False, limit: int = 1) -> list[RunInfo]:
        """The newest runs of ``flow`` that started (newest first)."""
        if not self._fallback:
            runs: dict[str, Any] = {"start_time": {"is_null_": False}}
            if deployment_only:
                runs["deployment_id"] = {"is_null_": False}
            body = {"flows": {"name": {"any_": [flow]}}, "flow_runs": runs, "sort": "START_TIME_DESC", "limit": limit}
            try:
                return [RunInfo.from_json(d) for d in self._request("POST", "/flow_runs/filter", json=body).json()]
            except _Refused:
                self._fallback = True
        return _client_flow_runs(flow, deployment_only, limit)

    def limit_status(self, name: str) -> LimitStatus:
        if not self._fallback:
            try:
                r = self._request("GET", f"/v2/concurrency_limits/{name}", missing_ok=True)
            except _Refused:
                self._fallback = True
            else:
                if r.status_code == 404:
                    return LimitStatus(name, False)
                g = r.json()
                return LimitStatus(name, True, g["active"], g["limit"], g["active_slots"])
        from flows.prefect_slots import limit_status

        return limit_status(name)

    def _request(self, method: str, path: str, *, missing_ok: bool = False, **kw: Any) -> httpx.Response:
        if self._http is None:
            self._http = httpx.Client(base_url=self.api, headers=_headers(), timeout=30, verify=_verify())
        r = self._http.request(method, self.api + path, **kw)
        if r.status_code in (401, 403):
            raise _Refused
        if not (missing_ok and r.status_code == 404):
            r.raise_for_status()
        return r


def _rest_url() -> str:
    """The server to read over REST, or "" for Prefect's client. With Prefect imported already (a test
    harness, a notebook, the soak) its settings are the truth (``temporary_settings`` is not the environment)
    and its client costs no import, so it is used."""
    if "prefect" in sys.modules:
        return ""
    return (os.environ.get("PREFECT_API_URL") or "").rstrip("/")


def _headers() -> dict[str, str]:
    # No X-PREFECT-API-VERSION header: the server checks a client's version only when one is sent, and
    # reading it from Prefect would import Prefect.
    h: dict[str, str] = {}
    if auth := os.environ.get("PREFECT_API_AUTH_STRING"):
        h["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    elif key := os.environ.get("PREFECT_API_KEY"):
        h["Authorization"] = f"Bearer {key}"
    return h


def _verify() -> Any:  # noqa: ANN401 - what httpx takes for verify
    if os.environ.get("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", "").lower() in ("1", "true"):
        return False
    if cert := os.environ.get("PREFECT_API_SSL_CERT_FILE"):
        return httpx.create_ssl_context(verify=cert)
    from shoptet.tls import tls_context

    return tls_context()


def _client_flow_runs(flow: str, deployment_only: bool, limit: int) -> list[RunInfo]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    runs_filter = FlowRunFilter(start_time=FlowRunFilterStartTime(is_null_=False))
    if deployment_only:
        runs_filter.deployment_id = FlowRunFilterDeploymentId(is_null_=False)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
            flow_run_filter=runs_filter,
            sort=FlowRunSort.START_TIME_DESC,
            limit=limit,
        )
    return [RunInfo.from_client(r) for r in runs]
