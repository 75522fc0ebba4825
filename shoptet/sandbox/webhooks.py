"""Webhook registrations (reference §8) and the optional signed `job:finished` notification."""

from __future__ import annotations

import hashlib
import hmac
import threading
from dataclasses import dataclass

import httpx

# Shoptet's webhook event code list (OA "Webhook event types")
EVENTS = frozenset(
    {
        "availability:create",
        "availability:delete",
        "availability:update",
        "brand:create",
        "brand:delete",
        "brand:update",
        "category:create",
        "category:delete",
        "category:update",
        "creditNote:create",
        "creditNote:delete",
        "creditNote:update",
        "customer:create",
        "customer:delete",
        "customer:disableOrders",
        "customer:enableOrders",
        "customer:import",
        "customer:update",
        "customerGroup:create",
        "customerGroup:delete",
        "customerGroup:update",
        "deliveryNote:create",
        "deliveryNote:delete",
        "deliveryNote:update",
        "discountCoupon:create",
        "discountCoupon:delete",
        "discountCoupon:update",
        "eshop:billingInformation",
        "eshop:currencies",
        "eshop:design",
        "eshop:mandatoryFields",
        "eshop:projectDomain",
        "eshop:settingsInformation",
        "invoice:create",
        "invoice:delete",
        "invoice:update",
        "job:finished",
        "mailingListEmail:create",
        "mailingListEmail:delete",
        "order:cancel",
        "order:create",
        "order:delete",
        "order:massCreate",
        "order:paid",
        "order:update",
        "orderHistoryRemarks:change",
        "orderStatusesList:change",
        "paymentMethod:change",
        "pricelist:create",
        "pricelist:delete",
        "product:create",
        "product:delete",
        "product:update",
        "productReview:created",
        "productVariant:create",
        "productVariant:delete",
        "productVariant:update",
        "productVariantPrice:update",
        "proformaInvoice:create",
        "proformaInvoice:delete",
        "proformaInvoice:update",
        "projectReview:create",
        "proofPayment:create",
        "proofPayment:delete",
        "proofPayment:update",
        "quantityDiscount:create",
        "quantityDiscount:delete",
        "quantityDiscount:update",
        "salesChannel:create",
        "salesChannel:delete",
        "salesChannel:update",
    }
)


@dataclass
class Webhook:
    id: int
    event: str
    url: str
    created: str
    updated: str | None
    send_payload: str | None

    def to_api(self) -> dict:
        return {
            "id": self.id,
            "event": self.event,
            "url": self.url,
            "created": self.created,
            "updated": self.updated,
            "sendPayload": self.send_payload,
        }


class WebhookExists(Exception):
    pass


class WebhookRegistry:
    """One URL per event, like Shoptet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: dict[int, Webhook] = {}
        self._next_id = 1

    def register_many(self, items: list[tuple[str, str, str | None]], created: str) -> list[Webhook]:
        """All-or-nothing registration of (event, url, sendPayload) items."""
        with self._lock:
            taken = {h.event for h in self._hooks.values()}
            seen: set[str] = set()
            for event, _, _ in items:
                if event in taken or event in seen:
                    raise WebhookExists(event)
                seen.add(event)
            out = []
            for event, url, send_payload in items:
                hook = Webhook(self._next_id, event, url, created, None, send_payload)
                self._hooks[hook.id] = hook
                self._next_id += 1
                out.append(hook)
            return out

    def delete(self, hook_id: int) -> bool:
        with self._lock:
            return self._hooks.pop(hook_id, None) is not None

    def get(self, hook_id: int) -> Webhook | None:
        with self._lock:
            return self._hooks.get(hook_id)

    def list(self) -> list[Webhook]:
        with self._lock:
            return sorted(self._hooks.values(), key=lambda h: h.id)

    def for_event(self, event: str) -> Webhook | None:
        with self._lock:
            return next((h for h in self._hooks.values() if h.event == event), None)

    def clear(self) -> None:
        with self._lock:
            self._hooks.clear()


def sign(body: bytes, key: str) -> str:
    """`Shoptet-Webhook-Signature`: hex HMAC-SHA1 of the raw body."""
    return hmac.new(key.encode(), body, hashlib.sha1).hexdigest()


def deliver_async(url: str, body: bytes, key: str, log: list[dict]) -> threading.Thread:
    """POST the notification from a daemon thread; failures are recorded, never raised."""

    def run() -> None:
        entry: dict = {"url": url, "body": body, "status": None, "error": None}
        try:
            resp = httpx.post(
                url,
                content=body,
                timeout=5.0,
                headers={"Content-Type": "application/json", "Shoptet-Webhook-Signature": sign(body, key)},
            )
            entry["status"] = resp.status_code
        except httpx.HTTPError as exc:
            entry["error"] = repr(exc)
        log.append(entry)

    t = threading.Thread(target=run, name="sandbox-webhook", daemon=True)
    t.start()
    return t
