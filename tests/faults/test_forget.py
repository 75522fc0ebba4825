"""`hub forget EMAIL` (issue 8 §4): one person's personal data erased across tables, recorded, and
brought back by a later snapshot only if the shop still holds it."""

from __future__ import annotations

import gzip
import hashlib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest
from prefect.client.orchestration import get_client
from pydantic import SecretStr
from typer.testing import CliRunner

from db import forget as db_forget
from db.connection import libpq_url
from db.forget import ERASED_HASH, PERSONAL_COLUMNS, ForgetError, forget, scrub
from db.loader import ApplyOptions, apply_snapshot_file
from db.metrics.compute import recalculate
from db.runs import start_run
from models.tables import Customer, Order
from shoptet.sandbox.generator import ShopSpec, iter_customers, iter_orders
from tests.integration import conftest as integration

SPEC = ShopSpec.for_orders(240, seed=11)
hub_env = integration.hub_env  # the flow tests' fixture (prefect_harness is in tests/conftest.py)
# Columns that are not about the person: what an erasure keeps (a new column must be put in one list).
KEPT_COLUMNS = {
    "orders": {
        "code",
        "guid",
        "external_code",
        "created_at",
        "changed_at",
        "status_id",
        "status_name",
        "source_name",
        "customer_guid",
        "currency_code",
        "exchange_rate",
        "price_with_vat",
        "price_without_vat",
        "price_vat",
        "price_to_pay",
        "paid",
        "vat_payer",
        "cash_desk_order",
        "billing_method_id",
        "billing_method_name",
        "payment_method_guid",
        "payment_method_name",
        "shipping_guid",
        "shipping_name",
        "billing_country_code",
        "delivery_country_code",
        "content_hash",
        "raw",
        "run_id",
        "synced_at",
    },
    "customers": {
        "guid",
        "created_at",
        "changed_at",
        "customer_group_id",
        "customer_group_name",
        "price_list_id",
        "price_list_name",
        "disabled_orders",
        "billing_country_code",
        "content_hash",
        "raw",
        "run_id",
        "synced_at",
    },
}


KEEP = "code, created_at, changed_at, status_id, price_with_vat, price_without_vat, price_to_pay, customer_guid"


def q(url: str, query: str, *args):
    with psycopg.connect(libpq_url(url)) as c:
        return c.execute(query, args).fetchall()


def write(path: Path, entities: list[dict]) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(orjson.dumps(e) for e in entities) + b"\n")
    return path


def apply(url: str, entity: str, path: Path, **kw) -> dict:
    with psycopg.connect(libpq_url(url), autocommit=True) as c:
        run_id = start_run(c, entity, source="file", full=kw.get("full", False))
    return apply_snapshot_file(url, entity, path, run_id=run_id, options=ApplyOptions(workers=0, **kw)).counters()


@pytest.fixture(scope="module")
def shop() -> dict[str, list[dict]]:
    return {
        "orders": list(iter_orders(SPEC.orders, spec=SPEC, include=("notes",))),
        "customers": list(iter_customers(SPEC.customers, spec=SPEC)),
    }


@pytest.fixture
def loaded(db_url, shop, tmp_path):
    """Orders and customers of one sandbox shop, plus a person with an account and several orders."""
    files = {e: write(tmp_path / f"{e}.jsonl.gz", shop[e]) for e in ("customers", "orders")}
    for e, path in files.items():
        apply(db_url, e, path)
    (email, guid), *_ = q(
        db_url,
        """SELECT o.email, c.guid FROM orders o JOIN customers c ON c.email = o.email
                                      GROUP BY 1, 2 HAVING count(*) >= 2 ORDER BY count(*) DESC, 1""",
    )
    return {"db": db_url, "files": files, "email": email, "guid": guid}


def person_rows(url: str, email: str, guid: str) -> dict[str, list]:
    return {
        "orders": q(
            url, "SELECT * FROM orders WHERE lower(email) = %s OR customer_guid = %s ORDER BY code", email, guid
        ),
        "customers": q(url, "SELECT * FROM customers WHERE guid = %s", guid),
    }


def pii_of(shop: dict, email: str) -> set[str]:
    """The person's e-mail, phones and street names as the shop holds them (to search the database for)."""
    out = {email}
    for c in shop["customers"]:
        for acc in c.get("accounts") or []:
            if (acc.get("email") or "").lower() == email:
                out |= {acc["phone"], c["billingAddress"]["street"], c["billingAddress"]["fullName"]} - {None}
    return out


def occurrences(url: str, needle: str) -> dict[str, int]:
    """Rows of every table in the schema whose text holds ``needle`` (case-insensitive)."""
    with psycopg.connect(libpq_url(url)) as c:
        tables = [
            r[0]
            for r in c.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE 'order_items%'"
            )
        ]
        found = {}
        for t in tables:
            n = c.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {} x WHERE strpos(lower(x::text), %s) > 0").format(
                    psycopg.sql.Identifier(t)
                ),
                (needle.lower(),),
            ).fetchone()[0]
            if n:
                found[t] = n
    return found


# --- without a database -----------------------------------------------------------------------------


@pytest.mark.parametrize("model, table", [(Order, "orders"), (Customer, "customers")])
def test_every_column_is_classified_personal_or_kept(model, table):
    columns = set(model.__table__.columns.keys())
    personal = set(PERSONAL_COLUMNS[table])
    assert not personal & KEPT_COLUMNS[table]
    assert columns == personal | KEPT_COLUMNS[table], "a new column: is it about the person? add it to one list"


def test_scrub_blanks_personal_fields_at_any_depth_and_keeps_the_rest(shop):
    for o in shop["orders"][:50]:
        s = scrub(o)
        text = orjson.dumps(s).decode()
        for value in (o["email"], o["phone"], (o.get("billingAddress") or {}).get("street")):
            if value:
                assert value not in text
        assert (s["code"], s["price"], s["creationTime"], s["items"]) == (
            o["code"],
            o["price"],
            o["creationTime"],
            o["items"],
        )
        assert s["billingAddress"]["countryCode"] == o["billingAddress"]["countryCode"]
    for c in shop["customers"][:50]:
        s = scrub(c)
        assert all(a["email"] is None and a["fullName"] is None for a in s["accounts"])
        assert s["guid"] == c["guid"] and s["remarks"] == []


@pytest.mark.parametrize("bad", ["", "   ", "jana", None])
def test_not_an_email_is_refused(bad):
    with pytest.raises(ForgetError):
        db_forget.normalize_email(bad)


# --- erasure in the database --------------------------------------------------------------------------


@pytest.mark.integration
def test_forget_blanks_personal_data_keeps_amounts_and_records_it(loaded, shop):
    url, email, guid = loaded["db"], loaded["email"], loaded["guid"]
    recalculate(url, full=True)
    assert q(url, "SELECT count(*) FROM customer_metrics WHERE customer_key = %s", email)[0][0] == 1
    before = person_rows(url, email, guid)
    items = q(url, "SELECT count(*), sum(item_price_with_vat) FROM order_items")
    codes = [r[0] for r in before["orders"]]
    kept = q(url, f"SELECT {KEEP} FROM orders WHERE code = ANY(%s) ORDER BY code", codes)
    others = q(url, "SELECT * FROM orders WHERE NOT code = ANY(%s) ORDER BY code", codes)
    dry = forget(url, f"  {email.upper()} ", dry_run=True)
    assert dry.rows["orders"] == len(before["orders"]) and dry.rows["customers"] == 1
    assert dry.rows["customer_metrics"] == 1 and dry.erasure_id is None
    assert person_rows(url, email, guid) == before and q(url, "SELECT count(*) FROM erasures")[0][0] == 0

    done = forget(url, f"  {email.upper()} ")
    assert done.rows == dry.rows
    ((sha, rows),) = q(url, "SELECT subject_sha256, rows FROM erasures")
    assert sha == hashlib.sha256(email.encode()).hexdigest() and rows == dry.rows

    for table in ("orders", "customers"):
        cols = PERSONAL_COLUMNS[table]
        got = q(
            url,
            psycopg.sql.SQL("SELECT {}, content_hash FROM {} WHERE content_hash = %s").format(
                psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, cols)), psycopg.sql.Identifier(table)
            ),
            ERASED_HASH,
        )
        assert len(got) == dry.rows[table] and all(v is None for r in got for v in r[:-1])
    # Amounts, dates, statuses and items are untouched.
    assert q(url, f"SELECT {KEEP} FROM orders WHERE code = ANY(%s) ORDER BY code", codes) == kept
    assert q(url, "SELECT count(*), sum(item_price_with_vat) FROM order_items") == items
    assert q(url, "SELECT * FROM orders WHERE NOT code = ANY(%s) ORDER BY code", codes) == others
    # Nothing of the person is left anywhere: not in raw JSON, metrics, their queue, rejects or the log.
    for needle in pii_of(shop, email) - {None}:
        if needle == email or len(q(url, "SELECT 1 FROM customers WHERE strpos(raw::text, %s) > 0", needle)) == 0:
            assert occurrences(url, needle) == {}, needle
    assert occurrences(url, email) == {}


@pytest.mark.integration
def test_metrics_after_forget_count_the_orders_under_the_customer_guid(loaded):
    url, email, guid = loaded["db"], loaded["email"], loaded["guid"]
    recalculate(url, full=True)
    assert q(url, "SELECT count(*) FROM customer_metrics WHERE customer_key = %s", email) == [(1,)]
    forget(url, email)
    recalculate(url)  # incremental: finds the erased orders by synced_at, under their GUID identity
    incremental = q(url, "SELECT customer_key, orders_count, revenue_with_vat, email FROM customer_metrics ORDER BY 1")
    assert not [r for r in incremental if email in (r[0], r[3])]
    assert guid in [r[0] for r in incremental]  # the account's orders now count under its GUID
    recalculate(url, full=True)
    assert q(url, "SELECT customer_key, orders_count, revenue_with_vat, email FROM customer_metrics ORDER BY 1") == (
        incremental
    )


@pytest.mark.integration
def test_the_same_snapshot_again_leaves_the_erasure(loaded, tmp_path):
    """review M1: a line from before the erasure is no evidence that the shop still holds the person."""
    url, email, guid = loaded["db"], loaded["email"], loaded["guid"]
    before = person_rows(url, email, guid)
    result = forget(url, email)
    erased = person_rows(url, email, guid)
    for entity in ("customers", "orders"):
        r = apply(url, entity, loaded["files"][entity])
        assert (r["updated"], r["skipped_older"], r["rejected"]) == (0, len(before[entity]), 0), r
        r = apply(url, entity, loaded["files"][entity], full=True)  # a full one keeps them (they are in it)
        assert (r["updated"], r["deleted"]) == (0, 0), r
    assert person_rows(url, email, guid) == erased
    assert occurrences(url, email) == {}
    keys = q(url, "SELECT entity, count(*) FROM erased_keys WHERE erasure_id = %s GROUP BY 1 ORDER BY 1",
             result.erasure_id)  # fmt: skip
    assert keys == [("customers", len(before["customers"])), ("orders", len(before["orders"]))]
    # A line changed after the erasure is: the shop changed the order since, so it holds what it sends.
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    code = before["orders"][0][0]
    line = next(o for o in orjson_lines(loaded["files"]["orders"]) if o["code"] == code)
    r = apply(url, "orders", write(tmp_path / "later.jsonl.gz", [{**line, "changeTime": later}]))
    assert r["updated"] == 1
    assert q(url, "SELECT lower(email) FROM orders WHERE code = %s", code) == [(email,)]


def test_a_snapshot_taken_after_the_erasure_that_still_holds_the_person_brings_them_back(loaded):
    """Found by the soak (seed 314159): an erasure for someone the shop still holds. A snapshot requested
    after the erasure is the shop's word that it holds them: written back even with unchanged lines. One
    requested before it (a retried job) is not (review M1)."""
    url, email, guid = loaded["db"], loaded["email"], loaded["guid"]
    before = person_rows(url, email, guid)
    emails = "SELECT code, lower(email) FROM orders WHERE customer_guid = %s ORDER BY code"
    emails_before = q(url, emails, guid)
    forget(url, email)
    (erased_at,) = q(url, "SELECT max(erased_at) FROM erasures")[0]
    for entity in ("customers", "orders"):
        r = apply(url, entity, loaded["files"][entity], as_of=erased_at - timedelta(minutes=15))
        assert r["updated"] == 0, r
    assert occurrences(url, email) == {}
    for entity in ("customers", "orders"):
        r = apply(url, entity, loaded["files"][entity], full=True, as_of=erased_at + timedelta(minutes=1))
        assert (r["updated"], r["deleted"]) == (len(before[entity]), 0), r
    after = person_rows(url, email, guid)
    assert {o[0] for o in after["orders"]} == {o[0] for o in before["orders"]}
    assert q(url, emails, guid) == emails_before and (email in {e for _, e in emails_before})
    assert occurrences(url, email) != {}


def test_the_erasure_is_timed_by_the_hubs_clock(loaded):
    """Found by the soak (seed 271828): erased_at came from the server's now(), the snapshot times from the
    hub's clock; under a simulated clock the shop's own anonymised line was skipped forever."""
    from db import clock

    when = datetime(2022, 3, 19, 0, 2, tzinfo=UTC)
    with clock.simulated(lambda: when):
        result = forget(loaded["db"], loaded["email"])
    assert q(loaded["db"], "SELECT erased_at FROM erasures WHERE id = %s", result.erasure_id) == [(when,)]
    assert {at for (at,) in q(loaded["db"], "SELECT DISTINCT erased_at FROM erased_keys WHERE erasure_id = %s",
                              result.erasure_id)} <= {when}  # fmt: skip


def orjson_lines(path: Path) -> list[dict]:
    with gzip.open(path, "rb") as f:
        return [orjson.loads(x) for x in f.read().splitlines() if x.strip()]


@pytest.mark.integration
def test_a_snapshot_without_the_person_leaves_the_erasure(loaded, shop, tmp_path):
    url, email, guid = loaded["db"], loaded["email"], loaded["guid"]
    forget(url, email)
    erased = q(url, "SELECT code FROM orders WHERE content_hash = %s ORDER BY code", ERASED_HASH)
    # An incremental snapshot of everyone else: the erased rows stay blank.
    rest = [o for o in shop["orders"] if (o["email"] or "").lower() != email and o["customerGuid"] != guid]
    apply(url, "orders", write(tmp_path / "rest.jsonl.gz", rest))
    assert q(url, "SELECT code FROM orders WHERE content_hash = %s ORDER BY code", ERASED_HASH) == erased
    # The shop anonymized the person itself (a newer changeTime, personal fields empty): written as sent.
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    mine = [
        {**scrub(o), "changeTime": later}
        for o in shop["orders"]
        if (o["email"] or "").lower() == email or o["customerGuid"] == guid
    ]
    r = apply(url, "orders", write(tmp_path / "anon.jsonl.gz", mine))
    assert r["updated"] == len(erased)
    assert occurrences(url, email) == {}
    assert q(
        url,
        "SELECT count(*) FROM orders WHERE code = ANY(%s) AND (billing_full_name IS NOT NULL OR email IS NOT NULL)",
        [c for (c,) in erased],
    ) == [(0,)]
    # A full customers snapshot without the account deletes its row.
    others = [c for c in shop["customers"] if c["guid"] != guid]
    apply(url, "customers", write(tmp_path / "cust.jsonl.gz", others), full=True)
    assert q(url, "SELECT count(*) FROM customers WHERE guid = %s", guid) == [(0,)]


@pytest.mark.integration
def test_rejected_lines_lose_the_persons_text(db_url, tmp_path):
    bad = b'{"code":"X1","creationTime":"not a date","email":"Jana.Rejected@Example.cz","phone":"+420600000001"}'
    path = tmp_path / "bad.jsonl"
    path.write_bytes(bad + b"\n")
    apply(db_url, "orders", path, reject_threshold=1.0)
    assert q(db_url, "SELECT count(*) FROM snapshot_rejects WHERE line IS NOT NULL") == [(1,)]
    r = forget(db_url, "jana.rejected@example.cz")
    assert r.rows["snapshot_rejects"] == 1
    assert q(db_url, "SELECT line, reason <> '' FROM snapshot_rejects") == [(None, True)]
    assert occurrences(db_url, "+420600000001") == {}


# --- the flow and the CLI -----------------------------------------------------------------------------


@pytest.mark.integration
def test_cli_forget_and_dry_run_keep_the_email_out_of_prefect_and_logs(loaded, hub_env, prefect_harness, caplog):
    from deployments.cli import app

    email = loaded["email"]
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    dry = runner.invoke(app, ["forget", email, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would change" in dry.output and "nothing was written" in dry.output
    assert q(loaded["db"], "SELECT count(*) FROM erasures") == [(0,)]
    res = runner.invoke(app, ["forget", email.upper()])
    assert res.exit_code == 0, res.output
    assert "erased:" in res.output and "recorded as erasure" in res.output
    assert q(loaded["db"], "SELECT count(*) FROM erasures") == [(1,)]
    again = runner.invoke(app, ["forget", email])
    assert again.exit_code == 0 and "no personal data" in again.output, again.output
    assert runner.invoke(app, ["forget", "not-an-email"]).exit_code == 1

    assert email not in caplog.text.lower()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        stored = orjson.dumps([r.parameters for r in runs]).decode().lower()
        logs = " ".join(x.message for x in client.read_logs()).lower()
        arts = orjson.dumps([a.data for a in client.read_artifacts()], default=str).decode().lower()
    assert [r for r in runs if r.parameters.get("email") == "**********"]
    assert email not in stored and email not in logs and email not in arts


@pytest.mark.integration
def test_flow_takes_the_orders_customers_and_metrics_locks(loaded, hub_env, prefect_harness):
    from flows.forget import LOCK_GROUPS, forget_person
    from flows.locks import LockHeld, job_lock

    assert set(LOCK_GROUPS) == {"orders", "customers", "customer-metrics"}
    for group in LOCK_GROUPS:
        with job_lock(group, url=loaded["db"], schema="public"):
            with pytest.raises(LockHeld):
                forget_person(SecretStr(loaded["email"]))
    assert q(loaded["db"], "SELECT count(*) FROM erasures") == [(0,)]
    out = forget_person(SecretStr(loaded["email"]))
    assert out["rows"]["customers"] == 1 and out["erasure_id"]


@pytest.mark.integration
def test_a_restored_backup_reapplies_the_erasures_recorded_after_it(loaded, tmp_path):
    """review M2: backup, forget, restore: the person stays erased in what was restored."""
    from db.backups import dump, restore, verify
    from db.connection import database_conninfo

    url, email, guid = loaded["db"], loaded["email"], loaded["guid"]
    path, _ = dump.take_backup(url, "public", tmp_path / "backups")
    verify.verify_backup(path)
    result = forget(url, email)
    target = f"hub_forget_restore_{result.erasure_id}_{guid[:8]}".replace("-", "_")
    try:
        out = restore.restore_into(url, path, target)
        restored = database_conninfo(url, target)
        assert out["erasures_reapplied"] == 1
        assert out["erased_rows"]["orders"] == result.rows["orders"] > 0
        assert occurrences(restored, email) == {}
        strip = lambda rows: [r[:-1] for r in rows]  # noqa: E731 - all but synced_at (the re-apply's own time)
        assert {k: strip(v) for k, v in person_rows(restored, email, guid).items()} == {
            k: strip(v) for k, v in person_rows(url, email, guid).items()
        }
        assert q(restored, "SELECT subject_sha256 FROM erasures") == [(result.subject_sha256,)]
        assert q(restored, "SELECT count(*) FROM erased_keys") == q(url, "SELECT count(*) FROM erased_keys")
        # and the restored mirror keeps it erased against the same stale file
        r = apply(restored, "orders", loaded["files"]["orders"])
        assert r["updated"] == 0 and occurrences(restored, email) == {}
    finally:
        with psycopg.connect(database_conninfo(url, "postgres"), autocommit=True) as c:
            c.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(target)))
