"""``web.site.MainSite``'s own routes: liveness, readiness, the metrics page and the API
document (the areas it mounts have their own test modules)."""

from __future__ import annotations

from cli_server.web.openapi import operations
from cli_server.web.site import APPS, MainSite
from tests.unit.web.fakes import RouteCase, World, main_site

COVERS = frozenset({"healthz", "readyz", "metrics", "openapi"})


class SiteRouteTests(RouteCase):
    api_class = MainSite

    def setUp(self) -> None:
        self.world = World()
        self.ready = True
        self.draining = False
        self.api = main_site(self.world, ready=lambda: self.ready, draining=lambda: self.draining)

    def test_healthz(self) -> None:
        """GET /healthz: always ok while the process runs, started or not."""
        self.ready = False
        self.assertEqual(self.answered("healthz", 200, "GET", "/healthz").body, {"status": "ok"})

    def test_readyz(self) -> None:
        """GET /readyz: ready once started and PostgreSQL answers; 503 while starting or
        draining, without asking the database."""
        self.assertEqual(self.answered("readyz", 200, "GET", "/readyz").body, {"status": "ready"})
        self.assertEqual(self.world.db.asked, ["ping"])
        self.ready = False
        answer = self.answered("readyz", 503, "GET", "/readyz")
        self.assertEqual(answer.code, "starting")
        self.draining = True
        answer = self.answered("readyz", 503, "GET", "/readyz")  # (valid: DRAINING)
        self.assertEqual(answer.body, {"status": "draining"})
        self.assertEqual(self.world.db.asked, ["ping"])

    def test_metrics(self) -> None:
        """GET /metrics: Prometheus text for this host's scrapers; through a proxy (an
        ``X-Forwarded-For``), an unknown route."""
        answer = self.answered("metrics", 200, "GET", "/metrics")
        self.assertEqual(
            answer.header(b"content-type"), b"text/plain; version=0.0.4; charset=utf-8"
        )
        self.assertIn("# TYPE", answer.body)
        answer = self.refused("GET", "/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
        self.assertEqual((answer.status, answer.code), (404, "not_found"))

    def test_openapi(self) -> None:
        """GET /api/openapi.json: the document, with every operation of the API."""
        answer = self.answered("openapi", 200, "GET", "/api/openapi.json")
        listed = {
            (path, method)
            for path, methods in answer.body["paths"].items()
            for method in methods
            if method != "parameters"
        }
        self.assertEqual(listed, {(path, method) for _, path, method, _ in operations(APPS)})

    def test_mounts_wait_for_start(self) -> None:
        """Until start-up has finished, a mounted area answers 503 ``starting``, and an
        unknown /api path is 404."""
        self.ready = False
        for path in ("/api/auth/me", "/api/auth/registration", "/api/auth"):
            answer = self.refused("GET", path)
            self.assertEqual((answer.status, answer.code), (503, "starting"), path)
        self.ready = True
        answer = self.refused("GET", "/api/nothing-here")
        self.assertEqual((answer.status, answer.code), (404, "not_found"))
