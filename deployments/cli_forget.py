"""``hub forget EMAIL [--dry-run]``: erase one person's personal data from the mirror (GDPR erasure)."""

from __future__ import annotations

import typer
from rich.console import Console

from deployments.options import fail, quiet_prefect

EX_TEMPFAIL = 75  # sysexits.h "try again later", as for the other jobs' locks

console = Console(stderr=True, soft_wrap=True)  # messages are not cut at 80 columns (a log file)


def forget(
    email: str = typer.Argument(..., help="The person's e-mail address (case and spaces do not matter)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say how many rows would change."),
    wait: float = typer.Option(
        0.0,
        "--wait",
        metavar="SECONDS",
        help="Wait up to SECONDS for the orders/customers/metrics locks; without it a held lock exits with code 75.",
    ),
) -> None:
    """Erase a person's personal data: blank names, e-mails, phones, addresses in customers and orders
    (amounts and dates stay) and record it in `erasures`. A later snapshot restores it only if the shop
    still holds it: erase it in Shoptet too."""
    quiet_prefect()
    from pydantic import SecretStr

    from db.forget import ForgetError
    from flows.forget import forget_person
    from flows.locks import LockHeld

    try:
        out = forget_person(SecretStr(email), dry_run=dry_run, lock_wait=wait)
    except ForgetError as exc:
        fail(str(exc))
    except LockHeld as exc:
        fail(str(exc), exc.exit_code)
    rows = out["rows"]
    detail = ", ".join(f"{t}: {n}" for t, n in rows.items())
    total = sum(rows.values())
    if dry_run:
        print(f"dry run: would change {total} rows ({detail}); nothing was written")
    elif total == 0:
        print(f"no personal data of that e-mail in the mirror; recorded as erasure {out['erasure_id']}")
    else:
        print(
            f"erased: {total} rows changed ({detail}); recorded as erasure {out['erasure_id']} "
            f"(subject sha256 {out['subject_sha256'][:12]}…)"
        )
        console.print(
            "The next snapshot brings the data back if the shop still holds it: erase the person in Shoptet too."
        )
