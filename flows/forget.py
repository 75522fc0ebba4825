"""Erase one person's personal data (GDPR): take the locks of the tables it writes → erase → report counts.

The e-mail is a ``SecretStr`` parameter: Prefect stores a flow run's parameters and shows them in its
UI, and a secret parameter is stored as ``**********``. Logs and the artifact carry row counts and the
erasure id only, never the e-mail. ``db.forget`` has the what and why; also callable from a notebook:
``forget_person(SecretStr("jana@example.cz"))`` (a plain string is accepted too).
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from db import forget as db_forget
from flows import runtime
from flows.locks import job_lock
from flows.params import LockWait, ShowType
from flows.reporting import logger, table_artifact
from flows.run_names import run_name

# Orders and customers are blanked; customer_metrics (and its queue) loses the e-mail identity.
LOCK_GROUPS = ("orders", "customers", "customer-metrics")


# NO_CACHE: an erasure must run every time it is asked for (and its input is not to be hashed into a key).
@task(name="erase-personal-data", cache_policy=NO_CACHE)
def erase_personal_data(email: SecretStr, dry_run: bool) -> dict[str, Any]:
    hub = runtime.hub()
    return db_forget.forget(hub.url, email.get_secret_value(), schema=hub.schema, dry_run=dry_run).as_dict()


@flow(name="forget-person", flow_run_name=run_name("forget-person"))
def forget_person(
    email: Annotated[SecretStr | str, ShowType], dry_run: bool = False, lock_wait: LockWait = 0
) -> dict[str, Any]:
    """Blank the personal fields of the customers and orders of ``email`` (see ``db.forget``).

    Returns ``rows`` (per table), ``erasure_id`` and ``subject_sha256``. Runs under the orders,
    customers and customer-metrics locks.

    Args:
        email: The person's e-mail address (a secret: never logged).
        dry_run: Only count the rows that would change.
        lock_wait: Seconds to wait for the job lock when another job holds it (0: fail at once, null: wait forever).
    """
    secret = email if isinstance(email, SecretStr) else SecretStr(email)
    db_forget.normalize_email(secret.get_secret_value())  # a typo fails before any lock is taken
    with job_lock(*LOCK_GROUPS, wait=lock_wait):
        out = erase_personal_data(secret, dry_run)
    verb = "would change" if dry_run else "changed"
    erasure = out["erasure_id"] or "(dry run)"
    logger().info(
        "erasure %s: %s %s rows (%s)",
        erasure,
        verb,
        sum(out["rows"].values()),
        ", ".join(f"{t} {n}" for t, n in out["rows"].items()),
    )
    table_artifact(
        [{"table": t, "rows": n} for t, n in out["rows"].items()],
        key="personal-data-erasure",
        description=f"Rows {verb} by erasure {erasure} (counts only, no personal data)",
    )
    return out
