"""``hub sandbox``: the fake Shoptet API with its knobs, so an operator can rehearse failures from the CLI."""

from __future__ import annotations

import typer

from deployments.options import fail

GROUPS = ("orders", "customers", "products", "webhooks", "system")
OUTCOMES = ("completed", "failed", "killed", "expired", "never")


def _rights(values: list[str]) -> dict[str, set[str] | None]:
    """``TOKEN=orders,webhooks`` (``TOKEN=all`` for every group; ``TOKEN=`` for none)."""
    out: dict[str, set[str] | None] = {}
    for value in values:
        token, sep, groups = value.partition("=")
        if not sep or not token:
            fail(f"--rights {value!r}: expected TOKEN=GROUP[,GROUP...] (groups: {', '.join(GROUPS)}, all)")
        names = {g.strip() for g in groups.split(",") if g.strip()}
        unknown = names - set(GROUPS) - {"all"}
        if unknown:
            fail(f"--rights: unknown group(s) {', '.join(sorted(unknown))}; known: {', '.join(GROUPS)}, all")
        out[token] = None if "all" in names else names
    return out


def sandbox_cmd(
    port: int = typer.Option(8765, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    orders: int = typer.Option(1000, help="How many orders the fake shop holds."),
    seed: int = typer.Option(42, help="Data generator seed (same seed, same shop)."),
    token: str | None = typer.Option(None, help="Accept this private API token (default: a random one)."),
    rights: list[str] = typer.Option(
        [],
        "--rights",
        metavar="TOKEN=GROUPS",
        help="Extra token with endpoint-group rights, e.g. ro-token=orders,system (groups: orders, customers, "
        "products, webhooks, system, all). Repeatable.",
    ),
    oauth_token: str | None = typer.Option(
        None, help="Accept this add-on OAuth token at /action/ApiOAuthServer/getAccessToken (default: random)."
    ),
    access_token_ttl: float = typer.Option(1800.0, help="Lifetime of add-on API access tokens, in sandbox seconds."),
    scale: float = typer.Option(1.0, help="Time scale: sandbox seconds per real second (jobs, bucket, expiry)."),
    job_seconds: float = typer.Option(2.0, help="How long a snapshot job runs, in sandbox seconds."),
    job_outcome: str = typer.Option(
        "completed", help=f"Outcome of new snapshot jobs: {', '.join(OUTCOMES)} ('failed' only after 3 h)."
    ),
    webhooks: bool = typer.Option(False, "--webhooks/--no-webhooks", help="POST signed job:finished webhooks."),
    error_rate: float = typer.Option(0.0, help="Fraction of API requests answered 500/503."),
    fail_next: int = typer.Option(0, help="Answer the next N API requests with 503."),
    storm_429: int = typer.Option(0, "--storm-429", help="Answer the next N API requests with 429 + Retry-After."),
    slow: float = typer.Option(0.0, help="Real seconds added to every API request."),
    truncate_gzip: bool = typer.Option(False, help="Serve result files cut in half."),
    expire_results: bool = typer.Option(False, help="Answer result downloads 410 as if expired."),
    malformed_line: int | None = typer.Option(None, help="Replace this 1-based line of new result files by bad JSON."),
    jobs_unlisted: bool = typer.Option(False, help="The job list hides unfinished jobs (list lag)."),
    limits: bool = typer.Option(True, "--limits/--no-limits", help="Enforce the bucket and the 3-connection cap."),
    retry_after_seconds: bool = typer.Option(False, help="Send Retry-After as seconds instead of an HTTP-date."),
    write_lock: float = typer.Option(5.0, help="423 for an identical write repeated within N seconds (0: off)."),
    amount_as_number: bool = typer.Option(False, help="Emit item amounts as JSON numbers (seen live)."),
    live: bool = typer.Option(
        False, "--live/--no-live", help="The shop keeps living: orders, changes, deletes each (scaled) hour."
    ),
    life_scale: float = typer.Option(0.01, help="With --live: life rates x this (1 = ~1 800 orders a day)."),
) -> None:
    """Run the sandbox Shoptet API standalone with its fault knobs (prints the tokens it accepts)."""
    from shoptet.sandbox.jobs import OUTCOMES as JOB_OUTCOMES
    from shoptet.sandbox.ratelimit import Limits
    from shoptet.sandbox.server import run_standalone
    from shoptet.sandbox.state import Faults

    if job_outcome not in JOB_OUTCOMES:
        fail(f"--job-outcome must be one of {', '.join(sorted(JOB_OUTCOMES))}")
    if scale <= 0:
        fail("--scale must be positive")
    if not 0.0 <= error_rate <= 1.0:
        fail("--error-rate must be between 0 and 1")
    faults = Faults(
        error_5xx_rate=error_rate,
        fail_next_n=fail_next,
        storm_429=storm_429,
        slow_seconds=slow,
        job_outcome=job_outcome,
        truncate_gzip=truncate_gzip,
        malformed_line_at=malformed_line,
        expire_results=expire_results,
        jobs_listed=not jobs_unlisted,
    )
    run_standalone(
        port=port,
        orders=orders,
        seed=seed,
        host=host,
        job_seconds=job_seconds,
        scale=scale,
        token=token,
        send_webhooks=webhooks,
        extra_tokens=_rights(rights),
        oauth_token=oauth_token,
        faults=faults,
        limits=Limits(enabled=limits, retry_after_seconds=retry_after_seconds),
        access_token_ttl=access_token_ttl,
        write_lock_seconds=write_lock,
        amount_as_number=amount_as_number,
        **({"state_hook": _start_life(seed, life_scale)} if live else {}),
    )


def _start_life(seed: int, scale: float):  # noqa: ANN202 - a state hook
    """The shop-life model on the sandbox's own (scaled real) clock, in a daemon thread."""
    import threading

    from shoptet.sandbox.life import ShopLife

    def hook(state) -> None:  # noqa: ANN001 - SandboxState
        life = ShopLife(state.store, state.clock, seed=seed, scale=scale)
        life.start_live(threading.Event())
        print(f"  live:     the shop lives (life scale {scale:g}): orders arrive, change and go each hour")

    return hook
