"""Serving the built web UI: hashed assets cached for a year, ``index.html`` never cached, and
every other path answered with ``index.html`` so the single-page app can route it."""

from __future__ import annotations

import mimetypes
from importlib.resources import files
from pathlib import Path

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

_CSP = (
    b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_NOT_BUILT = (
    b"<!doctype html><title>cli-server</title><p>The web UI is not built. From the checkout: "
    b"<code>npm install && npm run build -w webui</code>, then reinstall with pip. The API "
    b"works meanwhile.</p>"
)


def default_root() -> Path:
    return Path(str(files("cli_server").joinpath("webui_dist")))


class WebUI(Resource):
    isLeaf = True

    def __init__(self, root: Path | None = None) -> None:
        super().__init__()
        self._root = (root or default_root()).resolve()

    def render_HEAD(self, request: IRequest) -> bytes:
        return self.render_GET(request)

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"same-origin")
        path = request.path.decode("utf-8", "replace")
        if path.startswith("/assets/"):
            asset = (self._root / path.lstrip("/")).resolve()
            if asset.is_file() and asset.is_relative_to(self._root / "assets"):
                kind = mimetypes.guess_type(asset.name)[0] or "application/octet-stream"
                request.setHeader(b"content-type", kind.encode())
                request.setHeader(b"cache-control", b"public, max-age=31536000, immutable")
                data: bytes = asset.read_bytes()  # a few hundred KiB, hashed, read once per browser
                return data
            request.setResponseCode(404)
            return b"not found"
        index = self._root / "index.html"
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"content-security-policy", _CSP)
        request.setHeader(b"x-frame-options", b"DENY")
        if not index.is_file():
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return _NOT_BUILT
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return index.read_bytes()
