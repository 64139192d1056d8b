"""Every operation of the REST API has unit tests: each route test module lists the
operations it covers (``COVERS``, OpenAPI operation ids) and checks each one's success answer
with ``RouteCase.answered``; together they must name every operation of the document, each
once. A new route without tests fails here."""

from __future__ import annotations

import importlib
import inspect
import re

from twisted.trial.unittest import SynchronousTestCase

from cli_server.web.openapi import api_document
from cli_server.web.site import APPS

ROUTE_TESTS = (
    "test_admin_api",
    "test_agents_api",
    "test_auth_api",
    "test_invitations_api",
    "test_sandboxes_api",
    "test_site",
    "test_sso_api",
    "test_workspaces_api",
)


class CoverageTests(SynchronousTestCase):
    def test_every_operation_is_covered_once(self) -> None:
        """The operations the route test modules cover are exactly the document's."""
        claimed: dict[str, str] = {}
        for name in ROUTE_TESTS:
            module = importlib.import_module(f"tests.unit.web.{name}")
            source = inspect.getsource(module)
            for operation in module.COVERS:
                self.assertNotIn(operation, claimed, f"{name} and {claimed.get(operation)}")
                claimed[operation] = name
                # (and it checks that operation's success answer against the declared schema)
                checked = re.search(rf'answered\(\s*"{operation}"', source)
                self.assertIsNotNone(checked, f"{name} claims {operation} but never answers it")
        paths = api_document(APPS)["paths"]
        documented = {
            operation["operationId"]
            for item in paths.values()
            for method, operation in item.items()
            if method != "parameters"
        }
        self.assertEqual(sorted(documented - set(claimed)), [], "operations without unit tests")
        self.assertEqual(sorted(set(claimed) - documented), [], "no such operations")
