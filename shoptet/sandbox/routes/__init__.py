"""The sandbox's routes, one ``APIRouter`` per resource; ``create_app`` includes ``ROUTERS`` in order.

Each handler takes the running sandbox as ``state: StateDep`` (``common.get_state`` reads
``request.app.state.sandbox``). Shared pieces - the envelope, ``ok``, ``includes``, ``changes`` - are in
``common``; queueing a snapshot job and downloading its result are in ``snapshots``.
"""

from __future__ import annotations

from fastapi import APIRouter

from . import customers, oauth, orders, products, snapshots, system, webhooks

ROUTERS: tuple[APIRouter, ...] = (
    oauth.router,
    orders.router,
    customers.router,
    products.router,
    webhooks.router,
    system.router,
    snapshots.router,
)
