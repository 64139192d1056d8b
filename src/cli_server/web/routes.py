"""How an API route is declared: the Origin rule and the caller are part of the declaration.

``route(app, path, methods=[...])`` declares a Klein route whose handler receives the
signed-in ``User`` after the request: ``handler(self, request, user, **path_args)``. Every
method that may change state (all but GET, HEAD, OPTIONS) passes the same-origin rule
first, on every route, public ones too; so a state-changing route cannot be declared
without it. ``public=True`` routes (login, register, health, single sign-on...) get no user:
``handler(self, request, **path_args)``.

The declaration also says what the route is for the API document and for API tokens:
``scope`` is the least token scope that may call it (``read`` for safe methods and ``write``
for the others unless declared; ``admin`` for the instance admin's and the token routes;
``session`` for what only a signed-in browser may do, such as changing the password), and
``body`` / ``answers`` are the JSON Schemas of the request body and of each status's answer
(``web.schemas``): every success status, and the error statuses particular to the route (409,
429...) with ``ERROR``; the API document adds those every route of its kind may answer.
``query`` is the schema of the query parameters a route reads (an object of strings; a route
that refuses bad ones lists its 400).

On a route that is not public, a request with ``Authorization: Bearer`` is an API token's
(``web.bearer``): no cookie is read and the Origin rule does not apply, the token being
required instead; public routes apply the Origin rule to every request. A token restricted to
one workspace may call a route whose path names no workspace, sandbox or invitation only if
it is declared ``across_workspaces`` (its handler then shows such a caller nothing of other
workspaces, ``User.reaches``).

The instance the app belongs to holds the ``SessionCookies`` as ``_cookies``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import wraps
from typing import Any, Literal, Protocol

from attrs import frozen
from klein import Klein
from twisted.web.iweb import IRequest

from cli_server.web.session import SessionCookies

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[..., Any]
Scope = Literal["read", "write", "admin", "session"]
Schema = Mapping[str, Any]  # a JSON Schema (draft 2020-12, as OpenAPI 3.1 uses)


class HasSession(Protocol):
    """What an API class offers the routes declared on its app."""

    @property
    def _cookies(self) -> SessionCookies: ...


@frozen
class Declaration:
    """One route as declared: what ``declared`` answers for the app's url map."""

    endpoint: str
    path: str
    methods: tuple[str, ...]
    public: bool
    scope: Scope
    summary: str
    body: Schema | None
    answers: Mapping[int, Schema | None]
    across_workspaces: bool = False
    query: Schema | None = None


# By ``id(app)``: Klein apps compare by value (unhashable); ours are class attributes, alive
# as long as the process.
_declared: dict[int, list[Declaration]] = {}


def declared(app: Klein) -> dict[str, Declaration]:
    """The routes of ``app`` declared with ``route``, by Klein endpoint name (a branch route's
    second rule, ``<name>_branch``, is listed under that name too)."""
    found: dict[str, Declaration] = {}
    for declaration in _declared.get(id(app), []):
        found[declaration.endpoint] = declaration
        found[declaration.endpoint + "_branch"] = declaration
    return found


def route(
    app: Klein,
    path: str,
    *,
    methods: Sequence[str],
    public: bool = False,
    scope: Scope | None = None,
    body: Schema | None = None,
    answers: Mapping[int, Schema | None] | None = None,
    across_workspaces: bool = False,
    query: Schema | None = None,
    **options: bool,
) -> Callable[[Handler], Handler]:
    """Declare ``path`` on ``app`` (``options`` go to Klein: ``branch``, ``strict_slashes``).

    ``answers`` maps each success status to its body's schema (``None``: no body).
    """
    allowed = tuple(m.upper() for m in methods)
    least: Scope = scope or ("read" if set(allowed) <= SAFE_METHODS else "write")

    def declare(handler: Handler) -> Handler:
        @wraps(handler)
        async def guarded(self: HasSession, request: IRequest, *args: Any, **kwargs: Any) -> Any:
            cookies = self._cookies
            if public:
                # (a no-op for GET, HEAD and OPTIONS; a branch leaves a token request to the
                # mounted app's routes)
                cookies.check_origin(request, mount=bool(options.get("branch")))
                answer = handler(self, request, *args, **kwargs)
            else:
                user = await cookies.caller(request, least, across_workspaces, kwargs)
                answer = handler(self, request, user, *args, **kwargs)
            if inspect.isawaitable(answer):
                return await answer
            return answer

        app.route(path, methods=list(allowed), **options)(guarded)
        _declared.setdefault(id(app), []).append(
            Declaration(
                handler.__name__,
                path,
                allowed,
                public,
                least,
                inspect.getdoc(handler) or "",
                body,
                dict(answers or {}),
                across_workspaces=across_workspaces,
                query=query,
            )
        )
        return guarded

    return declare
