"""The `conversations` table: one row per chat of a session."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from db import Executor

# One statement: create the chat or bring its name and activity up to date. `unread_inc` counts
# the new inbound messages; the last-message time only moves forward.
_UPSERT = """
INSERT INTO conversations (session_id, external_id, kind, contact_name, wa_user_id, lid,
                           started_at, last_message_at, unread_count)
VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()), $7, $8)
ON CONFLICT (session_id, external_id) DO UPDATE SET
    contact_name = coalesce(EXCLUDED.contact_name, conversations.contact_name),
    wa_user_id = coalesce(conversations.wa_user_id, EXCLUDED.wa_user_id),
    lid = coalesce(conversations.lid, EXCLUDED.lid),
    last_message_at = greatest(conversations.last_message_at, EXCLUDED.last_message_at),
    unread_count = conversations.unread_count + EXCLUDED.unread_count,
    updated_at = now()
RETURNING id
"""
_BY_EXTERNAL = "SELECT id FROM conversations WHERE session_id = $1 AND external_id = $2"


async def upsert(
    conn: Executor,
    *,
    session_id: int,
    external_id: str,
    kind: str,
    contact_name: str | None,
    wa_user_id: str | None,
    lid: str | None,
    last_message_at: datetime | None,
    unread_inc: int = 0,
) -> int:
    return int(
        await conn.fetchval(
            _UPSERT,
            session_id,
            external_id,
            kind,
            contact_name,
            wa_user_id,
            lid,
            last_message_at,
            unread_inc,
        )
    )


async def id_by_external(conn: Executor, session_id: int, external_id: str) -> int | None:
    value = await conn.fetchval(_BY_EXTERNAL, session_id, external_id)
    return int(value) if value is not None else None
