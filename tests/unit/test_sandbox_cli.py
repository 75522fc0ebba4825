"""``hub sandbox`` exposes the sandbox's knobs (rights, webhooks, time scale, failing jobs, limits, ...)."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from deployments.cli import app
from shoptet.sandbox import server


@pytest.fixture
def built(monkeypatch) -> dict[str, Any]:
    """Run the command without listening: capture the SandboxState it builds."""
    seen: dict[str, Any] = {}
    real = server.run_standalone

    def fake(**kw: Any) -> None:
        out = seen.setdefault("out", [])
        real(**kw, serve=False, state_hook=lambda st: seen.update(state=st, kw=kw), print_fn=out.append)

    monkeypatch.setattr(server, "run_standalone", fake)
    return seen


def test_knobs_reach_the_sandbox(built) -> None:
    result = CliRunner().invoke(
        app,
        [
            "sandbox",
            "--orders",
            "20",
            "--token",
            "tok-" + "a" * 36,
            "--rights",
            "ro-" + "b" * 36 + "=orders,system",
            "--rights",
            "none-" + "c" * 35 + "=",
            "--oauth-token",
            "oauth-" + "d" * 34,
            "--access-token-ttl",
            "60",
            "--scale",
            "120",
            "--job-seconds",
            "30",
            "--job-outcome",
            "killed",
            "--webhooks",
            "--error-rate",
            "0.1",
            "--fail-next",
            "2",
            "--storm-429",
            "3",
            "--truncate-gzip",
            "--expire-results",
            "--malformed-line",
            "4",
            "--jobs-unlisted",
            "--no-limits",
            "--retry-after-seconds",
            "--write-lock",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    st = built["state"]
    assert st.tokens == {"tok-" + "a" * 36: None, "ro-" + "b" * 36: {"orders", "system"}, "none-" + "c" * 35: set()}
    assert st.oauth_tokens == {"oauth-" + "d" * 34: None} and st.access_token_ttl == 60
    assert st.clock.scale == 120 and st.job_seconds == 30 and st.send_webhooks
    f = st.faults
    assert (f.job_outcome, f.error_5xx_rate, f.fail_next_n, f.storm_429) == ("killed", 0.1, 2, 3)
    assert f.truncate_gzip and f.expire_results and f.malformed_line_at == 4 and not f.jobs_listed
    assert not st.limits.enabled and st.limits.retry_after_seconds and st.write_lock_seconds == 0
    out = "\n".join(built["out"])
    assert "oauth-" + "d" * 34 in out and "orders,system" in out


def test_bad_knobs_are_refused(built) -> None:
    runner = CliRunner()
    for args in (["--job-outcome", "exploded"], ["--rights", "nogroups"], ["--rights", "t=wrong"], ["--scale", "0"]):
        result = runner.invoke(app, ["sandbox", "--orders", "5", *args])
        assert result.exit_code == 1, args
    assert "state" not in built


def test_never_finishing_jobs_knob() -> None:
    from datetime import timedelta

    from shoptet.sandbox import REFERENCE, ManualClock
    from shoptet.sandbox.state import SandboxState

    clock = ManualClock(REFERENCE)
    st = SandboxState(orders=5, seed=1, clock=clock, job_seconds=10)
    st.faults.job_outcome = "never"
    job = st.jobs.create("/api/orders/snapshot", "orders", frozenset(), [], 10, st.faults.job_outcome)
    clock.advance(timedelta(days=2).total_seconds())
    assert st.jobs.get(job.job_id).status == "running"
    st.close()
