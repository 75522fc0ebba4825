"""The loader's column lists (db/mapping.py) and the models (models/tables.py) say the same thing.

The models are the schema truth; the mapping lists the columns a snapshot line fills, in COPY order,
with the kind of value each takes. A column added, renamed or retyped on one side only fails here.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from db.mapping import ENTITIES
from models.tables import metadata

# Columns the loader fills itself rather than from a line's fields (or that other jobs fill).
BOOKKEEPING = {"content_hash", "raw", "run_id", "synced_at"}
KINDS = {
    "t": (sa.Text, sa.String),
    "n": (sa.Numeric,),
    "i": (sa.Integer, sa.BigInteger, sa.SmallInteger),
    "b": (sa.Boolean,),
    "ts": (sa.DateTime,),
}


def _pairs():
    for spec in ENTITIES.values():
        yield spec.table, spec.columns
        if spec.child_table:
            yield spec.child_table, spec.child_columns


@pytest.mark.parametrize(("table", "columns"), list(_pairs()), ids=lambda v: v if isinstance(v, str) else "")
def test_mapping_columns_match_the_model(table, columns):
    model = metadata.tables[table]
    mapped = {c.name: c.kind for c in columns}
    model_cols = {c.name: c for c in model.columns}
    assert set(mapped) - set(model_cols) == set(), f"{table}: mapped columns the model lacks"
    unfilled = set(model_cols) - set(mapped) - BOOKKEEPING
    assert unfilled == set(), f"{table}: model columns no snapshot line fills (add them to db/mapping.py)"
    for name, kind in mapped.items():
        col_type = model_cols[name].type
        assert isinstance(col_type, KINDS[kind]), f"{table}.{name}: mapped as {kind!r}, model has {col_type!r}"
        if kind == "ts":
            assert col_type.timezone, f"{table}.{name}: times are timestamptz"
