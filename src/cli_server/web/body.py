"""Reading and checking JSON request bodies. Every failure names the field at fault."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from twisted.web.iweb import IRequest

from cli_server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType


def read_json_object(request: IRequest) -> dict[str, Any]:
    if getattr(request, "body_too_large", False):
        raise PayloadTooLarge("the request body is larger than 1 MiB")
    content = request.content
    raw = content.read() if content is not None else b""
    if not raw.strip():
        raise BadRequest("the request needs a JSON object body", field="body")
    ctype = (request.getHeader("content-type") or "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        # Also a CSRF guard: browsers cannot send application/json cross-site without CORS.
        raise UnsupportedMediaType("send the body as Content-Type: application/json")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}", field="body") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object", field="body")
    return value


def _check_text(field: str, value: str) -> str:
    for ch in value:
        category = unicodedata.category(ch)
        if category in ("Cs", "Cc"):
            raise BadRequest(
                f"{field} contains a control character or invalid unicode", field=field
            )
        if category == "Cf" and ch not in "\u200c\u200d":  # keep joiners used by emoji/scripts
            raise BadRequest(f"{field} contains an invisible formatting character", field=field)
    return value


def text_field(
    body: dict[str, Any],
    field: str,
    *,
    max_length: int,
    min_length: int = 1,
    required: bool = True,
    strip: bool = True,
) -> str | None:
    """A string field, NFC-normalised, without control or bidi-override characters."""
    value = body.get(field)
    if value is None:
        if required:
            raise BadRequest(f"{field} is required", field=field)
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string", field=field)
    value = unicodedata.normalize("NFC", _check_text(field, value))
    if strip:
        value = value.strip()
    if len(value) < min_length:
        raise BadRequest(f"{field} must be at least {min_length} characters", field=field)
    if len(value) > max_length:
        raise BadRequest(f"{field} must be at most {max_length} characters", field=field)
    return value


def required_text(body: dict[str, Any], field: str, **kwargs: Any) -> str:
    value = text_field(body, field, required=True, **kwargs)
    assert value is not None
    return value
