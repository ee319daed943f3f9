"""Bearer-token authentication for every `/api/v1/*` route except the public ones."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

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


class TokenRefused(Exception):
    """The token is invalid or expired, or its account is gone or disabled."""


async def check_token(app: web.Application, token: str) -> tuple[User, datetime]:
    """The user a token belongs to, and when the token expires (HTTP and Socket.IO alike)."""
    try:
        claims = app[TOKENS].decode(token)
    except InvalidTokenError as exc:
        raise TokenRefused(str(exc)) from exc
    user = await users.get(app[POOL], claims.user_id)
    if user is None or user.disabled:
        raise TokenRefused("the account of this token no longer exists or is disabled")
    return user, claims.expires_at


async def user_from_token(request: web.Request, token: str) -> User:
    try:
        user, _ = await check_token(request.app, token)
    except TokenRefused as exc:
        raise Unauthorized(str(exc)) from exc
    return user


async def compat_user(request: web.Request) -> User:
    """The former system's routes live outside /api/v1: a bearer header or `?token=`."""
    token = bearer_token(request) or request.query.get("token")
    if not token:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    return await user_from_token(request, token)


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
