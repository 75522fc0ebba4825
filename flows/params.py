"""Flow parameter annotations whose JSON schema carries a top-level ``type`` (issue 19).

Prefect's UI shows a parameter's type from the top-level ``type`` of its schema only; pydantic gives an
Enum a bare ``$ref`` and ``X | None`` a bare ``anyOf``, which the table showed as nothing. ``ShowType`` in
an ``Annotated`` adds that key at the source, so ``prefect deploy`` (and ``hub deploy``/``hub serve``,
which run it) register it without any post-processing. The Python type is unchanged for callers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from flows.entities import Entity


class _ShowType:
    """Inlines a ``$ref`` and gives an ``anyOf`` the union of its branches' types.

    The ``anyOf`` stays: the run form renders its branches (a date-time picker, a null choice). The type
    of a nullable parameter includes "null", or the server would refuse a run with ``lock_wait: null``.
    """

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        if "$ref" in schema:  # an Enum: its definition has type and enum, which the form's select needs
            schema = {**handler.resolve_ref_schema(schema), **{k: v for k, v in schema.items() if k != "$ref"}}
        if "type" in schema or "anyOf" not in schema:
            return schema
        types: list[str] = []
        for branch in schema["anyOf"]:
            t = handler.resolve_ref_schema(branch).get("type")
            if t is None:  # an untyped branch: no honest type (tests/unit/test_parameter_types.py names it)
                return schema
            types += [x for x in (t if isinstance(t, list) else [t]) if x not in types]
        return {**schema, "type": types[0] if len(types) == 1 else types}


ShowType = _ShowType()

EntityName = Annotated[Entity, ShowType]
LockWait = Annotated[float | None, ShowType]  # seconds; None waits forever
OptionalTime = Annotated[datetime | None, ShowType]
OptionalText = Annotated[str | None, ShowType]
OptionalInt = Annotated[int | None, ShowType]
OptionalInts = Annotated[list[int] | None, ShowType]
OptionalRecords = Annotated[list[dict[str, Any]] | None, ShowType]
