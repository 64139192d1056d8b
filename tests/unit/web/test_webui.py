"""Serving the built UI: SPA fallback, caching rules, no escape from the assets folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from cli_server.web.webui import WebUI


class WebUITests(SynchronousTestCase):
    def setUp(self) -> None:
        root = Path(tempfile.mkdtemp())
        (root / "assets").mkdir()
        (root / "index.html").write_text("<!doctype html><title>ui</title>")
        (root / "assets" / "index-abc.js").write_text("console.log(1)")
        (root / "assets" / "favicon-abc.svg").write_text("<svg/>")
        (root.parent / "secret.txt").write_text("no")
        self.client = StubTreq(WebUI(root))

    def get(self, path: str) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        response = self.successResultOf(self.client.get("http://x" + path))
        body = self.successResultOf(response.content())
        return response.code, dict(response.headers.getAllRawHeaders()), body

    def test_index_is_not_cached_and_locked_down(self) -> None:
        """index.html (and any app route) is served uncached with a strict CSP."""
        for path in ("/", "/workspaces/123", "/deep/link?x=1"):
            code, headers, body = self.get(path)
            self.assertEqual((code, body), (200, b"<!doctype html><title>ui</title>"))
            self.assertEqual(headers[b"Cache-Control"], [b"no-cache"])
            self.assertIn(b"default-src 'self'", headers[b"Content-Security-Policy"][0])
            self.assertEqual(headers[b"X-Frame-Options"], [b"DENY"])

    def test_dashboard_addresses_serve_the_app(self) -> None:
        """Every address the dashboard gives out loads the app on reload or from a link."""
        for path in ("/w/0b7c4c1e", "/w/0b7c4c1e/members", "/account", "/admin/users"):
            code, headers, body = self.get(path)
            self.assertEqual((code, body), (200, b"<!doctype html><title>ui</title>"), path)
            self.assertEqual(headers[b"Content-Type"], [b"text/html; charset=utf-8"])

    def test_favicon_is_typed_svg(self) -> None:
        """The favicon (emitted into assets/ by the build) is served as SVG."""
        code, headers, body = self.get("/assets/favicon-abc.svg")
        self.assertEqual((code, body), (200, b"<svg/>"))
        self.assertEqual(headers[b"Content-Type"], [b"image/svg+xml"])

    def test_hashed_assets_are_cached_for_a_year(self) -> None:
        """Assets are immutable (their names carry a hash) and typed."""
        code, headers, body = self.get("/assets/index-abc.js")
        self.assertEqual((code, body), (200, b"console.log(1)"))
        self.assertEqual(headers[b"Cache-Control"], [b"public, max-age=31536000, immutable"])
        self.assertEqual(headers[b"Content-Type"], [b"text/javascript"])

    def test_no_escape_and_missing_assets_are_404(self) -> None:
        """Traversal out of assets/ and unknown assets answer 404, not the app."""
        for path in (
            "/assets/../../secret.txt",
            "/assets/%2e%2e/%2e%2e/secret.txt",
            "/assets/nope.js",
        ):
            code, _, body = self.get(path)
            self.assertEqual(code, 404, path)
            self.assertNotIn(b"no", body.replace(b"not found", b""))

    def test_not_built_says_how_to_build(self) -> None:
        """Without a build, the page says which command builds it."""
        client = StubTreq(WebUI(Path(tempfile.mkdtemp())))
        response = self.successResultOf(client.get("http://x/"))
        self.assertIn(b"npm run build -w webui", self.successResultOf(response.content()))
