"""Our error type and the middleware that turns every failure into one JSON shape.

Every error answer is `{"error": {"code": "...", "message": "...", "details": ...?}}` with the
right status; an unexpected exception is logged with its traceback and answered as a bare 500
that shows nothing of the internals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}

# Headers of an aiohttp HTTP error worth keeping on the JSON answer.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Location")


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def json_error(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.json_response(error_body(code, message, details), status=status, headers=headers)


class ApiError(Exception):
    """An error meant for the client: status, a stable machine code and a human message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.details = details
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return json_error(self.status, self.code, self.message, self.details, self.headers)


class NotFound(ApiError):
    def __init__(self, what: str = "resource") -> None:
        super().__init__(404, f"{what} not found")


class Unauthorized(ApiError):
    def __init__(self, message: str = "authentication required") -> None:
        super().__init__(401, message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    def __init__(self, message: str = "not allowed") -> None:
        super().__init__(403, message)


class Conflict(ApiError):
    def __init__(self, message: str, *, code: str = "conflict") -> None:
        super().__init__(409, message, code=code)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _http_error_message(exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return "request body is too large"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return f"method {exc.method} is not allowed here"
    if isinstance(exc, web.HTTPNotFound):
        return "no such route"
    return exc.reason or "error"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}
        code = _CODES.get(exc.status, "error")
        return json_error(exc.status, code, _http_error_message(exc), headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        return json_error(500, "internal", "internal server error")
