"""First start: an admin account, so there is always someone who can log in."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from db import users
from gateway.security import PasswordService
from gateway.settings import Settings

log = structlog.get_logger(__name__)

INITIAL_PASSWORD_FILE = "initial_admin_password"


@dataclass(frozen=True)
class BootstrappedAdmin:
    email: str
    generated_password: str | None
    password_file: Path | None


async def ensure_admin(
    pool: asyncpg.Pool, settings: Settings, passwords: PasswordService
) -> BootstrappedAdmin | None:
    """Create the admin when no admin exists yet; say what was created (None: nothing)."""
    if await users.count_admins(pool) > 0:
        return None
    given = settings.admin_password.get_secret_value() if settings.admin_password else ""
    password = given or secrets.token_urlsafe(12)
    created = await users.create(
        pool,
        email=settings.admin_email,
        password_hash=await passwords.hash(password),
        role="admin",
        display_name="Administrator",
    )
    if created is None:
        # The e-mail belongs to an operator: do not silently promote or overwrite it.
        log.warning(
            "no admin exists and WAGATE_ADMIN_EMAIL is taken by an operator; "
            "create an admin with `run.py create-user --admin`",
            email=settings.admin_email,
        )
        return None
    log.info("admin account created", email=created.email)
    if given:
        return BootstrappedAdmin(created.email, None, None)
    settings.ensure_data_dir()
    path = settings.data_dir / INITIAL_PASSWORD_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(f"{created.email}\n{password}\n")
    return BootstrappedAdmin(created.email, password, path)
