"""`/api/v1/users`: admins create and list accounts."""

from __future__ import annotations

from typing import Literal

import structlog
from aiohttp import web
from pydantic import BaseModel, EmailStr, Field

from db import users
from gateway.errors import Conflict
from gateway.keys import PASSWORDS, POOL
from gateway.models import UserOut
from gateway.routing import ApiRouter

router = ApiRouter("users")
log = structlog.get_logger(__name__)

MIN_PASSWORD = 8


class UserCreate(BaseModel):
    email: EmailStr
    password: str = Field(min_length=MIN_PASSWORD, max_length=1024)
    role: Literal["admin", "operator"] = "operator"
    display_name: str | None = Field(default=None, max_length=200)


class UserList(BaseModel):
    items: list[UserOut]


@router.post(
    "/api/v1/users",
    summary="Create a user (admin only)",
    body=UserCreate,
    response=UserOut,
    status=201,
    auth="admin",
    errors=(400, 401, 403, 409),
)
async def create_user(request: web.Request, body: UserCreate) -> UserOut:
    password_hash = await request.app[PASSWORDS].hash(body.password)
    user = await users.create(
        request.app[POOL],
        email=str(body.email),
        password_hash=password_hash,
        role=body.role,
        display_name=body.display_name,
    )
    if user is None:
        raise Conflict(f"a user with e-mail {body.email} already exists", code="email_taken")
    log.info("user created", new_user_id=user.id, role=user.role)
    return UserOut.from_user(user)


@router.get(
    "/api/v1/users",
    summary="List users (admin only)",
    response=UserList,
    auth="admin",
    errors=(401, 403),
)
async def list_users(request: web.Request) -> UserList:
    return UserList(items=[UserOut.from_user(u) for u in await users.list_all(request.app[POOL])])
