"""Erase one person's personal data (GDPR): take the locks of the tables it writes → erase → report counts.

The e-mail is a ``SecretStr`` parameter: Prefect stores a flow run's parameters and shows them in its
UI, and a secret parameter is stored as ``**********``. Logs and the artifact carry row counts and the
erasure id only, never the e-mail. ``db.forget`` has the what and why; also callable from a notebook:
``forget_person(SecretStr("jana@example.cz"))`` (a plain string is accepted too).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from db import forget as db_forget
from flows import runtime
from flows.config import get_config
from flows.locks import run_locked

log = logging.getLogger(__name__)

# Orders and customers are blanked; customer_metrics (and its queue) loses the e-mail identity.
LOCK_GROUPS = ("orders", "customers", "customer-metrics")


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - called outside a run
        return log


# NO_CACHE: an erasure must run every time it is asked for (and its input is not to be hashed into a key).
@task(name="erase-personal-data", cache_policy=NO_CACHE)
def erase_personal_data(email: SecretStr, dry_run: bool) -> dict[str, Any]:
    cfg = get_config()
    result = db_forget.forget(runtime.database_url(cfg), email.get_secret_value(), schema=cfg.db_schema,
                              dry_run=dry_run)  # fmt: skip
    return result.as_dict()


@flow(name="forget-person")
def forget_person(email: SecretStr | str, dry_run: bool = False, lock_wait: float | None = 0) -> dict[str, Any]:
    """Blank the personal fields of the customers and orders of ``email`` (see ``db.forget``).

    ``dry_run``: only count the rows that would change. Returns ``rows`` (per table), ``erasure_id``
    and ``subject_sha256``. Runs under the orders, customers and customer-metrics locks.
    """
    secret = email if isinstance(email, SecretStr) else SecretStr(email)
    db_forget.normalize_email(secret.get_secret_value())  # a typo fails before any lock is taken
    cfg = get_config()
    url = runtime.database_url(cfg)
    runtime.ensure_schema(url, cfg.db_schema)
    return run_locked(lambda: _forget(secret, dry_run), *LOCK_GROUPS, url=url, schema=cfg.db_schema,
                      wait=lock_wait)  # fmt: skip


def _forget(email: SecretStr, dry_run: bool) -> dict[str, Any]:
    out = erase_personal_data(email, dry_run)
    verb = "would change" if dry_run else "changed"
    _logger().info("erasure %s: %s %s rows (%s)", out["erasure_id"] or "(dry run)", verb, sum(out["rows"].values()),
                   ", ".join(f"{t} {n}" for t, n in out["rows"].items()))  # fmt: skip
    try:
        create_table_artifact(
            [{"table": t, "rows": n} for t, n in out["rows"].items()], key="personal-data-erasure",
            description=f"Rows {verb} by erasure {out['erasure_id'] or '(dry run)'} (counts only, no personal data)",
        )  # fmt: skip
    except Exception:  # noqa: BLE001 - outside a Prefect run (a notebook calling .fn)
        pass
    return out
