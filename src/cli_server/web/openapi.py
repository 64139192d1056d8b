"""The OpenAPI 3.1 document of the REST API, built from the route declarations
(``web.routes.route``: path, methods, auth, token scope, body and answer schemas, docstring),
and its rendering as the reference part of ``docs/api.md``.

``python -m cli_server.web.openapi`` prints the document; ``--markdown`` prints the reference;
``--write docs/api.md`` replaces the generated part of that file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

from klein import Klein

from cli_server._version import __version__
from cli_server.plumbing.encoding import JSON
from cli_server.web import schemas
from cli_server.web.bearer import WORKSPACE_ARGUMENTS
from cli_server.web.routes import SAFE_METHODS, Declaration, Schema, declared

# MainSite's routes that are not operations of the REST API, and why. Every other declared
# route of every mounted app is in the document.
NOT_REST: Mapping[str, str] = {
    "sso": "mounts the single sign-on app, whose routes are documented",
    "auth": "mounts the account app, whose routes are documented",
    "workspaces": "mounts the workspaces app, whose routes are documented",
    "invitations": "mounts the invitations app, whose routes are documented",
    "admin": "mounts the admin app, whose routes are documented",
    "sandboxes": "mounts the sandboxes app, whose routes are documented",
    "tunnel": "the local agents' WebSocket, authorised by a tunnel token (docs/tunnel.md)",
    "anthropic_proxy": "the Anthropic API for sandboxes, by proxy token (docs/anthropic.md)",
    "web_ui": "the web UI's files and its single-page fallback",
    "unknown_api": "answers 404 for any other /api path",
}

BEGIN = "<!-- BEGIN GENERATED API REFERENCE -->"
END = "<!-- END GENERATED API REFERENCE -->"
REGENERATE = "python -m cli_server.web.openapi --write docs/api.md"

_ARGUMENT = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")
_ORDER = ("get", "head", "options", "post", "put", "patch", "delete")
_COOKIE = "sessionCookie"
_BEARER = "bearerAuth"


class MountedApp(Protocol):
    """A row of ``web.site.APPS``: an app and where it is mounted."""

    @property
    def prefix(self) -> str: ...
    @property
    def app(self) -> Klein: ...
    @property
    def tag(self) -> str: ...
    @property
    def about(self) -> str: ...


def operations(apps: Iterable[MountedApp]) -> Iterator[tuple[MountedApp, str, str, Declaration]]:
    """(app, OpenAPI path, method, declaration) for every operation of the REST API: each
    declared rule of each app, once (HEAD goes with GET), but those of ``NOT_REST``."""
    for mounted in apps:
        names = declared(mounted.app)
        seen: set[str] = set()
        for rule in mounted.app.url_map.iter_rules():
            declaration = names[rule.endpoint]
            if declaration.endpoint in seen or (
                mounted.prefix == "" and declaration.endpoint in NOT_REST
            ):
                continue
            seen.add(declaration.endpoint)
            path = _openapi_path(mounted.prefix + declaration.path)
            for method in declaration.methods:
                if method == "HEAD" and "GET" in declaration.methods:
                    continue  # (HTTP: HEAD answers as GET does, without the body)
                yield mounted, path, method.lower(), declaration


def problems(apps: Sequence[MountedApp]) -> list[str]:
    """What keeps the document from describing every REST route, one sentence each: a route
    without a success answer or a docstring, an operation id used twice, or an entry of
    ``NOT_REST`` that is no route of MainSite."""
    found: list[str] = []
    ids: dict[str, str] = {}
    for _, path, method, declaration in operations(apps):
        where = f"{method.upper()} {path} ({declaration.endpoint})"
        if not any(200 <= status < 400 for status in declaration.answers):
            found.append(f"{where}: declare its answers, e.g. route(..., answers={{200: ...}})")
        if not declaration.summary.strip():
            found.append(f"{where}: write a docstring; its first sentence is the summary")
        operation_id = _operation_id(declaration, method)
        if ids.setdefault(operation_id, where) != where:
            found.append(f"{where}: operation id {operation_id!r} taken by {ids[operation_id]}")
    for site in (m for m in apps if m.prefix == ""):
        routes = declared(site.app)
        found += [
            f"NOT_REST names {n!r}, no route of MainSite" for n in NOT_REST if n not in routes
        ]
    return found


def _openapi_path(pattern: str) -> str:
    """Klein's ``/a/<b>/<int:c>/`` as OpenAPI's ``/a/{b}/{c}`` (no trailing slash: the
    routes that have one take the path without it too)."""
    path = _ARGUMENT.sub(lambda m: "{" + m.group(1) + "}", pattern)
    return path.rstrip("/") or "/"


def api_document(apps: Sequence[MountedApp], *, cookie: str = "cli_session") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``apps`` (``web.site.APPS``); ``cookie``: the session
    cookie's name on this server."""
    names = _schema_names()
    paths: dict[str, dict[str, Any]] = {}
    for mounted, path, method, declaration in operations(apps):
        paths.setdefault(path, {})[method] = _operation(mounted, path, method, declaration, names)
    for item in paths.values():
        ordered = sorted(item.items(), key=lambda kv: _ORDER.index(kv[0]))
        item.clear()
        item.update(ordered)
    used = _used_components(paths, names)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cli-server REST API",
            "version": __version__.public(),
            "summary": "Workspaces, members, sandboxes and local agents of a cli-server.",
            "description": (
                "JSON in and out, snake_case. Errors are "
                '`{"error": {"code", "message", "field"?}}`. Unknown ids and resources of '
                "other workspaces answer 404; a role too low answers 403. The reference with "
                "examples is docs/api.md."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "tags": [{"name": m.tag, "description": m.about} for m in apps],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {names[id(s)][0]: _with_refs(s, names, top=True) for s in used},
            "securitySchemes": {
                _COOKIE: {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": cookie,
                    "description": (
                        "The browser session from POST /api/auth/login (`cli_session`; "
                        "`__Host-cli_session` over https). A state-changing request that "
                        "carries an Origin must carry the server's own."
                    ),
                },
                _BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "A personal API token (POST /api/auth/tokens) in "
                        "`Authorization: Bearer`. An operation takes it when its "
                        "`x-token-scope` is within the token's scope (read < write < admin), "
                        "else 403; `session` operations take the session cookie only. A token "
                        "restricted to one workspace reaches nothing of another (404, as for "
                        "an unknown id); an operation whose path names no workspace, sandbox "
                        "or invitation takes it only when marked `x-across-workspaces` (a "
                        "list then shows only its workspace), else 403. Never accepted on "
                        "sandbox subdomains, the tunnel or the Anthropic proxy."
                    ),
                },
            },
        },
    }


def _operation(
    mounted: MountedApp,
    path: str,
    method: str,
    declaration: Declaration,
    names: Mapping[int, tuple[str, Schema]],
) -> dict[str, Any]:
    summary, description = _summary(declaration.summary)
    operation: dict[str, Any] = {
        "operationId": _operation_id(declaration, method),
        "tags": [mounted.tag],
        "summary": summary,
    }
    if description:
        operation["description"] = description
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": schemas.ID if name.endswith("_id") else schemas.TEXT,
        }
        for name in re.findall(r"\{([a-z_]+)\}", path)
    ]
    query = declaration.query or {}
    for name, schema in query.get("properties", {}).items():
        parameter = {
            "name": name,
            "in": "query",
            "required": name in query.get("required", ()),
            "schema": _with_refs({k: v for k, v in schema.items() if k != "description"}, names),
        }
        if "description" in schema:
            parameter["description"] = schema["description"]
        parameters.append(parameter)
    if parameters:
        operation["parameters"] = parameters
    body = declaration.body
    if body is not None and method.upper() not in SAFE_METHODS:
        shown = {k: v for k, v in body.items() if k != "x-optional"}
        operation["requestBody"] = {
            "required": not body.get("x-optional", False),
            "content": {"application/json": {"schema": _with_refs(shown, names)}},
        }
    responses: dict[str, Any] = {}
    for status, schema in sorted(_answers(path, method, declaration).items()):
        response: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if schema is not None:
            media = schema.get("contentMediaType", "application/json")
            response["content"] = {media: {"schema": _with_refs(schema, names)}}
        responses[str(status)] = response
    operation["responses"] = responses
    if not declaration.public:
        operation["security"] = (
            [{_COOKIE: []}] if declaration.scope == "session" else [{_COOKIE: []}, {_BEARER: []}]
        )
        operation["x-token-scope"] = declaration.scope
        if declaration.across_workspaces:
            operation["x-across-workspaces"] = True
    return operation


def _operation_id(declaration: Declaration, method: str) -> str:
    """The endpoint's name; with its method when it declares several (HEAD aside)."""
    methods = [m for m in declaration.methods if m != "HEAD" or "GET" not in declaration.methods]
    return declaration.endpoint if len(methods) == 1 else f"{declaration.endpoint}_{method}"


def _summary(docstring: str) -> tuple[str, str | None]:
    """A docstring's first sentence, and the whole of it when there is more."""
    whole = " ".join(docstring.split())
    first = re.split(r"(?<=\.)\s", whole, maxsplit=1)[0]
    return first, (whole if whole != first else None)


def _answers(path: str, method: str, declaration: Declaration) -> dict[int, Schema | None]:
    """The declared answers, and the errors every operation of its kind may answer."""
    answers = dict(declaration.answers)
    error = schemas.ERROR
    if not declaration.public:
        answers.setdefault(401, error)  # signed out
    if method.upper() not in SAFE_METHODS or declaration.scope in ("admin", "session"):
        # a foreign Origin; a role or account too low; a token's scope too narrow, or any
        # token on what only a signed-in browser may do
        answers.setdefault(403, error)
    elif not (declaration.public or declaration.across_workspaces) and not any(
        "{" + argument + "}" in path for argument in WORKSPACE_ARGUMENTS
    ):
        answers.setdefault(403, error)  # a token of one workspace, on a route about none
    if "{" in path:
        answers.setdefault(404, error)  # an unknown id, or another workspace's
    if declaration.body is not None:
        answers.setdefault(400, error)  # the field at fault
        answers.setdefault(413, error)  # over 1 MiB
        answers.setdefault(415, error)  # not application/json
    if path not in ("/healthz", "/metrics", "/api/openapi.json"):
        answers.setdefault(503, error)  # starting, or the database is not answering
    return answers


def _schema_names() -> dict[int, tuple[str, Schema]]:
    """The named schemas of ``web.schemas``, by identity: ``SANDBOX_LOGS`` as ``SandboxLogs``."""
    found: dict[int, tuple[str, Schema]] = {}
    for name, value in vars(schemas).items():
        named = name.isupper() and not name.startswith("_")
        if (
            named
            and isinstance(value, dict)
            and (value.get("type") == "object" or "oneOf" in value)
        ):
            found.setdefault(id(value), ("".join(w.title() for w in name.split("_")), value))
    return found


def _with_refs(schema: JSON, names: Mapping[int, tuple[str, Schema]], top: bool = False) -> JSON:
    """``schema`` with every named schema inside it (itself too, unless ``top``) as a $ref."""
    if not top and id(schema) in names:
        return {"$ref": f"#/components/schemas/{names[id(schema)][0]}"}
    if isinstance(schema, dict):
        return {k: _with_refs(v, names) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_with_refs(v, names) for v in schema]
    return schema


def _used_components(paths: JSON, names: Mapping[int, tuple[str, Schema]]) -> list[Schema]:
    """The named schemas the operations refer to, and those they refer to, by name."""
    by_name = {name: schema for name, schema in names.values()}
    wanted: dict[str, Schema] = {}
    pending = [paths]
    while pending:
        for ref in re.findall(r'"#/components/schemas/([A-Za-z]+)"', json.dumps(pending.pop())):
            if ref not in wanted:
                wanted[ref] = by_name[ref]
                pending.append(_with_refs(by_name[ref], names, top=True))
    return [wanted[name] for name in sorted(wanted)]


# -- the reference in docs/api.md -----------------------------------------------------------


def markdown(document: Mapping[str, Any]) -> str:
    """The operations and schemas of ``document``, as the generated part of docs/api.md."""
    lines = [
        BEGIN,
        "",
        f"<!-- Generated from the route declarations by `{REGENERATE}`; do not edit. -->",
        "",
        "## Reference",
        "",
        # (not the version: a release would make this part stale)
        f"OpenAPI {document['openapi']}: `GET /api/openapi.json` serves the document this "
        "reference is rendered from, as JSON. **Scope** is the least token "
        "scope an operation takes (`session`: a signed-in browser only; `public`: no "
        "credentials).",
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            by_tag.setdefault(operation["tags"][0], []).append((path, method, operation))
    for tag in document["tags"]:
        found = by_tag.get(tag["name"], [])
        if not found:
            continue
        lines += [f"### {tag['name'].capitalize()}", "", tag["description"], ""]
        for path, method, operation in found:
            lines += _markdown_operation(path, method, operation)
    lines += ["### Schemas", ""]
    for name, schema in document["components"]["schemas"].items():
        lines += [f"#### {name}", "", *_markdown_schema(schema), ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def _markdown_operation(path: str, method: str, operation: Mapping[str, Any]) -> list[str]:
    scope = operation.get("x-token-scope", "public")
    about = operation.get("description", operation["summary"]) or operation["operationId"]
    answers, errors = [], []
    for status, response in operation["responses"].items():
        content = response.get("content")
        if content is None:
            answers.append(f"{status} (no body)")
            continue
        media, shown = next(iter(content.items()))
        what = _type_name(shown["schema"]) if media == "application/json" else media
        if what.startswith("[Error]"):
            errors.append(status)
        else:
            answers.append(f"{status} {what}")
    facts = [f"scope `{scope}`", "answers " + ", ".join(answers)]
    if operation.get("x-across-workspaces"):
        facts.insert(1, "a workspace's token sees only its workspace")
    if errors:
        facts.append("errors " + ", ".join(errors))
    lines = [f"#### `{method.upper()} {path}`", "", about.replace("``", "`"), "", *_facts(facts)]
    query = [p for p in operation.get("parameters", ()) if p["in"] == "query"]
    if query:
        lines += ["Query parameters:", "", "| name | type | |", "|---|---|---|"]
        for parameter in query:
            notes = ["required" if parameter["required"] else "optional"]
            notes += [parameter["description"]] if "description" in parameter else []
            shown = _type_name(parameter["schema"])
            lines.append(f"| `{parameter['name']}` | {shown} | {'; '.join(notes)} |")
        lines.append("")
    body = operation.get("requestBody")
    if body is not None:
        schema = body["content"]["application/json"]["schema"]
        optional = " (optional)" if not body["required"] else ""
        lines += [f"Body{optional}:", "", *_markdown_schema(schema), ""]
    return lines


def _facts(facts: list[str]) -> list[str]:
    text = " · ".join(facts)
    return [text[:1].upper() + text[1:] + ".", ""]


def _markdown_schema(schema: Mapping[str, Any]) -> list[str]:
    properties = schema.get("properties")
    if schema.get("type") != "object" or properties is None:
        return [f"{_type_name(schema)}"]
    if not properties:
        return ["an empty object"]
    required = set(schema.get("required", ()))
    lines = ["| field | type | |", "|---|---|---|"]
    for name, value in properties.items():
        notes = ["required" if name in required else "optional"]
        if "description" in value:
            notes.append(value["description"])
        lines.append(f"| `{name}` | {_type_name(value)} | {'; '.join(notes)} |")
    return lines


def _type_name(schema: Mapping[str, Any]) -> str:
    """A short, human name of a schema's type: ``Sandbox``, ``[Member]``, ``string | null``."""
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()})"
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " \\| ".join(_type_name(s) for s in schema[key])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type_name(schema['items'])}"
    kinds = kind if isinstance(kind, list) else [kind]
    shown = " \\| ".join(
        schema["format"] if k == "string" and "format" in schema else k for k in kinds
    )
    limits = [
        f"{word} {schema[key]}"
        for key, word in (
            ("minLength", "≥"),
            ("maxLength", "≤"),
            ("minimum", "≥"),
            ("maximum", "≤"),
        )
        if key in schema
    ]
    return shown + (f" ({', '.join(limits)})" if limits else "")


def write_reference(path: Path, document: Mapping[str, Any]) -> bool:
    """Replace the generated part of ``path``; True if that changed it."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END) + 1
    updated = text[:start] + markdown(document) + text[end:]
    if updated == text:
        return False
    path.write_text(updated, encoding="utf-8")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    from cli_server.web.site import APPS  # (the site imports this module)

    parser = argparse.ArgumentParser(prog="python -m cli_server.web.openapi")
    parser.add_argument("--markdown", action="store_true", help="print the reference instead")
    parser.add_argument("--write", type=Path, help="replace the reference part of this file")
    options = parser.parse_args(argv)
    document = api_document(APPS)
    if options.write is not None:
        changed = write_reference(options.write, document)
        print(f"{options.write}: {'updated' if changed else 'up to date'}")
    elif options.markdown:
        sys.stdout.write(markdown(document))
    else:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
