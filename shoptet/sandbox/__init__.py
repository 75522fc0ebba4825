"""A faithful local fake of the Shoptet REST API, with a deterministic data generator.

Public API (imported lazily, so using the generator does not import FastAPI/uvicorn):
`SandboxServer`, `run_standalone`, `SandboxState`, `Faults`, `Limits`, `create_app`,
`RealClock`, `ManualClock`, `ShopSpec`, `iter_orders`, `iter_customers`, `iter_products`,
`write_snapshot`, `REFERENCE`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SandboxServer": "server",
    "run_standalone": "server",
    "SandboxState": "state",
    "Faults": "state",
    "Limits": "ratelimit",
    "create_app": "app",
    "RealClock": "clock",
    "ManualClock": "clock",
    "ShopSpec": "generator",
    "iter_orders": "generator",
    "iter_customers": "generator",
    "iter_products": "generator",
    "write_snapshot": "generator",
    "REFERENCE": "formats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
