"""`hub forget EMAIL`: erase one person's personal data from the mirror (the GDPR erasure path).

What is erased, in one transaction:

- ``customers`` whose e-mail (the main account's column, or any account in the raw JSON) matches,
  case- and space-insensitively, and ``orders`` with that e-mail or placed under one of those customer
  accounts: every personal column (:data:`PERSONAL_COLUMNS`: names, e-mails, phones, street, house
  number, city, ZIP, company, company and VAT ids) becomes NULL, and the same fields inside the raw
  JSON (:data:`PERSONAL_JSON_KEYS`, at any depth: accounts, addresses, notes, remarks, IP address,
  birth date, tracking) become null. What is not about the person stays: keys, amounts, dates,
  statuses, methods, items, country code (VAT reporting needs it), the customer GUID (a pseudonymous
  key the shop assigned; the customer row it points to is blanked too).
- ``customer_metrics``: the identity keyed by the e-mail is deleted (its key *is* the e-mail), an
  e-mail shown on another identity is blanked, and the change queue entries the update triggers
  wrote for it are dropped. The erased orders get ``synced_at = now()``, so the next incremental
  metrics run counts them under their remaining identity (the customer GUID), as a full run would.
- ``snapshot_rejects``: a rejected line holding the e-mail loses its text (the reason stays).
- ``erasures``: one row with the sha256 of the normalized e-mail and the rows changed per table.

- ``erased_keys``: the order codes and customer GUIDs blanked, with the erasure's ``erased_at``
  (:mod:`db.erasures`).

**Erasures stay erased.** A line for an erased key is written again only when its ``changeTime`` is
after the erasure: the shop changed that order or account since, so it holds what it sends. A line
from before (a retried job requested before the erasure, a reused result, an old export given to
`hub import-file`) is skipped (``skipped_older``), whatever the snapshot's age. Erased rows also get
the content hash :data:`ERASED_HASH`, which no line can have (a real one is 64 hex digits). A full
snapshot that no longer holds them deletes the rows; the erased keys stay recorded.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from db import clock
from db.connection import connect
from db.erasures import record_keys
from db.locks import guard_write

log = logging.getLogger(__name__)

ERASED_HASH = "erased"  # content_hash of an erased row: never equal to a line's sha256

_ADDRESS = ("company", "full_name", "street", "house_number", "city", "zip", "company_id", "vat_id")
PERSONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "orders": (
        "email",
        "phone",
        *(f"billing_{c}" for c in _ADDRESS),
        *(f"delivery_{c}" for c in _ADDRESS if c not in ("company_id", "vat_id")),
    ),
    "customers": ("email", "full_name", "phone", *(f"billing_{c}" for c in _ADDRESS)),
}
# Keys whose values are about the person wherever they appear in an order or customer line.
PERSONAL_JSON_KEYS = frozenset(
    {
        "email",
        "phone",
        "fullName",
        "firstName",
        "lastName",
        "company",
        "street",
        "houseNumber",
        "city",
        "district",
        "additional",
        "zip",
        "zipCode",
        "companyId",
        "vatId",
        "taxId",
        "birthDate",
        "clientIPAddress",
        "remark",
        "remarks",
        "customerRemark",
        "eshopRemark",
        "note",
        "additionalFields",
        "trackingNumber",
        "trackingUrl",
        "place",
        "latitude",
        "longitude",
        "onlinePaymentLink",
    }
)
# Inside these objects every text is about the person (a pickup point named after their town, …).
_PERSONAL_OBJECT_KEYS = {"shippingDetails": frozenset({"name"})}


class ForgetError(ValueError):
    """The request cannot be carried out as given (e.g. not an e-mail address)."""


def normalize_email(email: str) -> str:
    e = (email or "").strip().lower()
    if "@" not in e or len(e) < 3:
        raise ForgetError("give the person's e-mail address (e.g. jana.novakova@example.cz)")
    return e


def subject_sha256(email: str) -> str:
    """How ``erasures`` names the person: the sha256 of the normalized e-mail, never the e-mail."""
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()


def scrub(value: Any, parent: str | None = None) -> Any:
    """The JSON value with every personal field set to null (lists of remarks emptied)."""
    if isinstance(value, dict):
        extra = _PERSONAL_OBJECT_KEYS.get(parent or "", frozenset())
        out = {}
        for k, v in value.items():
            if k in PERSONAL_JSON_KEYS or k in extra:
                out[k] = [] if isinstance(v, list) else None
            else:
                out[k] = scrub(v, k)
        return out
    if isinstance(value, list):
        return [scrub(v, parent) for v in value]
    return value


def scrub_raw(text: str | None) -> str | None:
    """Raw JSON text scrubbed; text that does not parse cannot be checked, so it is dropped (NULL)."""
    if text is None:
        return None
    try:
        return orjson.dumps(scrub(orjson.loads(text))).decode()
    except orjson.JSONDecodeError:
        return None


@dataclass
class ForgetResult:
    subject_sha256: str
    rows: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    erasure_id: int | None = None

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject_sha256": self.subject_sha256,
            "rows": dict(self.rows),
            "dry_run": self.dry_run,
            "erasure_id": self.erasure_id,
        }


_CUSTOMER_MATCH = """
    lower(btrim(c.email)) = %(e)s
    OR EXISTS (SELECT 1 FROM json_array_elements(
                 CASE WHEN json_typeof(c.raw -> 'accounts') = 'array' THEN c.raw -> 'accounts' END) a
               WHERE lower(btrim(a ->> 'email')) = %(e)s)"""
# metrics_customer_key(email, customer_guid) is lower(btrim(email)) when there is one: its index finds
# the orders; an e-mail is never a GUID (it has an @), so the GUID branch cannot match by accident.
_ORDER_MATCH = """
    metrics_customer_key(o.email, o.customer_guid) = %(e)s
    OR (o.customer_guid IS NOT NULL AND o.customer_guid = ANY(%(guids)s))"""


def forget(url: str, email: str, *, schema: str = "public", dry_run: bool = False) -> ForgetResult:
    """Erase the person's personal data (see the module docstring); ``dry_run`` only counts the rows."""
    e = normalize_email(email)
    result = ForgetResult(hashlib.sha256(e.encode()).hexdigest(), dry_run=dry_run)
    conn = connect(url, schema)
    try:
        with conn.transaction():
            if not dry_run:
                guard_write(conn)
            result.rows, keys = _erase(conn, e, dry_run)
            if not dry_run:
                # The hub's now (db.clock), not the server's: the loader compares it with snapshot times.
                result.erasure_id, erased_at = conn.execute(
                    """INSERT INTO erasures (subject_sha256, rows, erased_at) VALUES (%s, %s, %s)
                       RETURNING id, erased_at""",
                    (result.subject_sha256, Jsonb(result.rows), clock.now()),
                ).fetchone()
                record_keys(conn, result.erasure_id, erased_at, keys)
    finally:
        conn.close()
    log.info(
        "erasure %s: %s rows %s",
        result.erasure_id or "(dry run)",
        "would change" if dry_run else "changed",
        result.rows,
    )
    return result


def _erase(conn: psycopg.Connection, e: str, dry_run: bool) -> tuple[dict[str, int], dict[str, list[str]]]:
    lock = sql.SQL("" if dry_run else " FOR UPDATE")
    customers = conn.execute(
        sql.SQL("SELECT c.guid, c.raw::text FROM customers c WHERE {}{}").format(sql.SQL(_CUSTOMER_MATCH), lock),
        {"e": e},
    ).fetchall()
    guids = [g for g, _ in customers]
    orders = conn.execute(
        sql.SQL("SELECT o.code, o.raw::text FROM orders o WHERE {}{}").format(sql.SQL(_ORDER_MATCH), lock),
        {"e": e, "guids": guids},
    ).fetchall()
    metrics = conn.execute(
        "SELECT count(*) FROM customer_metrics WHERE customer_key = %(e)s OR lower(btrim(email)) = %(e)s", {"e": e}
    ).fetchone()[0]
    rejects = conn.execute("SELECT count(*) FROM snapshot_rejects WHERE strpos(lower(line), %s) > 0", (e,)).fetchone()[
        0
    ]
    rows = {
        "customers": len(customers),
        "orders": len(orders),
        "customer_metrics": metrics,
        "snapshot_rejects": rejects,
    }
    keys = {"customers": guids, "orders": [code for code, _ in orders]}
    if dry_run:
        return rows, keys
    _blank(conn, "customers", "guid", customers)
    _blank(conn, "orders", "code", orders)
    # The e-mail identity: its key is the e-mail. Its queue entries (written by the orders triggers just
    # now) would only ask the next run to delete it, which is done here.
    conn.execute("DELETE FROM customer_metrics WHERE customer_key = %s", (e,))
    conn.execute("UPDATE customer_metrics SET email = NULL WHERE lower(btrim(email)) = %s", (e,))
    conn.execute("DELETE FROM customer_metrics_queue WHERE customer_key = %s", (e,))
    conn.execute("UPDATE snapshot_rejects SET line = NULL WHERE strpos(lower(line), %s) > 0", (e,))
    return rows, keys


def blank_rows(conn: psycopg.Connection, table: str, key: str, keys: list[str]) -> int:
    """Blank the personal columns and JSON of the rows with these keys (a restore re-applying erasures)."""
    rows = conn.execute(
        sql.SQL("SELECT {k}, raw::text FROM {t} WHERE {k} = ANY(%s) FOR UPDATE").format(
            k=sql.Identifier(key), t=sql.Identifier(table)
        ),
        (keys,),
    ).fetchall()
    _blank(conn, table, key, rows)
    return len(rows)


def _blank(conn: psycopg.Connection, table: str, key: str, rows: list[tuple[str, str | None]]) -> None:
    if not rows:
        return
    ident = sql.Identifier
    sets = sql.SQL(", ").join(sql.SQL("{} = NULL").format(ident(c)) for c in PERSONAL_COLUMNS[table])
    conn.execute(
        sql.SQL(
            """UPDATE {t} x SET {sets}, raw = u.raw::json, content_hash = %s, synced_at = now()
                 FROM unnest(%s::text[], %s::text[]) AS u(key, raw) WHERE x.{k} = u.key"""
        ).format(t=ident(table), sets=sets, k=ident(key)),
        (ERASED_HASH, [k for k, _ in rows], [scrub_raw(r) for _, r in rows]),
    )
