"""Every deployment's parameter schema gives each parameter a top-level ``type`` (issue 19).

The Prefect UI's parameters table (V1 and V2 bundles: ``type: property.type``) shows only that key, so a
parameter whose schema is a bare ``$ref`` (an Enum) or ``anyOf`` (``X | None``) showed no type. The type
must still admit every value the flow takes (null where the flow takes None: the server validates a
run's parameters against this schema), and keep what the run form renders (enum choices, date-time).
"""

from __future__ import annotations

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema, parameter_schema_from_entrypoint
from prefect.utilities.schema_tools.validation import validate

from tests.unit.test_prefect_yaml import DEPLOYMENTS, ROOT

JSON_TYPES = {"string", "number", "integer", "boolean", "array", "object", "null"}
ENTRYPOINTS = sorted({d["entrypoint"] for d in DEPLOYMENTS.values()})


def _schemas(entrypoint: str) -> dict[str, dict]:
    """The schema ``prefect deploy`` registers (from the loaded flow) and the one read from the source."""
    return {
        "loaded": parameter_schema(load_flow_from_entrypoint(str(ROOT / entrypoint))).model_dump_for_openapi(),
        "source": parameter_schema_from_entrypoint(str(ROOT / entrypoint)).model_dump_for_openapi(),
    }


def _types(spec: dict) -> list:
    t = spec.get("type")
    return t if isinstance(t, list) else [t]


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_every_parameter_has_a_type_the_ui_table_shows(entrypoint):
    for how, schema in _schemas(entrypoint).items():
        untyped = {p: spec for p, spec in schema["properties"].items() if not set(_types(spec)) <= JSON_TYPES}
        assert untyped == {}, f"{entrypoint} ({how}): parameters without a top-level JSON type"


@pytest.mark.parametrize("entrypoint", ENTRYPOINTS)
def test_the_type_admits_every_default_and_null_where_the_flow_takes_none(entrypoint):
    schema = _schemas(entrypoint)["loaded"]
    for p, spec in schema["properties"].items():
        if "default" in spec:
            assert validate({p: spec["default"]}, schema, ignore_required=True) == [], f"{p}: default rejected"
        nullable = any(b.get("type") == "null" for b in spec.get("anyOf", []))
        assert nullable == ("null" in _types(spec)), f"{p}: type {spec.get('type')} disagrees with its anyOf"


def test_the_form_keeps_enum_choices_a_date_time_input_and_a_number():
    schema = _schemas("flows/snapshot.py:import_snapshot")["loaded"]
    props = schema["properties"]
    assert props["entity"]["type"] == "string"
    assert props["entity"]["enum"] == ["orders", "customers", "products"]
    assert {"type": "string", "format": "date-time"} in props["changed_since"]["anyOf"]
    assert props["lock_wait"]["type"] == ["number", "null"]
    good = {"entity": "orders", "changed_since": "2026-12-01T00:00:00Z", "lock_wait": None}
    assert validate(good, schema) == []
    assert validate({**good, "entity": "everything"}, schema) != []
    assert validate({**good, "lock_wait": "soon"}, schema) != []


def test_prefect_yaml_parameters_conform_to_the_schemas():
    for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]:
        schema = _schemas(d["entrypoint"])["loaded"]
        assert validate(d.get("parameters") or {}, schema, ignore_required=True) == [], d["name"]
