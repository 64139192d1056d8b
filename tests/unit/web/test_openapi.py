"""The OpenAPI document of the REST API, built from the route declarations: a valid OpenAPI
3.1 document whose schemas are valid JSON Schema, with every declared REST route in it, each
non-public operation with its security and token scope, and docs/api.md rendered from it."""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from attrs import define
from jsonschema import Draft202012Validator
from klein import Klein
from openapi_spec_validator import validate
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest

from cli_server._version import __version__
from cli_server.domain.errors import BadRequest, NameTaken
from cli_server.sandboxes.manager import InvalidState
from cli_server.web.bearer import WORKSPACE_ARGUMENTS
from cli_server.web.openapi import (
    BEGIN,
    END,
    NOT_REST,
    REGENERATE,
    api_document,
    main,
    markdown,
    operations,
    problems,
)
from cli_server.web.responses import error_body
from cli_server.web.routes import SAFE_METHODS, declared, route
from cli_server.web.schemas import ERROR, answer
from cli_server.web.site import APPS, MOUNTS, MainSite

DOCS_API = Path(__file__).resolve().parents[3] / "docs" / "api.md"
_ARGUMENT = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")


def _schemas(document: dict[str, Any]) -> list[tuple[str, Any]]:
    """(where, schema) for every schema of the document: components, bodies and answers."""
    found = list(document["components"]["schemas"].items())
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            body = operation.get("requestBody")
            if body is not None:
                found.append((where + " body", body["content"]["application/json"]["schema"]))
            for status, response in operation["responses"].items():
                for media, content in response.get("content", {}).items():
                    found.append((f"{where} {status} {media}", content["schema"]))
    return found


class DocumentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.document = api_document(APPS)

    def test_valid_openapi(self) -> None:
        """openapi-spec-validator accepts the document as OpenAPI 3.1, with the package's
        version as its own."""
        validate(self.document)
        self.assertEqual(self.document["openapi"], "3.1.0")
        self.assertEqual(self.document["info"]["version"], __version__.public())

    def test_every_schema_is_json_schema(self) -> None:
        """Every schema in it is valid draft 2020-12 JSON Schema."""
        schemas = _schemas(self.document)
        self.assertGreater(len(schemas), 100)
        for where, schema in schemas:
            with self.subTest(where=where):
                Draft202012Validator.check_schema(schema)

    def test_every_rest_route_is_in_it(self) -> None:
        """Each method of each rule of each mounted app is an operation, but HEAD (with
        GET) and the routes of NOT_REST; nothing keeps the document from describing one."""
        self.assertEqual(problems(APPS), [])
        expected = set()
        for mount in APPS:
            names = declared(mount.app)
            for rule in mount.app.url_map.iter_rules():
                endpoint = names[rule.endpoint].endpoint
                if mount.prefix == "" and endpoint in NOT_REST:
                    continue
                path = _ARGUMENT.sub(r"{\1}", mount.prefix + rule.rule).rstrip("/")
                for method in rule.methods or ():
                    if method not in ("HEAD", "OPTIONS"):
                        expected.add((path, method.lower()))
        documented = {(p, m) for p, item in self.document["paths"].items() for m in item}
        self.assertEqual(documented, expected)
        self.assertGreaterEqual(len(documented), 50)

    def test_unique_operation_ids(self) -> None:
        """Each operation has its own id: its endpoint's name."""
        ids = [
            op["operationId"] for item in self.document["paths"].values() for op in item.values()
        ]
        self.assertEqual(len(ids), len(set(ids)))

    def test_security_and_scope(self) -> None:
        """A non-public operation takes the session cookie, and an API token unless it is a
        ``session`` one, and says its scope; a public one asks for nothing."""
        schemes = self.document["components"]["securitySchemes"]
        self.assertEqual(schemes["sessionCookie"]["name"], "cli_session")
        self.assertEqual(schemes["bearerAuth"], {**schemes["bearerAuth"], "scheme": "bearer"})
        declarations = {(p, m): d for _, p, m, d in operations(APPS)}
        for (path, method), declaration in declarations.items():
            operation = self.document["paths"][path][method]
            with self.subTest(operation=f"{method} {path}"):
                if declaration.public:
                    self.assertNotIn("security", operation)
                    self.assertNotIn("x-token-scope", operation)
                    continue
                scope = operation["x-token-scope"]
                self.assertEqual(scope, declaration.scope)
                wanted = [{"sessionCookie": []}]
                if scope != "session":
                    wanted.append({"bearerAuth": []})
                self.assertEqual(operation["security"], wanted)
                self.assertIn("401", operation["responses"])
                if scope == "read":
                    self.assertIn(method.upper(), SAFE_METHODS)
        scopes = {d.scope for d in declarations.values() if not d.public}
        self.assertEqual(scopes, {"read", "write", "admin", "session"})

    def test_parameters(self) -> None:
        """Path arguments are required path parameters (ids as UUIDs); declared query
        parameters are optional query parameters with their descriptions."""
        login = self.document["paths"]["/api/auth/oidc/{provider}/login"]["get"]
        self.assertEqual(
            [(p["name"], p["in"], p["required"]) for p in login["parameters"]],
            [("provider", "path", True), ("return_to", "query", False), ("link", "query", False)],
        )
        self.assertIn("link the identity", login["parameters"][2]["description"])
        member = self.document["paths"]["/api/workspaces/{workspace_id}/members/{member_id}"]
        self.assertEqual(
            [p["schema"] for p in member["put"]["parameters"]],
            [{"type": "string", "format": "uuid"}] * 2,
        )

    def test_session_cookie_name_over_https(self) -> None:
        """The document names the cookie the server sets: ``__Host-cli_session`` over https."""
        secure = api_document(APPS, cookie="__Host-cli_session")
        name = secure["components"]["securitySchemes"]["sessionCookie"]["name"]
        self.assertEqual(name, "__Host-cli_session")

    def test_errors_that_apply(self) -> None:
        """Ids answer 404, bodies 400/413/415, state changes 403 (the Origin rule), all as
        ``Error``."""
        error = {"$ref": "#/components/schemas/Error"}
        for path, item in self.document["paths"].items():
            for method, operation in item.items():
                responses = operation["responses"]
                wanted = []
                if "{" in path:
                    wanted.append("404")
                if "requestBody" in operation:
                    wanted += ["400", "413", "415"]
                if method.upper() not in SAFE_METHODS:
                    wanted.append("403")
                for status in wanted:
                    with self.subTest(operation=f"{method} {path}", status=status):
                        schema = responses[status]["content"]["application/json"]["schema"]
                        self.assertEqual(schema, error)

    def test_token_refusals_are_documented(self) -> None:
        """A token is refused with 403 on what only a signed-in browser may do (``session``)
        and, restricted to one workspace, on a route about none: those operations document
        403, reads too (the fuzz test found ``GET /api/auth/sessions`` answering an
        undocumented 403 to a token)."""
        for _, path, method, declaration in operations(APPS):
            about_one = any(f"{{{a}}}" in path for a in WORKSPACE_ARGUMENTS)
            refused = declaration.scope == "session" or not (
                declaration.public or declaration.across_workspaces or about_one
            )
            if refused:
                with self.subTest(operation=f"{method} {path}"):
                    self.assertIn("403", self.document["paths"][path][method]["responses"])
        sessions = self.document["paths"]["/api/auth/sessions"]["get"]
        self.assertIn("403", sessions["responses"])

    def test_error_schema_is_what_the_server_writes(self) -> None:
        """What ``install_json_errors`` writes for each kind of error validates against
        ERROR, and a body of another shape does not."""
        check = Draft202012Validator(ERROR)
        for failure in (
            BadRequest("name is required", field="name"),
            NameTaken("taken"),
            InvalidState("paused", "pause"),
        ):
            check.validate(error_body(failure.code, failure.message, **failure.details()))
        check.validate(error_body("not_found", "no such API route"))
        for wrong in ({"error": "no"}, {"error": {"code": "x"}}, {"code": "x", "message": "y"}):
            self.assertFalse(check.is_valid(wrong), wrong)

    def test_not_rest_is_exact(self) -> None:
        """NOT_REST names routes of MainSite; every branch route of MainSite (a mount, the
        UI, the Anthropic proxy, the /api catch-all) is in it, and every mount has one."""
        routes = declared(MainSite.app)
        branches = {
            routes[rule.endpoint].endpoint
            for rule in MainSite.app.url_map.iter_rules()
            if rule.endpoint.endswith("_branch")
        }
        self.assertLessEqual(set(NOT_REST), {d.endpoint for d in routes.values()})
        self.assertLessEqual(branches, set(NOT_REST))
        mounted = {d.path for d in routes.values() if d.endpoint in branches}
        self.assertLessEqual({m.prefix for m in MOUNTS}, mounted)


@define(eq=False)
class _Undocumented:
    """An app as a new route would first be written: no docstring, no answers."""

    app = Klein()

    @property
    def _cookies(self) -> Any:
        raise AssertionError("never served")

    @route(app, "/things/<thing_id>", methods=["GET"])
    def get_thing(self, request: IRequest, user: Any, thing_id: str) -> bytes:
        return b""

    @route(app, "/things", methods=["POST"], answers={201: answer({})})
    def make_thing(self, request: IRequest, user: Any) -> bytes:
        """Makes a thing."""
        return b""


@define
class _Mounted:
    prefix: str
    app: Klein
    tag: str
    about: str


class CompletenessTests(SynchronousTestCase):
    def test_a_route_without_schemas_is_named(self) -> None:
        """A route declared without its answers or a docstring is named, with what to add."""
        found = problems([_Mounted("/api/new", _Undocumented.app, "new", "A new area.")])
        self.assertEqual(
            found,
            [
                "GET /api/new/things/{thing_id} (get_thing): declare its answers, e.g."
                " route(..., answers={200: ...})",
                "GET /api/new/things/{thing_id} (get_thing): write a docstring; its first"
                " sentence is the summary",
            ],
        )

    def test_head_goes_with_get(self) -> None:
        """A route declared for GET and HEAD is one operation, GET."""
        found = [(p, m) for _, p, m, _ in operations(APPS) if p == "/healthz"]
        self.assertEqual(found, [("/healthz", "get")])


class ReferenceTests(SynchronousTestCase):
    def test_docs_api_md_is_current(self) -> None:
        """docs/api.md's generated reference is the one the declarations render now."""
        text = DOCS_API.read_text(encoding="utf-8")
        current = text[text.index(BEGIN) : text.index(END) + len(END) + 1]
        wanted = markdown(api_document(APPS))
        self.assertTrue(
            current == wanted,
            f"docs/api.md's API reference is stale: run `{REGENERATE}` and commit it",
        )

    def test_every_operation_is_in_the_reference(self) -> None:
        """Each operation has its heading in the reference, and each named schema too."""
        document = api_document(APPS)
        rendered = markdown(document)
        for path, item in document["paths"].items():
            for method in item:
                self.assertIn(f"#### `{method.upper()} {path}`", rendered)
        for name in document["components"]["schemas"]:
            self.assertIn(f"#### {name}\n", rendered)


class CommandTests(SynchronousTestCase):
    def test_write_replaces_only_the_generated_part(self) -> None:
        """``--write`` replaces what is between the markers, keeps the rest, and says whether
        it changed anything; ``--markdown`` prints the same reference."""
        scratch = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, scratch)
        path = scratch / "api.md"
        path.write_text(f"# Hand-written\n\nKept.\n\n{BEGIN}\nold\n{END}\n\nAfter.\n")
        printed = io.StringIO()
        with redirect_stdout(printed):
            main(["--write", str(path)])
            main(["--write", str(path)])
        self.assertEqual(printed.getvalue(), f"{path}: updated\n{path}: up to date\n")
        text = path.read_text()
        wanted = markdown(api_document(APPS))
        self.assertEqual(text, f"# Hand-written\n\nKept.\n\n{wanted}\nAfter.\n")
        reference = io.StringIO()
        with redirect_stdout(reference):
            main(["--markdown"])
        self.assertEqual(reference.getvalue(), wanted)

    def test_prints_the_document(self) -> None:
        """With no option it prints the document as JSON."""
        printed = io.StringIO()
        with redirect_stdout(printed):
            main([])
        self.assertEqual(json.loads(printed.getvalue()), json.loads(json.dumps(api_document(APPS))))
