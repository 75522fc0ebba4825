"""The entities the hub mirrors (no Prefect import: the CLI reads this before configuring Prefect)."""

from __future__ import annotations

from enum import Enum


class Entity(str, Enum):
    orders = "orders"
    customers = "customers"
    products = "products"
