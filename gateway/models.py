"""API models shared by several resources."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from db.users import User


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class UserOut(BaseModel):
    id: int
    email: str
    role: Literal["admin", "operator"]
    display_name: str | None
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None

    @classmethod
    def from_user(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            email=user.email,
            role=user.role,
            display_name=user.display_name,
            disabled=user.disabled,
            created_at=user.created_at,
            last_login_at=user.last_login_at,
        )
