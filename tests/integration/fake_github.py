"""A FAKE GitHub (the real one cannot be reached here), just enough of its OAuth app flow:
``/login/oauth/authorize`` (signs in ``next_user`` at once and sends the browser back with a
code), ``/login/oauth/access_token`` (checks the client, the code, the redirect URI and the
PKCE verifier), ``/user`` and ``/user/emails`` with the bearer token."""

from __future__ import annotations

import hashlib
import json
import secrets
from base64 import urlsafe_b64encode
from typing import Any
from urllib.parse import urlencode

from attrs import define, field
from twisted.web.resource import Resource

CLIENT_ID, CLIENT_SECRET = "gh-client", "gh-secret"


@define
class GithubUser:
    id: int
    login: str
    name: str | None = None
    emails: list[dict[str, Any]] = field(factory=list)  # {"email", "primary", "verified"}


class FakeGithub(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.next_user: GithubUser | None = None  # who "signs in" at the authorize page
        self._codes: dict[str, tuple[GithubUser, str, str]] = {}  # code -> user, uri, challenge
        self._tokens: dict[str, GithubUser] = {}
        self.seen: list[str] = []

    def render_GET(self, request: Any) -> bytes:
        path = request.path.decode()
        self.seen.append(path)
        path = path.removeprefix("/api")  # (the API's own base URL, as api.github.com is)
        if path == "/login/oauth/authorize":
            return self._authorize(request)
        user = self._bearer(request)
        if user is None:
            return _json(request, {"message": "Bad credentials"}, 401)
        if path == "/user":
            return _json(request, {"id": user.id, "login": user.login, "name": user.name})
        if path == "/user/emails":
            return _json(request, user.emails)
        return _json(request, {"message": "Not Found"}, 404)

    def render_POST(self, request: Any) -> bytes:
        self.seen.append(request.path.decode())
        if request.path != b"/login/oauth/access_token":
            return _json(request, {"message": "Not Found"}, 404)
        form = {k.decode(): v[0].decode() for k, v in request.args.items()}
        if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
            return _json(request, {"error": "incorrect_client_credentials"})
        found = self._codes.pop(form.get("code", ""), None)  # (a code works once)
        if found is None:
            return _json(request, {"error": "bad_verification_code"})
        user, redirect_uri, challenge = found
        verifier = form.get("code_verifier", "")
        digest = urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
        if form.get("redirect_uri") != redirect_uri or digest.decode() != challenge:
            return _json(request, {"error": "bad_verification_code"})
        token = secrets.token_hex(20)
        self._tokens[token] = user
        return _json(request, {"access_token": token, "token_type": "bearer", "scope": "x"})

    def _authorize(self, request: Any) -> bytes:
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        redirect_uri = args.get("redirect_uri", "")
        if args.get("client_id") != CLIENT_ID or args.get("code_challenge_method") != "S256":
            return _json(request, {"message": "bad authorize request"}, 400)
        if self.next_user is None:
            answer = {"error": "access_denied", "state": args.get("state", "")}
        else:
            code = secrets.token_hex(10)
            self._codes[code] = (self.next_user, redirect_uri, args.get("code_challenge", ""))
            answer = {"code": code, "state": args.get("state", "")}
        request.setResponseCode(302)
        request.setHeader(b"location", f"{redirect_uri}?{urlencode(answer)}".encode())
        return b""

    def _bearer(self, request: Any) -> GithubUser | None:
        header = (request.getHeader(b"authorization") or b"").decode()
        return self._tokens.get(header.removeprefix("Bearer ")) if header else None


def _json(request: Any, value: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value).encode()
