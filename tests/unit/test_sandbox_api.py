"""Synchronous endpoints of the sandbox: auth, envelope, paging, shapes, filters, changes feed."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from shoptet.sandbox.clock import ManualClock
from shoptet.sandbox.formats import REFERENCE, parse_dt
from shoptet.sandbox.server import SandboxServer

LIMITED = "limited-token-0123456789-abcdefghijklmnop"


@pytest.fixture(scope="module")
def sb():
    clock = ManualClock(REFERENCE)
    with SandboxServer(orders=600, seed=11, clock=clock) as server:
        server.state.tokens[LIMITED] = {"orders"}
        yield server


@pytest.fixture(autouse=True)
def _reset(sb):
    yield
    sb.state.faults.__init__()
    sb.state.limits.__init__()
    sb.state.rate.reset()
    sb.state.reset_write_locks()
    sb.state.amount_as_number = False


@pytest.fixture
def api(sb):
    with httpx.Client(base_url=sb.base_url, headers=sb.headers) as client:
        yield client


def err(resp: httpx.Response) -> dict:
    body = resp.json()
    assert body["data"] is None and len(body["errors"]) == 1
    return body["errors"][0]


# ---------------------------------------------------------------- auth, envelope, headers


def test_missing_token_is_401_envelope(sb):
    r = httpx.get(f"{sb.base_url}/api/orders")
    assert r.status_code == 401
    assert err(r)["errorCode"] == "missing-access-token"
    assert r.headers["X-Request-ID"] == r.json()["metadata"]["requestId"]


def test_unknown_tokens(sb):
    r = httpx.get(f"{sb.base_url}/api/orders", headers={"Shoptet-Private-API-Token": "nope"})
    assert r.status_code == 401 and err(r)["errorCode"] == "invalid-token"
    r = httpx.get(f"{sb.base_url}/api/orders", headers={"Shoptet-Access-Token": "nope"})
    assert r.status_code == 401 and err(r)["errorCode"] == "expired-token"


def test_header_names_case_insensitive_and_both_modes(sb):
    for name in ("shoptet-private-api-token", "SHOPTET-PRIVATE-API-TOKEN", "Shoptet-Access-Token"):
        r = httpx.get(f"{sb.base_url}/api/orders", headers={name: sb.token})
        assert r.status_code == 200, name


def test_token_rights(sb):
    h = {"Shoptet-Private-API-Token": LIMITED}
    assert httpx.get(f"{sb.base_url}/api/orders", headers=h).status_code == 200
    r = httpx.get(f"{sb.base_url}/api/webhooks", headers=h)
    assert r.status_code == 403
    e = err(r)
    assert e["errorCode"] == "invalid-token-no-rights" and e["instance"] == "access-token"


@pytest.mark.parametrize("ctype", ["application/json", "application/vnd.shoptet.v1.0"])
def test_envelope_and_content_types(sb, ctype):
    r = httpx.get(f"{sb.base_url}/api/orders", headers={"Shoptet-Private-API-Token": sb.token, "Content-Type": ctype})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    body = r.json()
    assert set(body) == {"data", "errors", "metadata"}
    assert body["errors"] is None
    assert body["metadata"]["requestId"] == r.headers["X-Request-ID"]
    assert r.headers["X-RateLimit-Bucket-Filling"].endswith("/200")


def test_unknown_endpoint_is_404_envelope(api):
    r = api.get("/api/nothing-here")
    assert r.status_code == 404 and err(r)["errorCode"] == "not-found"


# ---------------------------------------------------------------- paging and params


@pytest.mark.parametrize(
    "path,default,maximum",
    [
        ("/api/orders", 50, 50),
        ("/api/customers", 20, 1000),
        ("/api/products", 20, 1000),
        ("/api/system/jobs", 100, 500),
    ],
)
def test_paging_defaults_and_caps(api, path, default, maximum):
    assert api.get(path).json()["data"]["paginator"]["itemsPerPage"] == default
    pag = api.get(path, params={"itemsPerPage": 5000}).json()["data"]["paginator"]
    assert pag["itemsPerPage"] == maximum  # clamped, as OA "Paging" says


@pytest.mark.parametrize(
    "entity,default,maximum", [("orders", 20, 1000), ("customers", 20, 20), ("products", 1000, 1000)]
)
def test_changes_paging(api, entity, default, maximum):
    params = {"from": "2026-09-01T00:00:00+0200"}
    assert api.get(f"/api/{entity}/changes", params=params).json()["data"]["paginator"]["itemsPerPage"] == default
    pag = api.get(f"/api/{entity}/changes", params={**params, "itemsPerPage": 99999}).json()["data"]["paginator"]
    assert pag["itemsPerPage"] == maximum


def test_paginator_walk(api, sb):
    seen = []
    page = 1
    while True:
        data = api.get("/api/orders", params={"page": page}).json()["data"]
        pag = data["paginator"]
        assert set(pag) == {"totalCount", "page", "pageCount", "itemsOnPage", "itemsPerPage"}
        assert pag["itemsOnPage"] == len(data["orders"])
        seen += [o["code"] for o in data["orders"]]
        if page >= pag["pageCount"]:
            break
        page += 1
    assert len(seen) == len(set(seen)) == pag["totalCount"] == sb.state.store.count("orders")
    beyond = api.get("/api/orders", params={"page": page + 1}).json()["data"]
    assert beyond["orders"] == [] and beyond["paginator"]["itemsOnPage"] == 0
    assert api.get("/api/orders", params={"page": 0}).status_code == 400


def test_unknown_query_parameter_is_400(api):
    r = api.get("/api/orders", params={"externalCode": "x"})
    assert r.status_code == 400
    e = err(r)
    assert e["errorCode"] == "invalid-parameter" and "Unsupported query parameters" in e["message"]
    assert api.get("/api/orders", params={"include": "notes"}).status_code == 400  # list has no include
    assert api.get("/api/orders", params={"language": "cs"}).status_code == 200


def test_date_filters_inclusive_and_plus_must_be_encoded(api, sb):
    order = sb.state.store.get_order(sb.state.store.keys("orders")[300])
    t = order["creationTime"]
    data = api.get("/api/orders", params={"creationTimeFrom": t, "creationTimeTo": t}).json()["data"]
    assert order["code"] in [o["code"] for o in data["orders"]]
    raw = t.replace("+", "%2B")
    assert api.get(f"/api/orders?creationTimeFrom={raw}").status_code == 200
    bad = api.get(f"/api/orders?creationTimeFrom={t}")  # literal '+' decodes to a space
    assert bad.status_code == 400 and err(bad)["instance"] == "creationTimeFrom"


def test_order_filters(api, sb):
    data = api.get("/api/orders", params={"statusId": -4}).json()["data"]
    assert data["orders"] and all(o["status"]["id"] == -4 for o in data["orders"])
    codes = sb.state.store.keys("orders")[:3]
    data = api.get("/api/orders", params={"orderCodes": ",".join(codes), "statusId": 999}).json()["data"]
    assert [o["code"] for o in data["orders"]] == codes  # orderCodes disables the other filters
    r = api.get("/api/orders", params={"orderCodes": ",".join(str(i) for i in range(51))})
    assert r.status_code == 400 and err(r)["errorCode"] == "invalid-parameter"


# ---------------------------------------------------------------- list vs detail


def test_order_list_vs_detail(api, sb):
    listed = api.get("/api/orders", params={"itemsPerPage": 5}).json()["data"]["orders"][0]
    assert "items" not in listed and "externalCode" not in listed
    assert {
        "code",
        "guid",
        "fullName",
        "company",
        "email",
        "remark",
        "customerGuid",
        "status",
        "price",
        "paid",
        "adminUrl",
    } <= listed.keys()
    r = api.get(f"/api/orders/{listed['code']}")
    order = r.json()["data"]["order"]
    assert order["code"] == listed["code"] and "items" in order and "externalCode" in order
    assert "notes" not in order
    with_notes = api.get(f"/api/orders/{listed['code']}", params={"include": "NOTES,images"}).json()
    order = with_notes["data"]["order"]
    assert "notes" in order and all("mainImage" in it for it in order["items"])
    assert api.get(f"/api/orders/{listed['code']}", params={"include": "bogus"}).status_code == 400
    r = api.get("/api/orders/0000000001")
    assert r.status_code == 404 and err(r)["errorCode"] == "order-not-found"


def test_amount_as_number_knob(api, sb):
    code = sb.state.store.keys("orders")[10]
    sb.state.amount_as_number = True
    order = api.get(f"/api/orders/{code}").json()["data"]["order"]
    assert all(isinstance(it["amount"], float) for it in order["items"])
    assert all(isinstance(it["itemPrice"]["withVat"], str) for it in order["items"])  # money stays string


def test_customer_list_vs_detail(api):
    listed = api.get("/api/customers").json()["data"]["customers"][0]
    assert set(listed) == {"guid", "creationTime", "changeTime", "billCompany", "billFullName", "adminUrl"}
    customer = api.get(f"/api/customers/{listed['guid']}").json()["data"]["customer"]
    assert customer["guid"] == listed["guid"] and "accounts" in customer and "email" not in customer
    r = api.get("/api/customers/00000000-0000-1000-8000-000000000000")
    assert r.status_code == 404 and err(r)["errorCode"] == "customer-not-found"


def test_product_list_vs_detail(api):
    listed = api.get("/api/products").json()["data"]["products"][0]
    assert "variants" not in listed
    detail = api.get(f"/api/products/{listed['guid']}").json()["data"]
    assert detail["guid"] == listed["guid"] and detail["variants"]  # unwrapped
    assert "images" not in detail
    assert "images" in api.get(f"/api/products/{listed['guid']}", params={"include": "images"}).json()["data"]
    r = api.get(f"/api/products/{listed['guid']}", params={"include": "consumptionTax"})
    assert r.status_code == 403 and err(r)["errorCode"] == "missing-module"
    r = api.get("/api/products/00000000-0000-1000-8000-000000000000")
    assert r.status_code == 404 and err(r)["errorCode"] == "product-not-found"


# ---------------------------------------------------------------- changes feed


def test_changes_requires_from(api):
    r = api.get("/api/orders/changes")
    assert r.status_code == 400 and err(r) == {
        "errorCode": "missing-parameter",
        "message": 'Missing value for parameter "from".',
        "instance": "from",
    }


def _changes(api, entity, since, **params):
    out, page = [], 1
    while True:
        data = api.get(f"/api/{entity}/changes", params={"from": since, "page": page, **params}).json()["data"]
        out += data["changes"]
        if page >= data["paginator"]["pageCount"]:
            return out
        page += 1


def test_changes_feed_after_mutations(api, sb):
    store, clock = sb.state.store, sb.clock
    clock.advance(3600)
    since = (clock.now() - timedelta(seconds=1)).isoformat()
    codes = store.keys("orders")
    store.update_order(codes[1], paid=True)
    store.update_order(codes[2], paid=True)
    clock.advance(60)
    store.delete_order(codes[2])  # last change wins: only the delete remains
    new = store.add_order()  # creations are reported as edit
    changes = {c["code"]: c for c in _changes(api, "orders", since)}
    assert set(changes) == {codes[1], codes[2], new["code"]}
    assert changes[codes[1]]["changeType"] == "edit"
    assert changes[codes[2]]["changeType"] == "delete"
    assert changes[new["code"]]["changeType"] == "edit"
    assert parse_dt(changes[codes[1]]["changeTime"]) == int(clock.time()) - 60
    only_deletes = _changes(api, "orders", since, changeType="delete")
    assert [c["code"] for c in only_deletes] == [codes[2]]
    assert api.get(f"/api/orders/{codes[2]}").status_code == 404
    assert api.get(f"/api/orders/{new['code']}").json()["data"]["order"]["code"] == new["code"]

    guid = store.keys("customers")[0]
    store.update_customer(guid, remark="VIP")
    cust = _changes(api, "customers", since)
    assert {"guid": guid, "changeType": "edit"}.items() <= next(c for c in cust if c["guid"] == guid).items()
    pguid = store.keys("products")[0]
    store.delete_product(pguid)
    assert any(c["guid"] == pguid and c["changeType"] == "delete" for c in _changes(api, "products", since))

    # the change log only keeps 30 days
    clock.advance(31 * 86400)
    assert _changes(api, "orders", since) == []


def test_cancel_order_helper(sb):
    code = sb.state.store.keys("orders")[20]
    order = sb.state.store.cancel_order(code)
    assert order["status"] == {"id": -4, "name": "Stornována"}
    assert order["price"]["toPay"] == "0.00"
    assert any(it["itemPrice"]["withVat"] != "0.00" for it in order["items"])


def test_store_adds_customers_and_products(api, sb):
    store = sb.state.store
    customer = store.add_customer(remark="new")
    product = store.add_product()
    assert api.get(f"/api/customers/{customer['guid']}").json()["data"]["customer"]["remark"] == "new"
    code = product["variants"][0]["code"]
    listed = api.get("/api/products", params={"productCodes": code}).json()["data"]["products"]
    assert [p["guid"] for p in listed] == [product["guid"]]
    store.update_product(product["guid"], visibility="hidden")
    hidden = api.get("/api/products", params={"visibility": "hidden", "itemsPerPage": 1000}).json()["data"]
    assert product["guid"] in [p["guid"] for p in hidden["products"]]
    since = customer["creationTime"]
    assert any(c["guid"] == customer["guid"] for c in _changes(api, "customers", since))
