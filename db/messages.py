"""The `messages` table: every message of every conversation, idempotent on
(session_id, wa_message_id)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from db.pool import custom_plans

if TYPE_CHECKING:
    from db import Executor

# Status only moves forward: pending < sent < delivered < read < played.
_RANK = "array_position(ARRAY['pending','sent','delivered','read','played']::text[], {})"
_RECEIPT = f"""
UPDATE messages SET status = $3, updated_at = now()
WHERE session_id = $1 AND wa_message_id = ANY($2::text[])
  AND status <> 'failed'
  AND coalesce({_RANK.format("status")}, 0) < {_RANK.format("$3")}
RETURNING id, conversation_id, wa_message_id, status
"""
_REACT = """
UPDATE messages
SET interactions = jsonb_set(
        interactions, '{reactions}',
        CASE WHEN $4 = '' THEN coalesce(interactions->'reactions', '{}'::jsonb) - $3
             ELSE coalesce(interactions->'reactions', '{}'::jsonb)
                  || jsonb_build_object($3::text, $4::text) END),
    updated_at = now()
WHERE session_id = $1 AND wa_message_id = $2
RETURNING id, conversation_id
"""
_VOTE = """
UPDATE messages
SET interactions = jsonb_set(
        interactions, '{votes}',
        coalesce(interactions->'votes', '{}'::jsonb)
        || jsonb_build_object(
            $3::text, jsonb_build_object('options', $4::text::jsonb, 'at', $5::text))),
    updated_at = now()
WHERE session_id = $1 AND wa_message_id = $2 AND message_type = 'poll'
RETURNING id, conversation_id
"""
_EDIT = """
UPDATE messages
SET interactions = jsonb_set(
        interactions, '{edits}',
        coalesce(interactions->'edits', '[]'::jsonb)
        || jsonb_build_array(jsonb_build_object('text', text_content, 'replaced_at', $4::text))),
    text_content = $3,
    edited_at = $5,
    updated_at = now()
WHERE session_id = $1 AND wa_message_id = $2
  AND text_content IS DISTINCT FROM $3
RETURNING id, conversation_id
"""
_REVOKE = """
UPDATE messages
SET revoked_at = coalesce(revoked_at, $3),
    text_content = CASE WHEN $4 THEN text_content ELSE NULL END,
    raw = CASE WHEN $4 THEN raw ELSE NULL END,
    updated_at = now()
WHERE session_id = $1 AND wa_message_id = $2
RETURNING id, conversation_id
"""


@dataclass(frozen=True)
class NewMessage:
    session_id: int
    conversation_id: int
    wa_message_id: str
    direction: str
    sender_type: str
    sender_jid: str | None
    sender_name: str | None
    message_type: str
    text_content: str | None
    media_sha256: str | None
    media_mime: str | None
    media_size: int | None
    media_filename: str | None
    media_status: str | None
    quoted_wa_message_id: str | None
    raw: dict[str, Any] | None
    status: str
    from_history: bool
    sent_at: datetime


async def apply_receipt(
    conn: Executor, session_id: int, wa_ids: list[str], status: str
) -> list[dict[str, Any]]:
    rows = await conn.fetch(_RECEIPT, session_id, wa_ids, status)
    return [dict(r) for r in rows]


async def react(
    conn: Executor, session_id: int, target_wa_id: str, reactor: str, emoji: str
) -> dict[str, Any] | None:
    row = await conn.fetchrow(_REACT, session_id, target_wa_id, reactor, emoji)
    return dict(row) if row else None


async def vote(
    conn: Executor,
    session_id: int,
    poll_wa_id: str,
    voter: str,
    options: list[str],
    when: datetime,
) -> dict[str, Any] | None:
    """Record `voter`'s current choice on a poll (a later vote replaces it)."""
    row = await conn.fetchrow(
        _VOTE, session_id, poll_wa_id, voter, json.dumps(options), when.isoformat()
    )
    return dict(row) if row else None


async def edit(
    conn: Executor, session_id: int, target_wa_id: str, text: str, when: datetime
) -> dict[str, Any] | None:
    row = await conn.fetchrow(_EDIT, session_id, target_wa_id, text, when.isoformat(), when)
    return dict(row) if row else None


async def revoke(
    conn: Executor, session_id: int, target_wa_id: str, when: datetime, keep_original: bool
) -> dict[str, Any] | None:
    row = await conn.fetchrow(_REVOKE, session_id, target_wa_id, when, keep_original)
    return dict(row) if row else None


_SET_MEDIA = """
UPDATE messages
SET media_status = $2,
    media_sha256 = coalesce($3, media_sha256),
    media_mime = coalesce($4, media_mime),
    media_size = coalesce($5, media_size),
    updated_at = now()
WHERE id = $1 AND media_status IS DISTINCT FROM 'stored'
RETURNING id, conversation_id
"""
_PENDING_MEDIA = """
SELECT id, wa_message_id, raw, media_size, media_mime FROM messages
WHERE session_id = $1 AND media_status = 'pending'
ORDER BY id
LIMIT $2
"""
_MEDIA_OF = """
SELECT m.id, m.session_id, s.owner_id, m.media_status, m.media_sha256, m.media_mime,
       m.media_size, m.media_filename, m.message_type
FROM messages m JOIN sessions s ON s.id = m.session_id
WHERE m.id = $1
"""


async def set_media(
    conn: Executor,
    message_id: int,
    status: str,
    *,
    sha256: str | None = None,
    mime: str | None = None,
    size: int | None = None,
) -> dict[str, Any] | None:
    row = await conn.fetchrow(_SET_MEDIA, message_id, status, sha256, mime, size)
    return dict(row) if row else None


async def pending_media(conn: Executor, session_id: int, limit: int = 200) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(_PENDING_MEDIA, session_id, limit)]


async def media_of(conn: Executor, message_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(_MEDIA_OF, message_id)
    return dict(row) if row else None


_INSERT_MANY = """
INSERT INTO messages (session_id, conversation_id, wa_message_id, direction, sender_type,
                      sender_jid, sender_name, message_type, text_content, media_sha256,
                      media_mime, media_size, media_filename, media_status,
                      quoted_wa_message_id, raw, status, from_history, sent_at)
SELECT $1, c, w, d, st, sj, sn, mt, tc, ms, mm, mz, mf, mstat, q, r::jsonb, s, h, t
FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::text[],
            $14::text[], $15::text[], $16::text[], $17::text[], $18::bool[],
            $19::timestamptz[])
     AS u(c, w, d, st, sj, sn, mt, tc, ms, mm, mz, mf, mstat, q, r, s, h, t)
ON CONFLICT (session_id, wa_message_id) WHERE wa_message_id IS NOT NULL DO NOTHING
RETURNING id, wa_message_id
"""


async def insert_many(conn: Executor, session_id: int, rows: list[NewMessage]) -> dict[str, int]:
    """Insert several messages in one statement; wa id -> new row id for those that were new
    (already stored ones are skipped)."""
    if not rows:
        return {}
    columns = list(
        zip(
            *[
                (
                    m.conversation_id,
                    m.wa_message_id,
                    m.direction,
                    m.sender_type,
                    m.sender_jid,
                    m.sender_name,
                    m.message_type,
                    m.text_content,
                    m.media_sha256,
                    m.media_mime,
                    m.media_size,
                    m.media_filename,
                    m.media_status,
                    m.quoted_wa_message_id,
                    json.dumps(m.raw) if m.raw is not None else None,
                    m.status,
                    m.from_history,
                    m.sent_at,
                )
                for m in rows
            ],
            strict=True,
        )
    )
    found = await conn.fetch(_INSERT_MANY, session_id, *[list(c) for c in columns])
    return {r["wa_message_id"]: int(r["id"]) for r in found}


MESSAGE_COLUMNS = (
    "m.id, m.session_id, m.conversation_id, m.wa_message_id, m.direction, m.sender_type, "
    "m.sender_jid, m.sender_name, m.message_type, m.text_content, m.media_sha256, m.media_mime, "
    "m.media_size, m.media_filename, m.media_status, m.quoted_wa_message_id, m.interactions, "
    "m.status, m.error, m.from_history, m.edited_at, m.revoked_at, m.sent_at, m.created_at, "
    "m.raw"
)
_INSERT_OUTBOUND = """
INSERT INTO messages (session_id, conversation_id, direction, sender_type, message_type,
                      text_content, quoted_wa_message_id, status, idempotency_key, sent_by,
                      sent_at, media_sha256, media_mime, media_size, media_filename,
                      media_status)
VALUES ($1, $2, 'outbound', $3, $8, $4, $5, 'pending', $6, $7, now(), $9, $10, $11, $12,
        CASE WHEN $9::text IS NULL THEN NULL ELSE 'stored' END)
ON CONFLICT (session_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
"""
_BY_IDEMPOTENCY = "SELECT id FROM messages WHERE session_id = $1 AND idempotency_key = $2"
_MARK_SENT = """
UPDATE messages SET wa_message_id = $2, status = 'sent',
    -- WhatsApp's time has whole seconds: never let it move the message before what preceded it.
    sent_at = greatest(sent_at, coalesce($3, sent_at)),
    error = NULL, updated_at = now()
WHERE id = $1 AND status IN ('pending', 'failed')
RETURNING id, conversation_id, wa_message_id, status
"""
_MARK_FAILED = """
UPDATE messages SET status = 'failed', error = $2, updated_at = now()
WHERE id = $1 AND status = 'pending'
RETURNING id, conversation_id, wa_message_id, status
"""
_GET_SCOPED = f"""
SELECT {MESSAGE_COLUMNS}, s.owner_id, c.external_id
FROM messages m
JOIN sessions s ON s.id = m.session_id
JOIN conversations c ON c.id = m.conversation_id
WHERE m.id = $1
"""
# Two statements, not one with "cursor IS NULL OR ...": the row comparison must stay a plain
# range on (conversation_id, sent_at, id) for the index to start at the cursor.
_PAGE_NEWEST = f"""
SELECT {MESSAGE_COLUMNS} FROM messages m
WHERE m.conversation_id = $1
ORDER BY m.sent_at DESC, m.id DESC
LIMIT $2
"""
_PAGE_BEFORE = f"""
SELECT {MESSAGE_COLUMNS} FROM messages m
WHERE m.conversation_id = $1 AND (m.sent_at, m.id) < ($2, $3)
ORDER BY m.sent_at DESC, m.id DESC
LIMIT $4
"""
_PAGE_AFTER = f"""
SELECT {MESSAGE_COLUMNS} FROM messages m
WHERE m.conversation_id = $1 AND (m.sent_at, m.id) > ($2, $3)
ORDER BY m.sent_at, m.id
LIMIT $4
"""
_POSITION = "SELECT sent_at, id FROM messages WHERE id = $1 AND conversation_id = $2"


async def insert_outbound(
    conn: Executor,
    *,
    session_id: int,
    conversation_id: int,
    text: str,
    quoted_wa_message_id: str | None,
    idempotency_key: str | None,
    sent_by: int | None,
    sender_type: str = "agent",
    message_type: str = "text",
    media: tuple[str, str, int, str | None] | None = None,
) -> tuple[int, bool]:
    """A message we are about to send, `pending`: (its id, whether it is new). With an
    idempotency key already used, the existing message's id and False. `media` is (sha256,
    mime type, size, file name) of an attachment already in the media store."""
    value = await conn.fetchval(
        _INSERT_OUTBOUND,
        session_id,
        conversation_id,
        sender_type,
        text,
        quoted_wa_message_id,
        idempotency_key,
        sent_by,
        message_type,
        *(media or (None, None, None, None)),
    )
    if value is not None:
        return int(value), True
    existing = await conn.fetchval(_BY_IDEMPOTENCY, session_id, idempotency_key)
    return int(existing), False


async def mark_sent(
    conn: Executor, message_id: int, wa_message_id: str, sent_at: datetime | None
) -> dict[str, Any] | None:
    row = await conn.fetchrow(_MARK_SENT, message_id, wa_message_id, sent_at)
    return dict(row) if row else None


async def mark_failed(conn: Executor, message_id: int, error: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(_MARK_FAILED, message_id, error)
    return dict(row) if row else None


async def get_scoped(conn: Executor, message_id: int) -> dict[str, Any] | None:
    """A message with its owner's user id and its chat's external id."""
    row = await conn.fetchrow(_GET_SCOPED, message_id)
    return dict(row) if row else None


async def page(
    conn: Executor,
    conversation_id: int,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]] | None:
    """Newest first before a message (or from the newest), oldest first after one. None when
    the cursor message is not in this conversation."""
    if after is not None:
        anchor = await conn.fetchrow(_POSITION, after, conversation_id)
        if anchor is None:
            return None
        rows = await conn.fetch(
            _PAGE_AFTER, conversation_id, anchor["sent_at"], anchor["id"], limit
        )
        return [dict(r) for r in rows]
    if before is None:
        return [dict(r) for r in await conn.fetch(_PAGE_NEWEST, conversation_id, limit)]
    anchor = await conn.fetchrow(_POSITION, before, conversation_id)
    if anchor is None:
        return None
    rows = await conn.fetch(_PAGE_BEFORE, conversation_id, anchor["sent_at"], anchor["id"], limit)
    return [dict(r) for r in rows]


# Newest matches first: the newest rows are found without ranking every match, which a
# frequent word (a tenth of all messages) makes costly; the rank of the page is computed after.
# Per session in scope, its newest matches: PostgreSQL walks the session's messages newest first
# for a common word and reads the word's index entries for a rare one, which is why the
# statement is always planned for its actual words (see db.pool.custom_plans).
_SEARCH = f"""
SELECT hit.*, ts_rank(hit.search_vector, wagate_search_query($2)) AS rank
FROM (
    SELECT m.*, c.contact_name, c.external_id
    FROM sessions s
    CROSS JOIN LATERAL (
        SELECT {MESSAGE_COLUMNS}, m.search_vector
        FROM messages m
        WHERE m.session_id = s.id
          AND m.search_vector @@ wagate_search_query($2)
          AND m.revoked_at IS NULL
        ORDER BY m.sent_at DESC, m.id DESC
        LIMIT $4
    ) m
    JOIN conversations c ON c.id = m.conversation_id
    WHERE ($1::bigint IS NULL OR s.owner_id = $1)
      AND ($3::bigint IS NULL OR s.id = $3)
    ORDER BY m.sent_at DESC, m.id DESC
    LIMIT $4
) hit
ORDER BY hit.sent_at DESC, hit.id DESC
"""


async def search(
    conn: Executor, owner_id: int | None, q: str, *, session_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """Messages matching `q` (English, Spanish and Portuguese stemming), newest first, each
    with its relevance rank."""
    async with custom_plans(conn) as c:
        rows = await c.fetch(_SEARCH, owner_id, q, session_id, limit)
    return [dict(r) for r in rows]
