"""Bearer-token authentication for every `/api/v1/*` route except the public ones."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from db import users
from db.users import User
from gateway.errors import Unauthorized
from gateway.keys import POOL, REQUEST_USER, SETTINGS, TOKENS
from gateway.security import InvalidTokenError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROTECTED_PREFIX = "/api/v1/"


def client_ip(request: web.Request) -> str:
    if request.app[SETTINGS].trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            return forwarded.split(",")[0].strip()
    return request.remote or "unknown"


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def user_from_token(request: web.Request, token: str) -> User:
    try:
        claims = request.app[TOKENS].decode(token)
    except InvalidTokenError as exc:
        raise Unauthorized(str(exc)) from exc
    user = await users.get(request.app[POOL], claims.user_id)
    if user is None or user.disabled:
        raise Unauthorized("the account of this token no longer exists or is disabled")
    return user


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(PROTECTED_PREFIX):
        route_handler = request.match_info.handler
        if getattr(route_handler, "wagate_auth", "user") != "public":
            token = bearer_token(request)
            if token is None:
                raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
            user = await user_from_token(request, token)
            request[REQUEST_USER] = user
            structlog.contextvars.bind_contextvars(user_id=user.id)
    return await handler(request)


def current_user(request: web.Request) -> User:
    user: User | None = request.get(REQUEST_USER)
    if user is None:  # pragma: no cover - the middleware guarantees it
        raise Unauthorized()
    return user
