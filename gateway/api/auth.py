"""`POST /api/v1/auth/login` and `GET /api/v1/me`."""

from __future__ import annotations

from datetime import datetime

import structlog
from aiohttp import web
from pydantic import BaseModel, Field

from db import users
from gateway.auth import client_ip, current_user
from gateway.errors import ApiError, Unauthorized
from gateway.keys import LOGIN_LIMITER, METRICS, PASSWORDS, POOL, TOKENS
from gateway.models import UserOut
from gateway.routing import ApiRouter

router = ApiRouter("auth")
log = structlog.get_logger(__name__)


class LoginRequest(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime


@router.post(
    "/api/v1/auth/login",
    summary="Exchange e-mail and password for an access token",
    body=LoginRequest,
    response=TokenResponse,
    auth="public",
    errors=(400, 401, 429),
)
async def login(request: web.Request, body: LoginRequest) -> TokenResponse:
    app = request.app
    ip = client_ip(request)
    limiter = app[LOGIN_LIMITER]
    wait = await limiter.retry_after(ip, body.email)
    if wait is not None:
        app[METRICS].logins.labels("throttled").inc()
        log.warning("login throttled", ip=ip)
        raise ApiError(
            429,
            f"too many failed logins; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    user = await users.get_by_email(app[POOL], body.email)
    ok = await app[PASSWORDS].verify(user.password_hash if user else None, body.password)
    if user is None or not ok or user.disabled:
        await limiter.record_failure(ip, body.email)
        outcome = "disabled" if (user is not None and ok) else "bad_credentials"
        app[METRICS].logins.labels(outcome).inc()
        log.info("login refused", ip=ip, outcome=outcome)
        if outcome == "disabled":
            raise Unauthorized("this account is disabled")
        raise Unauthorized("wrong e-mail or password")
    await users.touch_login(app[POOL], user.id)
    token, expires = app[TOKENS].issue(user.id, user.role)
    app[METRICS].logins.labels("ok").inc()
    log.info("login", user_id=user.id, ip=ip)
    return TokenResponse(access_token=token, expires_at=expires)


@router.get("/api/v1/me", summary="The logged-in user", response=UserOut, errors=(401,))
async def me(request: web.Request) -> UserOut:
    return UserOut.from_user(current_user(request))
