"""Answers checked against the server's own OpenAPI document: the status is one the operation
documents, and the body validates against that status's schema (jsonschema, formats too).

``Api(..., document=ApiDocument(...))`` checks every answer it gets this way (opt-in)."""

from __future__ import annotations

import re
from typing import Any

from attrs import define, field
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_BASE = "urn:cli-server-api"
# Formats the document uses: each is checked, not merely allowed (date-time needs
# rfc3339-validator, a dependency of openapi-spec-validator).
_FORMATS = Draft202012Validator.FORMAT_CHECKER
assert {"date-time", "date", "uuid"} <= set(_FORMATS.checkers)


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


@define
class ApiDocument:
    """The document of one server, and the operations answered with a success so far."""

    document: dict[str, Any]
    called: set[str] = field(factory=set)
    _registry: Registry[Any] = field(init=False)
    _templates: list[tuple[re.Pattern[str], str]] = field(init=False)

    def __attrs_post_init__(self) -> None:
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self._registry = Registry().with_resource(_BASE, resource)
        templates = []
        for path in self.document["paths"]:
            pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(path))
            templates.append((re.compile(f"{pattern}/?"), path))
        # the most literal first: /api/workspaces/{id}/members before /api/workspaces/{id}
        templates.sort(key=lambda t: (t[1].count("{"), -len(t[1])))
        self._templates = templates

    @property
    def operation_ids(self) -> set[str]:
        return {
            op["operationId"] for item in self.document["paths"].values() for op in item.values()
        }

    def template(self, path: str) -> str | None:
        bare = path.split("?", 1)[0]
        for pattern, template in self._templates:
            if pattern.fullmatch(bare):
                return template
        return None

    def response(
        self, method: str, path: str, status: int
    ) -> tuple[dict[str, Any], str | None, Draft202012Validator | None]:
        """The operation, and the media type and a validator of the body documented for
        ``status`` (None, None: no body)."""
        template = self.template(path)
        assert template is not None, f"{method} {path} is not in the API document"
        operation = self.document["paths"][template].get(method.lower())
        assert operation is not None, f"{method} {template} is not in the API document"
        responses = operation["responses"]
        assert str(status) in responses, (
            f"{method} {path} answered {status}, not documented (only {', '.join(responses)})"
        )
        content = responses[str(status)].get("content")
        if content is None:
            return operation, None, None
        media = next(iter(content))
        ref = _pointer("paths", template, method.lower(), "responses", str(status), "content")
        ref += _pointer(media, "schema")
        validator = Draft202012Validator(
            {"$ref": f"{_BASE}#{ref}"}, registry=self._registry, format_checker=_FORMATS
        )
        return operation, media, validator

    def check(self, method: str, path: str, code: int, body: Any, content_type: str) -> None:
        """Raise AssertionError unless this answer is one the document describes."""
        head = method == "HEAD"  # (answered as the documented GET is, without the body)
        operation, media, validator = self.response("GET" if head else method, path, code)
        if validator is None:
            assert body in (None, b"", ""), f"{method} {path} {code}: an undocumented body"
        elif not head:
            if isinstance(body, bytes) and media != "application/json":
                body = body.decode("utf-8")
            try:
                validator.validate(body)
            except ValidationError as e:
                where = "/".join(map(str, e.absolute_path)) or "the top"
                raise AssertionError(
                    f"{method} {path} {code}: the answer does not match its schema at"
                    f" {where}: {e.message}"
                ) from None
            assert content_type.split(";")[0].strip() == media, (
                f"{method} {path} {code}: {content_type}, documented as {media}"
            )
        if code < 400:
            self.called.add(operation["operationId"])
