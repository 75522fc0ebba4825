"""A big shop generated inside PostgreSQL (INSERT … SELECT generate_series): minutes, not hours.

``generate(conn, schema, sizes)`` fills the shop tables of ``schema`` (customers, products,
product_variants, orders, order_items) with a deterministic shop of the given sizes:

- customers: unique e-mails ``jan.novak17@seznam.cz``, one in 17 written with capitals and spaces
  around it as people type them (the lookup normalizes with ``lower(btrim())``);
- products and variants: variant codes ``P00017-2`` (product, position) and EAN-13 codes with a
  valid check digit, one variant in 20 without an EAN;
- orders: codes ``YYYY`` + sequence, created evenly over ``years`` years up to ``END`` (so every
  quarter holds data), a third of them guest orders (no customer GUID, a guest's e-mail), the rest
  by a registered customer drawn with a mild skew (the top customers have a few hundred orders);
- order_items: 1 to ~5 lines per order (mean ``items / orders``), the variant drawn with a skew
  (best sellers), prices from the variant, ``created_at`` the order's.

Raw JSON is left NULL: the rows are narrower than a real shop's, which makes sequential scans
(the baseline's) cheaper, never dearer. ``baseline_tables`` makes plain copies of the tables with
only their primary keys (no partitioning, no secondary index); ``copy_tables`` moves rows between
schemas. Only expressions of constants are composed into SQL; table names are identifiers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from models.tables import metadata

TABLES = ("customers", "products", "product_variants", "orders", "order_items")
END = datetime(2026, 10, 1, tzinfo=UTC)  # the last order is just before it: 16 full quarters in 4 years


@dataclass(frozen=True)
class Sizes:
    orders: int = 2_700_000
    items: int = 8_200_000
    customers: int = 500_000
    variants: int = 50_000
    products: int = 20_000
    years: int = 4

    @classmethod
    def scaled(cls, items: int) -> Sizes:
        """The original's proportions (8.2M items : 2.7M orders : 500k customers : 50k variants)."""
        f = items / 8_200_000
        return cls(
            orders=max(10, round(2_700_000 * f)),
            items=items,
            customers=max(5, round(500_000 * f)),
            variants=max(10, round(50_000 * f)),
            products=max(4, round(20_000 * f)),
        )


# SQL expressions of a customer number c (1..customers): the same e-mail in customers and in orders.
_FIRST = "(ARRAY['jan','petr','pavel','tomas','jana','eva','lucie','martin','katerina','jiri'])"
_LAST = "(ARRAY['novak','svoboda','novotny','dvorak','cerny','prochazka','kucera','vesely','horak','marek'])"
_DOMAIN = "(ARRAY['seznam.cz','gmail.com','email.cz','centrum.cz','post.cz','outlook.com'])"


def _email(c: str, kind: str = "") -> str:
    return (
        f"{_FIRST}[1 + mod({c}, 10)] || '.' || {_LAST}[1 + mod({c} / 10, 10)] || '{kind}' || {c} "
        f"|| '@' || {_DOMAIN}[1 + mod({c} / 100, 6)]"
    )


def _typed(c: str) -> str:
    """The e-mail as stored: one in 17 with capitals and surrounding spaces."""
    e = _email(c)
    return f"CASE WHEN mod({c}, 17) = 0 THEN ' ' || initcap({e}) || ' ' ELSE {e} END"


def _guid(prefix: str, n: str) -> str:
    return f"md5('{prefix}' || {n})::uuid::text"


def _variant_code(j: str, products: int) -> str:
    width = max(5, len(str(products)))  # lpad truncates: 5 digits would make product 100000 into 10000's codes
    return f"'P' || lpad((1 + mod({j} - 1, {products}))::text, {width}, '0') || '-' || (1 + ({j} - 1) / {products})"


def _ean12(j: str) -> str:
    return f"'859' || lpad({j}::text, 9, '0')"


def _ean(j: str) -> str:
    """EAN-13: 12 digits and the check digit (weights 1, 3 from the left); NULL for one variant in 20."""
    d = _ean12(j)
    check = (
        f"mod(10 - mod((SELECT sum(substr({d}, p, 1)::int * (CASE WHEN mod(p, 2) = 0 THEN 3 ELSE 1 END))"
        " FROM generate_series(1, 12) p), 10), 10)"
    )
    return f"CASE WHEN mod({j}, 20) = 0 THEN NULL ELSE {d} || ({check})::text END"


def _price(j: str) -> str:
    """A variant's price with VAT, 49 to 4 999 CZK, fixed per variant."""
    return f"(49 + mod({j}::bigint * 7919, 4951))::numeric"


def generate(conn: psycopg.Connection, schema: str, sizes: Sizes, seed: float = 0.42) -> dict[str, int]:
    """Fill the (empty) shop tables of ``schema``; return the row count of each."""
    t = {name: sql.Identifier(schema, name) for name in TABLES}
    conn.execute("SELECT setseed(%s)", (seed,))
    s = sizes
    conn.execute(
        sql.SQL(
            f"""INSERT INTO {{t}} (guid, created_at, changed_at, email, full_name, phone, customer_group_id,
                   customer_group_name, billing_city, billing_country_code, content_hash)
            SELECT {_guid("c", "i")},
                   %(end)s::timestamptz - make_interval(years => %(years)s) * (1 - i::float8 / %(n)s),
                   %(end)s::timestamptz - make_interval(years => %(years)s) * (1 - i::float8 / %(n)s) / 2,
                   {_typed("i")},
                   initcap({_FIRST}[1 + mod(i, 10)]) || ' ' || initcap({_LAST}[1 + mod(i / 10, 10)]),
                   '+420' || (600000000 + i), 1 + mod(i, 3), (ARRAY['Retail','Wholesale','VIP'])[1 + mod(i, 3)],
                   (ARRAY['Praha','Brno','Ostrava','Plzen','Olomouc'])[1 + mod(i, 5)], 'CZ', md5('c' || i)
              FROM generate_series(1, %(n)s) i"""
        ).format(t=t["customers"]),
        {"end": END, "years": s.years, "n": s.customers},
    )
    conn.execute(
        sql.SQL(
            f"""INSERT INTO {{t}} (guid, type, name, visibility, brand_name, created_at, changed_at,
                   content_hash)
            SELECT {_guid("p", "k")}, 'product', 'Product ' || k, 'visible',
                   (ARRAY['Lamart','Tescoma','Philips','Bosch','Gorenje'])[1 + mod(k, 5)],
                   %(end)s::timestamptz - interval '5 years', %(end)s::timestamptz - interval '1 year',
                   md5('p' || k)
              FROM generate_series(1, %(n)s) k"""
        ).format(t=t["products"]),
        {"end": END, "n": s.products},
    )
    # variant number j -> its row, kept for the order lines (a hash join on j, not per-line expressions)
    conn.execute(
        sql.SQL(
            f"""CREATE TEMP TABLE bench_variants ON COMMIT DROP AS
            SELECT j, {_variant_code("j", s.products)} AS code, {_guid("p", f"1 + mod(j - 1, {s.products})")}
                       AS product_guid, 1 + (j - 1) / {s.products} AS position, {_ean("j")} AS ean,
                   'Product ' || (1 + mod(j - 1, {s.products})) AS name, {_price("j")} AS price
              FROM generate_series(1, %(n)s) j"""
        ),
        {"n": s.variants},
    )
    conn.execute(
        sql.SQL(
            """INSERT INTO {t} (code, product_guid, position, ean, name, price, including_vat, vat_rate,
                   currency_code, stock, unit, visible)
            SELECT code, product_guid, position, ean, name || ' size ' || position, price, true, 21, 'CZK',
                   mod(j, 50), 'ks', true
              FROM bench_variants"""
        ).format(t=t["product_variants"])
    )
    _orders(conn, t["orders"], s)
    _items(conn, t["order_items"], t["orders"], s)
    return {
        name: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()[0] for name, ident in t.items()
    }


def _orders(conn: psycopg.Connection, table: sql.Identifier, s: Sizes) -> None:
    # guest: a third of the orders; registered customer c = 1 + floor(customers * u^1.5) (mild skew)
    conn.execute(
        sql.SQL(
            f"""INSERT INTO {{t}} (code, guid, created_at, changed_at, status_id, status_name, source_name,
                   email, phone, customer_guid, currency_code, exchange_rate, price_with_vat,
                   price_without_vat, price_vat, price_to_pay, paid, vat_payer, cash_desk_order,
                   billing_full_name, billing_city, billing_country_code, content_hash)
            SELECT to_char(created, 'YYYY') || lpad(i::text, {max(7, len(str(s.orders)))}, '0'),
                   md5('o' || i)::uuid::text, created,
                   created + interval '2 days', st, (ARRAY['Nova','Vyrizena','Stornovana','Odeslana'])[
                       CASE st WHEN -1 THEN 1 WHEN -3 THEN 2 WHEN -4 THEN 3 ELSE 4 END],
                   'E-shop',
                   CASE WHEN guest THEN {_email("g", "+guest")} ELSE {_typed("c")} END, '+420' || (700000000 + i),
                   CASE WHEN guest THEN NULL ELSE {_guid("c", "c")} END, 'CZK', 1,
                   price, round(price / 1.21, 2), price - round(price / 1.21, 2), price, true, true, false,
                   'Customer ' || c, 'Praha', 'CZ', md5('o' || i)
              FROM (SELECT i, %(end)s::timestamptz - make_interval(years => %(years)s)
                              * (1 - (i - 1 + random()) / %(n)s) AS created,
                           random() < 1 / 3.0 AS guest,
                           1 + floor(%(customers)s * power(random(), 1.5))::int AS c,
                           1 + floor(random() * %(customers)s / 2)::int AS g,
                           (ARRAY[-1, -3, -3, -3, -4, 6])[1 + floor(random() * 6)::int] AS st,
                           round((100 + random() * 5000)::numeric, 2) AS price
                      FROM generate_series(1, %(n)s) i) o"""
        ).format(t=table),
        {"end": END, "years": s.years, "n": s.orders, "customers": s.customers},
    )


def _items(conn: psycopg.Connection, items: sql.Identifier, orders: sql.Identifier, s: Sizes) -> None:
    # lines per order: 1 + floor(u * (2m - 1)), u from the code's hash: mean m = items / orders;
    # the variant j = 1 + floor(variants * u^2): best sellers
    spread = 2 * s.items / s.orders - 1
    conn.execute(
        sql.SQL(
            """INSERT INTO {t} (order_code, item_id, created_at, position, item_type, product_guid, code, ean,
                   name, variant_name, brand, amount, amount_unit, price_ratio, status_id, unit_price_with_vat,
                   unit_price_without_vat, item_price_with_vat, item_price_without_vat, item_price_vat, vat_rate)
            SELECT x.code, 1000 + k, created_at, k, 'product', v.product_guid, v.code, v.ean, v.name,
                   'Size ' || v.position, 'Lamart', qty, 'ks', 1, status_id, v.price, round(v.price / 1.21, 2),
                   v.price * qty, round(v.price * qty / 1.21, 2), v.price * qty - round(v.price * qty / 1.21, 2), 21
              FROM (SELECT o.code, o.created_at, o.status_id, k,
                           1 + floor(%(variants)s * power(random(), 2))::int AS j,
                           (1 + floor(random() * 3))::numeric AS qty
                      FROM {o} o,
                           generate_series(1, 1 + floor(((hashtext(o.code)::bigint & 1048575) / 1048576.0)
                                                        * %(spread)s)::int) k) x
              JOIN bench_variants v USING (j)"""
        ).format(t=items, o=orders),
        {"variants": s.variants, "spread": spread},
    )


def baseline_tables(conn: psycopg.Connection, schema: str, source: str = "public") -> None:
    """Plain tables in ``schema`` shaped like ``source``'s shop tables, with only their primary keys."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    for name in TABLES:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, name)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING COMPRESSION)").format(
                sql.Identifier(schema, name), sql.Identifier(source, name)
            )
        )
        keys = [c.name for c in metadata.tables[name].primary_key.columns]
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                sql.Identifier(schema, name), sql.SQL(", ").join(map(sql.Identifier, keys))
            )
        )


def copy_tables(conn: psycopg.Connection, source: str, target: str) -> None:
    """INSERT every shop row of ``source`` into the same (empty) tables of ``target``."""
    for name in TABLES:
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT * FROM {}").format(
                sql.Identifier(target, name), sql.Identifier(source, name)
            )
        )
