"""What a flow tells its user: the run's logger and table artifacts — also when called outside a run.

A notebook may call a flow's ``.fn`` or a task function directly: there is no run logger and no run to
attach an artifact to, so the module logger stands in and the artifact is skipped.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError

from flows.logs import send_hub_logs_to_api

log = logging.getLogger("flows")
send_hub_logs_to_api()  # every flow module imports this one: their runs' module logs reach the UI


def logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return log


def table_artifact(rows: list[dict[str, Any]], *, key: str, description: str) -> None:
    """A table artifact of the current run (counts only: never personal data or secrets).

    Outside a run it is skipped; a failure to store it is logged, never fails the run.
    """
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    try:
        create_table_artifact(rows, key=key, description=description)
    except Exception as exc:  # noqa: BLE001 - an artifact is a report: the work itself is done
        logger().warning("could not store artifact %s: %s", key, exc)
