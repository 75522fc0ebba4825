"""Where the hub's logs go: INFO and up of its own loggers to the Prefect API (the run's page in the UI).

Prefect sends only its run loggers (``get_run_logger``) to the API. Most of the hub's work logs on plain
module loggers (``db.…``, ``shoptet.…``, ``flows.…``); inside a flow or task run their records go to the
API too, attached to that run. Outside a run (a notebook, a CLI command before its flow) they do not:
there is no run to attach them to. The terminal is not touched here: what reaches it is decided by the
console handler's level (``PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL``, WARNING in the CLI).
"""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

HUB_LOGGERS = ("db", "shoptet", "flows")


class _InRun(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class HubAPILogHandler(APILogHandler):
    """Prefect's API handler, for records logged inside a run only."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.addFilter(_InRun())


def send_hub_logs_to_api() -> None:
    """Idempotent. A logger given a level by its user keeps it; an unset one logs from INFO."""
    for name in HUB_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        if not any(isinstance(h, HubAPILogHandler) for h in logger.handlers):
            logger.addHandler(HubAPILogHandler())
