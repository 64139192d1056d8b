"""Reading and checking JSON request bodies. Every failure names the field at fault."""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any, NoReturn

from twisted.web.iweb import IRequest

from cli_server.domain.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType


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
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"the body is not valid UTF-8 (byte {e.start})", field="body") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            parse_constant=_no_constant,
        )
    except RecursionError:
        # The decoder recurses once per level: a deep body must be the client's fault, not a 500.
        raise BadRequest("the body is nested too deeply", field="body") from None
    except _Refused as e:
        raise BadRequest(f"the body is not acceptable JSON: {e}", field="body") from None
    except ValueError as e:
        raise BadRequest(f"the body is not valid JSON: {e}", field="body") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object", field="body")
    return value


class _Refused(ValueError):
    """Valid JSON we do not accept: the message says what."""


_MAX_DIGITS = 30  # far beyond any count or id we take; bounds int() and later arithmetic


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key would be read differently by different parsers: refuse both.
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise _Refused(f"the key {key[:40]!r} appears twice")
        value[key] = item
    return value


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_DIGITS:
        raise _Refused(f"a number has more than {_MAX_DIGITS} digits")
    return int(digits)


def _finite_float(text: str) -> float:
    if len(text) > 2 * _MAX_DIGITS:
        raise _Refused(f"a number is longer than {2 * _MAX_DIGITS} characters")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused("a number is too large")
    return value


def _no_constant(name: str) -> NoReturn:
    raise _Refused(f"{name} is not JSON")


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


def required_text(
    body: dict[str, Any], field: str, *, max_length: int, min_length: int = 1, strip: bool = True
) -> str:
    value = text_field(
        body, field, required=True, max_length=max_length, min_length=min_length, strip=strip
    )
    assert value is not None
    return value
