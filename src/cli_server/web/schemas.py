"""The JSON Schemas of the API's bodies and answers, named once and used by the route
declarations (``route(..., body=..., answers=...)``) and the OpenAPI document.

Plain JSON Schema (draft 2020-12, the dialect of OpenAPI 3.1) as mappings, so the document is
these values as they are.
"""

from __future__ import annotations

from typing import Any

from cli_server.web.routes import Schema


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """An object with these properties; the ``required`` ones always present."""
    properties: dict[str, Any] = {**required, **(optional or {})}
    return {"type": "object", "properties": properties, "required": sorted(required)}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


TEXT: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
ERROR: Schema = obj(
    {"error": obj({"code": TEXT, "message": TEXT}, {"field": TEXT})},
)
