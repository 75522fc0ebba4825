"""Flow run names that say what the run does (``backup-2026-12-06``, ``metrics-full``), not ``cuddly-badger``.

Prefect calls a ``flow_run_name`` callable when the run is created, with the run's parameters readable
through ``prefect.runtime``. Names hold no personal data (``forget-person`` never names the e-mail).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePath
from typing import Any

from db import clock


def _parameters() -> dict[str, Any]:
    from prefect.runtime import flow_run

    return dict(flow_run.parameters or {})


def _text(value: Any) -> str:
    value = getattr(value, "value", value)  # an Enum (Entity)
    return PurePath(value).name if isinstance(value, PurePath | str) and "/" in str(value) else str(value)


def run_name(
    base: str,
    *,
    param: str | None = None,
    when: str | None = None,
    flags: tuple[str, ...] = ("dry_run",),
    choice: tuple[str, str, str] | None = None,
) -> Callable[[], str]:
    """``base[-<param>][-<choice>][-<now in format when>][-flag…]``.

    ``choice=(parameter, if true, if false)`` names a mode (``metrics-full`` / ``metrics-incremental``);
    ``flags`` are boolean parameters added when set (``-dry-run``).
    """

    def name() -> str:
        p = _parameters()
        parts = [base]
        if param and p.get(param) is not None:
            parts.append(_text(p[param]))
        if choice:
            parts.append(choice[1] if p.get(choice[0]) else choice[2])
        if when:
            parts.append(clock.now().strftime(when))  # the simulated day in a soak run
        parts += [f.replace("_", "-") for f in flags if p.get(f)]
        return "-".join(parts)

    name.__name__ = f"run_name_{base.replace('-', '_')}"
    return name


DAY = "%Y-%m-%d"
MINUTE = "%Y-%m-%d-%H%M"
