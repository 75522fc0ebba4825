"""mask_url never prints a password, in URL or libpq keyword/value form (issue 8 §1.9)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict

from db.connection import as_url, libpq_url, mask_url, sqlalchemy_url, with_database

SECRET = "s3cr3t"


@pytest.mark.parametrize(
    "dsn, masked",
    [
        ("host=db password=s3cret", "host=db password=***"),
        ("host=db user=hub password=s3cret dbname=shop", "host=db user=hub password=*** dbname=shop"),
        ("host=db password = s3cret port=5432", "host=db password=*** port=5432"),
        (r"host=db password='s 3\'c=ret@/?' dbname=shop", "host=db password=*** dbname=shop"),
        ("sslpassword=keypass sslkey=/k host=db", "sslpassword=*** sslkey=/k host=db"),
        ("host=/run/postgresql dbname=shop", "host=/run/postgresql dbname=shop"),
        # libpq expands a dbname that is itself a connection string
        ("dbname=postgresql://u:s3cret@h/db", "dbname=postgresql://u:***@h/db"),
        ("dbname='host=h password=s3cret'", "dbname='host=h password=***'"),
    ],
)
def test_keyword_dsn(dsn, masked):
    assert mask_url(dsn) == masked


@pytest.mark.parametrize(
    "url, masked",
    [
        ("postgresql://hub:secret@db:5432/shop", "postgresql://hub:***@db:5432/shop"),
        ("postgresql+psycopg://hub:secret@db/shop", "postgresql+psycopg://hub:***@db/shop"),
        ("postgresql://hub@db/shop", "postgresql://hub@db/shop"),
        ("postgresql://h:5432/db?application_name=a@b", "postgresql://h:5432/db?application_name=a@b"),
        ("postgresql://db/shop?sslmode=require&password=s3cret", "postgresql://db/shop?sslmode=require&password=***"),
        ("postgresql://db/shop?%70assword=s3cret", "postgresql://db/shop?%70assword=***"),
        ("postgresql://[::1]:5432/shop?user=u&PASSWORD=x", "postgresql://[::1]:5432/shop?user=u&PASSWORD=***"),
    ],
)
def test_url(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url, masked",
    [
        ("postgresql:///shop?host=/run&password=x", "postgresql:///shop?host=/run&password=***"),
        (
            "postgresql://postgres:@/postgres?host=/var/lib/shoptet-hub/pg",
            "postgresql://postgres@/postgres?host=/var/lib/shoptet-hub/pg",
        ),
        ("postgresql://u:pw@/shop?host=%2Frun%2Fpostgresql", "postgresql://u:***@/shop?host=%2Frun%2Fpostgresql"),
    ],
)
def test_socket_urls_stay_intact(url, masked):
    assert mask_url(url) == masked


# Passwords with the characters that end a URL part. Percent-encoded ones are what libpq expects; raw
# ones are malformed, but a user may still write them and they must not be printed in part.
@pytest.mark.parametrize(
    "password",
    ["p%40ss%2Fw%3Frd%23", "p@ss", "pa/ss", "p?a#s", "p?a=b", "p:a:s", "p&a=b", "p%ss"],
)
def test_url_password_with_special_characters(password):
    url = f"postgresql://hub:{password}@db:5432/shop?sslmode=require"
    masked = mask_url(url)
    assert masked == "postgresql://hub:***@db:5432/shop?sslmode=require"


@pytest.mark.parametrize("password", ["a b", "p@ss/w?rd#", "it's", "back\\slash", "x=y&z", "ünï"])
def test_keyword_password_with_special_characters(password):
    quoted = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    dsn = f"host=db password={quoted} dbname=shop"
    assert conninfo_to_dict(dsn)["password"] == password  # what libpq reads is what we hide
    assert mask_url(dsn) == "host=db password=*** dbname=shop"


def test_as_url_keeps_keyword_dsns_usable_and_masked():
    dsn = r"host=/run/postgresql port=5433 user=hub password='a b&c@/\'' dbname=shop"
    url = as_url(dsn)
    assert conninfo_to_dict(libpq_url(dsn)) == conninfo_to_dict(dsn)
    assert conninfo_to_dict(with_database(dsn, "other"))["dbname"] == "other"
    sa_url = sa.engine.make_url(sqlalchemy_url(dsn))
    assert sa_url.password == "a b&c@/'" and sa_url.query["host"] == "/run/postgresql"
    assert "a b" not in repr(sa_url) and "a%20b" not in mask_url(url)
    assert mask_url(url) == "postgresql://hub:***@/shop?host=%2Frun%2Fpostgresql&port=5433"


def test_as_url_error_does_not_quote_the_string():
    with pytest.raises(ValueError) as err:
        as_url(f"host=db password={SECRET} {SECRET}x")
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        f"postgresql://u:{SECRET}@h/db",
        f"host=h password={SECRET}",
        f"postgresql:///db?password={SECRET}",
        f"postgresql://u:{SECRET}@h/db?password={SECRET}",
        f"password='{SECRET}'",
        f"postgresql://u:{SECRET}@/db",
    ],
)
def test_never_prints_the_secret(text):
    assert SECRET not in mask_url(text)
