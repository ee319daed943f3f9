"""The `users` table: operators and admins who log in to wagate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import asyncpg

if TYPE_CHECKING:
    from db import Executor

Role = Literal["admin", "operator"]

_COLUMNS = "id, email, password_hash, role, display_name, disabled, created_at, last_login_at"

_INSERT = f"""
INSERT INTO users (email, password_hash, role, display_name)
VALUES ($1, $2, $3, $4)
ON CONFLICT ((lower(email))) DO NOTHING
RETURNING {_COLUMNS}
"""
_BY_ID = f"SELECT {_COLUMNS} FROM users WHERE id = $1"
_BY_EMAIL = f"SELECT {_COLUMNS} FROM users WHERE lower(email) = lower($1)"
_LIST = f"SELECT {_COLUMNS} FROM users ORDER BY id"
_COUNT_ADMINS = "SELECT count(*) FROM users WHERE role = 'admin'"
_TOUCH_LOGIN = "UPDATE users SET last_login_at = now() WHERE id = $1"
_SET_PASSWORD = "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1"
_SET_DISABLED = "UPDATE users SET disabled = $2, updated_at = now() WHERE id = $1"


@dataclass(frozen=True)
class User:
    id: int
    email: str
    password_hash: str
    role: Role
    display_name: str | None
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> User:
        return cls(
            id=row["id"],
            email=row["email"],
            password_hash=row["password_hash"],
            role=row["role"],
            display_name=row["display_name"],
            disabled=row["disabled"],
            created_at=row["created_at"],
            last_login_at=row["last_login_at"],
        )


async def create(
    conn: Executor,
    *,
    email: str,
    password_hash: str,
    role: Role = "operator",
    display_name: str | None = None,
) -> User | None:
    """Insert a user; None when the e-mail is taken (case-insensitively)."""
    row = await conn.fetchrow(_INSERT, email, password_hash, role, display_name)
    return User.from_row(row) if row else None


async def get(conn: Executor, user_id: int) -> User | None:
    row = await conn.fetchrow(_BY_ID, user_id)
    return User.from_row(row) if row else None


async def get_by_email(conn: Executor, email: str) -> User | None:
    row = await conn.fetchrow(_BY_EMAIL, email)
    return User.from_row(row) if row else None


async def list_all(conn: Executor) -> list[User]:
    return [User.from_row(row) for row in await conn.fetch(_LIST)]


async def count_admins(conn: Executor) -> int:
    return int(await conn.fetchval(_COUNT_ADMINS))


async def touch_login(conn: Executor, user_id: int) -> None:
    await conn.execute(_TOUCH_LOGIN, user_id)


async def set_password(conn: Executor, user_id: int, password_hash: str) -> None:
    await conn.execute(_SET_PASSWORD, user_id, password_hash)


async def set_disabled(conn: Executor, user_id: int, disabled: bool) -> None:
    await conn.execute(_SET_DISABLED, user_id, disabled)
