"""The `sessions` table: linked WhatsApp accounts and their honest state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from db import Executor

_COLUMNS = (
    "id, owner_id, channel, name, phone, jid, lid, push_name, state, desired_state, "
    "last_error, banned_until, state_changed_at, connected_at, created_at, updated_at"
)

_INSERT = f"""
INSERT INTO sessions (owner_id, channel, name, desired_state)
VALUES ($1, $2, $3, $4)
RETURNING {_COLUMNS}
"""
_BY_ID = f"SELECT {_COLUMNS} FROM sessions WHERE id = $1"
_BY_OWNER = f"SELECT {_COLUMNS} FROM sessions WHERE owner_id = $1 ORDER BY id"
_ALL = f"SELECT {_COLUMNS} FROM sessions ORDER BY id"
_COUNT_BY_OWNER = "SELECT count(*) FROM sessions WHERE owner_id = $1"
_TO_RUN = f"SELECT {_COLUMNS} FROM sessions WHERE desired_state = 'running' AND channel = 'web'"
_SET_STATE = f"""
UPDATE sessions
SET state = $2,
    last_error = $3,
    banned_until = $4,
    state_changed_at = CASE WHEN state IS DISTINCT FROM $2 THEN now() ELSE state_changed_at END,
    connected_at = CASE WHEN $2 = 'connected' AND state IS DISTINCT FROM 'connected'
                        THEN now() ELSE connected_at END,
    updated_at = now()
WHERE id = $1
RETURNING {_COLUMNS}
"""
_SET_DESIRED = "UPDATE sessions SET desired_state = $2, updated_at = now() WHERE id = $1"
_SET_IDENTITY = f"""
UPDATE sessions
SET jid = coalesce($2, jid), lid = coalesce($3, lid), phone = coalesce($4, phone),
    push_name = coalesce($5, push_name), updated_at = now()
WHERE id = $1
RETURNING {_COLUMNS}
"""
_CLEAR_IDENTITY = "UPDATE sessions SET jid = NULL, lid = NULL, updated_at = now() WHERE id = $1"
_DELETE = "DELETE FROM sessions WHERE id = $1"
_RENAME = "UPDATE sessions SET name = $2, updated_at = now() WHERE id = $1"

STATES = (
    "stopped",
    "starting",
    "qr_required",
    "pairing",
    "connecting",
    "connected",
    "reconnecting",
    "qr_expired",
    "logged_out",
    "banned",
    "replaced",
    "failed",
)


@dataclass(frozen=True)
class Session:
    id: int
    owner_id: int
    channel: str
    name: str
    phone: str | None
    jid: str | None
    lid: str | None
    push_name: str | None
    state: str
    desired_state: str
    last_error: str | None
    banned_until: datetime | None
    state_changed_at: datetime
    connected_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Session:
        return cls(**dict(row))


async def create(
    conn: Executor, *, owner_id: int, name: str, channel: str = "web", run: bool = True
) -> Session:
    row = await conn.fetchrow(_INSERT, owner_id, channel, name, "running" if run else "stopped")
    assert row is not None
    return Session.from_row(row)


async def get(conn: Executor, session_id: int) -> Session | None:
    row = await conn.fetchrow(_BY_ID, session_id)
    return Session.from_row(row) if row else None


async def list_for(conn: Executor, owner_id: int | None) -> list[Session]:
    """The owner's sessions, or every session when `owner_id` is None (admins)."""
    rows = await (conn.fetch(_ALL) if owner_id is None else conn.fetch(_BY_OWNER, owner_id))
    return [Session.from_row(r) for r in rows]


async def count_for(conn: Executor, owner_id: int) -> int:
    return int(await conn.fetchval(_COUNT_BY_OWNER, owner_id))


async def to_run(conn: Executor) -> list[Session]:
    return [Session.from_row(r) for r in await conn.fetch(_TO_RUN)]


async def set_state(
    conn: Executor,
    session_id: int,
    state: str,
    *,
    last_error: str | None = None,
    banned_until: datetime | None = None,
) -> Session | None:
    row = await conn.fetchrow(_SET_STATE, session_id, state, last_error, banned_until)
    return Session.from_row(row) if row else None


async def set_desired(conn: Executor, session_id: int, desired: str) -> None:
    await conn.execute(_SET_DESIRED, session_id, desired)


async def set_identity(
    conn: Executor,
    session_id: int,
    *,
    jid: str | None = None,
    lid: str | None = None,
    phone: str | None = None,
    push_name: str | None = None,
) -> Session | None:
    row = await conn.fetchrow(_SET_IDENTITY, session_id, jid, lid, phone, push_name)
    return Session.from_row(row) if row else None


async def clear_identity(conn: Executor, session_id: int) -> None:
    await conn.execute(_CLEAR_IDENTITY, session_id)


async def rename(conn: Executor, session_id: int, name: str) -> None:
    await conn.execute(_RENAME, session_id, name)


async def delete(conn: Executor, session_id: int) -> None:
    await conn.execute(_DELETE, session_id)
