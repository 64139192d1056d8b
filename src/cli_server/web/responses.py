"""JSON responses and the error handlers every Klein app of ours installs."""

from __future__ import annotations

from klein import Klein
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from cli_server.db.pool import DatabaseUnavailable
from cli_server.domain.errors import ApiError
from cli_server.plumbing.encoding import JSON, dumps

_log = Logger(namespace="cli_server.web")


def json_response(request: IRequest, value: JSON, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return dumps(value)


def no_content(request: IRequest) -> bytes:
    request.setResponseCode(204)
    return b""


def error_body(code: str, message: str, **extra: JSON) -> dict[str, JSON]:
    return {"error": {"code": code, "message": message, **extra}}


def install_json_errors(app: Klein) -> None:
    """Every error becomes ``{"error": {"code", "message"}}`` with the right status."""

    @app.handle_errors(ApiError)
    def api_error(self: object, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, ApiError)
        for name, value in error.headers().items():
            request.setHeader(name, value)
        body = error_body(error.code, error.message, **error.details())
        return json_response(request, body, error.status)

    @app.handle_errors(DatabaseUnavailable)
    def db_down(self: object, request: IRequest, failure: Failure) -> bytes:
        _log.warn("database unavailable: {why}", why=str(failure.value))
        request.setHeader(b"retry-after", b"5")
        body = error_body("database_unavailable", "the database is not answering; try again soon")
        return json_response(request, body, 503)

    @app.handle_errors(HTTPException)
    def routing(self: object, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPException)
        status = error.code or 500
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        message = {404: "no such API route", 405: "method not allowed on this route"}.get(
            status, error.description or "request failed"
        )
        return json_response(request, error_body(code, message), status)

    @app.handle_errors(CancelledError)
    def cancelled(self: object, request: IRequest, failure: Failure) -> bytes:
        return b""  # the client went away; nobody reads this

    @app.handle_errors(Exception)
    def unexpected(self: object, request: IRequest, failure: Failure) -> bytes:
        _log.failure(
            "unhandled error in {method} {path}", failure, method=request.method, path=request.path
        )
        return json_response(request, error_body("internal_error", "internal server error"), 500)
