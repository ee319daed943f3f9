"""Structured logging: key=value or JSON lines, a request id per request, secrets redacted.

structlog renders both our own log calls and those of libraries (aiohttp, asyncpg, ...) that go
through the standard `logging` module, so every line has the same shape.
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog
from aiohttp import web

from gateway.keys import REQUEST_ID

_SECRET_KEYS = re.compile(
    r"pass(word)?|secret|token|authorization|api[_-]?key|cookie|credential", re.IGNORECASE
)
# user:password@ in any URL-looking string.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)
# Bearer tokens and query-string secrets that end up in messages.
_INLINE_SECRET = re.compile(
    r"(?P<key>(?:bearer\s+|(?:access_token|token|password|secret|api_key)=))[^\s&\"']+", re.I
)
REDACTED = "***"


def redact_text(text: str) -> str:
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    return _INLINE_SECRET.sub(lambda m: f"{m['key']}{REDACTED}", text)


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEYS.search(key) and value not in (None, "", False):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    return value


def redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key == "event":
            if isinstance(event_dict[key], str):
                event_dict[key] = redact_text(event_dict[key])
            continue
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def configure_logging(fmt: str = "kv", level: str = "info") -> None:
    """Send every log line, ours and the libraries', through one structlog renderer."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_processor,
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "logger", "event"], drop_missing=True
        )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log is replaced by `request_log_middleware`.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_access = structlog.get_logger("wagate.access")


# Request ids of quiet routes: this process's random prefix and a counter (no syscall each).
_QUIET_PREFIX = uuid.uuid4().hex[:16]
_quiet_ids = itertools.count(1)


@web.middleware
async def request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give each request an id (or keep a sane `X-Request-ID`), bind it to every log line."""
    if getattr(request.match_info.handler, "wagate_quiet_log", False):
        return await _quiet_request(request, handler)
    incoming = request.headers.get("X-Request-ID", "")
    request_id = incoming if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
            status = response.status
            response.headers["X-Request-ID"] = request_id
            return response
        except web.HTTPException as exc:
            status = exc.status
            exc.headers["X-Request-ID"] = request_id
            raise
        finally:
            if request.path not in ("/healthz", "/metrics"):
                _access.info(
                    "request",
                    method=request.method,
                    path=request.path,
                    status=status,
                    ms=round((time.perf_counter() - started) * 1000, 1),
                    remote=request.remote,
                )


async def _quiet_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A route that asked for quiet (Meta's webhook: thousands a second, each stored and counted
    anyway): a cheap request id, nothing bound to the context, and the access log line only for
    a refusal or a failure (at debug otherwise)."""
    request_id = f"{_QUIET_PREFIX}{next(_quiet_ids):016x}"
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-ID"] = request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-ID"] = request_id
        raise
    finally:
        (_access.info if status >= 400 else _access.debug)(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            ms=round((time.perf_counter() - started) * 1000, 1),
            remote=request.remote,
            request_id=request_id,
        )
