"""The pull step of every deployment in prefect.yaml: run the flow from the hub's checkout on this worker.

A worker machine needs the hub's code (a checkout of this repository) and its dependencies (``uv sync``
in it, the worker started with ``uv run prefect worker start --pool hub-process``). Prefect's own
``set_working_directory`` step with ``{{ $HUB_CHECKOUT }}`` fails with ``FileNotFoundError: ''`` when
the variable is unset; this step says what is wrong instead and, when ``HUB_CHECKOUT`` is unset, uses
the checkout this package was installed from (``uv sync`` installs it in editable mode), which is what a
worker started from the checkout's environment wants.
"""

from __future__ import annotations

import os
from pathlib import Path

MARKERS = ("prefect.yaml", "flows")


class CheckoutError(RuntimeError):
    """The worker cannot find the hub's code; the message says what to set."""


def installed_checkout() -> Path:
    """The folder this package is imported from (the checkout, for an editable install)."""
    return Path(__file__).resolve().parents[1]


def resolve_checkout(directory: str | os.PathLike[str] | None = None) -> Path:
    """The checkout to run from: ``directory`` (``HUB_CHECKOUT``), else the installed one; checked."""
    given = str(directory or "").strip() or os.environ.get("HUB_CHECKOUT", "").strip()
    where = Path(given).expanduser() if given else installed_checkout()
    source = "HUB_CHECKOUT" if given else f"the checkout the hub is installed from ({where}; HUB_CHECKOUT is unset)"
    if not where.is_dir():
        raise CheckoutError(
            f"{source}={where} is not a folder on this worker: set HUB_CHECKOUT in the worker's environment "
            "to the folder of the hub's checkout (where prefect.yaml is), then restart the worker"
        )
    missing = [m for m in MARKERS if not (where / m).exists()]
    if missing:
        raise CheckoutError(
            f"{source}: {where} is not a checkout of the hub (no {', '.join(missing)} there): set HUB_CHECKOUT "
            "in the worker's environment to the folder of the hub's checkout, then restart the worker"
        )
    return where.resolve()


def use_checkout(directory: str | None = None) -> dict[str, str]:
    """Prefect pull step: check the checkout and run the flow from it (Prefect changes into ``directory``)."""
    return {"directory": str(resolve_checkout(directory))}
