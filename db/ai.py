"""The AI responder's tables: operator settings, personalities, per-session defaults, the cursor
over each operator's event log, and the decision taken about each inbound message."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from db import Executor

# -- settings ----------------------------------------------------------------------------------

SETTING_COLUMNS = (
    "provider",
    "base_url",
    "model",
    "api_key_sealed",
    "timeout_seconds",
    "kb_threshold",
    "history_messages",
    "handoff_message",
    "operator_pause_minutes",
)


@dataclass(frozen=True)
class AiSettingsRow:
    """An operator's own choices; None: the gateway's WAGATE_AI_* default."""

    user_id: int
    provider: str | None
    base_url: str | None
    model: str | None
    api_key_sealed: str | None
    timeout_seconds: float | None
    kb_threshold: float | None
    history_messages: int | None
    handoff_message: str | None
    operator_pause_minutes: float | None
    updated_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> AiSettingsRow:
        return cls(**{k: row[k] for k in ("user_id", *SETTING_COLUMNS, "updated_at")})

    @classmethod
    def empty(cls, user_id: int) -> AiSettingsRow:
        return cls(user_id, None, None, None, None, None, None, None, None, None, None)


_GET_SETTINGS = f"SELECT user_id, {', '.join(SETTING_COLUMNS)}, updated_at FROM ai_settings " + (
    "WHERE user_id = $1"
)
_PUT_SETTINGS = f"""
INSERT INTO ai_settings (user_id, {", ".join(SETTING_COLUMNS)})
VALUES ($1, {", ".join(f"${i + 2}" for i in range(len(SETTING_COLUMNS)))})
ON CONFLICT (user_id) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in SETTING_COLUMNS)}, updated_at = now()
RETURNING user_id, {", ".join(SETTING_COLUMNS)}, updated_at
"""


async def get_settings(conn: Executor, user_id: int) -> AiSettingsRow:
    row = await conn.fetchrow(_GET_SETTINGS, user_id)
    return AiSettingsRow.from_row(row) if row else AiSettingsRow.empty(user_id)


async def put_settings(conn: Executor, row: AiSettingsRow) -> AiSettingsRow:
    values = [getattr(row, c) for c in SETTING_COLUMNS]
    saved = await conn.fetchrow(_PUT_SETTINGS, row.user_id, *values)
    assert saved is not None
    return AiSettingsRow.from_row(saved)


# -- personalities ------------------------------------------------------------------------------

PERSONALITY_COLUMNS = (
    "id, user_id, name, instructions, language, tone, max_reply_chars, created_at, updated_at"
)


@dataclass(frozen=True)
class Personality:
    id: int
    user_id: int
    name: str
    instructions: str
    language: str | None
    tone: str | None
    max_reply_chars: int | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Personality:
        return cls(**dict(row))


_P_CREATE = f"""
INSERT INTO ai_personalities (user_id, name, instructions, language, tone, max_reply_chars)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING {PERSONALITY_COLUMNS}
"""
_P_GET = f"SELECT {PERSONALITY_COLUMNS} FROM ai_personalities WHERE id = $1"
_P_LIST = f"""
SELECT {PERSONALITY_COLUMNS} FROM ai_personalities
WHERE ($1::bigint IS NULL OR user_id = $1) ORDER BY id
"""
_P_UPDATE = f"""
UPDATE ai_personalities SET name = $2, instructions = $3, language = $4, tone = $5,
    max_reply_chars = $6, updated_at = now()
WHERE id = $1
RETURNING {PERSONALITY_COLUMNS}
"""
_P_DELETE = "DELETE FROM ai_personalities WHERE id = $1"
_P_UNLINK = "UPDATE conversations SET personality_id = NULL WHERE personality_id = $1"


async def create_personality(
    conn: Executor,
    *,
    user_id: int,
    name: str,
    instructions: str,
    language: str | None,
    tone: str | None,
    max_reply_chars: int | None,
) -> Personality:
    row = await conn.fetchrow(
        _P_CREATE, user_id, name, instructions, language, tone, max_reply_chars
    )
    assert row is not None
    return Personality.from_row(row)


async def get_personality(conn: Executor, personality_id: int) -> Personality | None:
    row = await conn.fetchrow(_P_GET, personality_id)
    return Personality.from_row(row) if row else None


async def list_personalities(conn: Executor, user_id: int | None) -> list[Personality]:
    return [Personality.from_row(r) for r in await conn.fetch(_P_LIST, user_id)]


async def update_personality(conn: Executor, p: Personality) -> Personality | None:
    row = await conn.fetchrow(
        _P_UPDATE, p.id, p.name, p.instructions, p.language, p.tone, p.max_reply_chars
    )
    return Personality.from_row(row) if row else None


async def delete_personality(conn: Executor, personality_id: int) -> None:
    """Remove it; the chats that used it fall back to their account's default."""
    await conn.execute(_P_UNLINK, personality_id)
    await conn.execute(_P_DELETE, personality_id)


# -- per-session defaults -------------------------------------------------------------------------

_D_GET = """
SELECT session_id, ai_default, personality_id, updated_at FROM ai_session_defaults
WHERE session_id = $1
"""
_D_PUT = """
INSERT INTO ai_session_defaults (session_id, ai_default, personality_id) VALUES ($1, $2, $3)
ON CONFLICT (session_id) DO UPDATE SET ai_default = EXCLUDED.ai_default,
    personality_id = EXCLUDED.personality_id, updated_at = now()
RETURNING session_id, ai_default, personality_id, updated_at
"""


async def get_session_defaults(conn: Executor, session_id: int) -> dict[str, Any]:
    row = await conn.fetchrow(_D_GET, session_id)
    if row is None:
        return {
            "session_id": session_id,
            "ai_default": False,
            "personality_id": None,
            "updated_at": None,
        }
    return dict(row)


async def put_session_defaults(
    conn: Executor, session_id: int, ai_default: bool, personality_id: int | None
) -> dict[str, Any]:
    row = await conn.fetchrow(_D_PUT, session_id, ai_default, personality_id)
    assert row is not None
    return dict(row)


# -- the responder's view of a chat ---------------------------------------------------------------

_CONTEXT = """
SELECT c.id AS conversation_id, c.session_id, c.external_id, c.kind, c.ai_active, c.no_ac_ai,
       c.needs_human, c.ai_paused_until, c.personality_id, c.contact_name,
       s.owner_id, s.channel, s.state AS session_state,
       d.personality_id AS default_personality_id,
       m.sent_at, m.text_content, m.message_type, m.direction, m.sender_type, m.from_history,
       now() AS now
FROM messages m
JOIN conversations c ON c.id = m.conversation_id
JOIN sessions s ON s.id = c.session_id
LEFT JOIN ai_session_defaults d ON d.session_id = c.session_id
WHERE m.id = $1
"""
_HISTORY = """
SELECT direction, sender_type, text_content FROM messages
WHERE conversation_id = $1 AND id <> $2 AND text_content IS NOT NULL AND revoked_at IS NULL
  AND sent_at <= $3
ORDER BY sent_at DESC, id DESC
LIMIT $4
"""
_RECENT = """
SELECT count(*) FILTER (WHERE outcome IN ('answered', 'handoff')
                          AND created_at > now() - make_interval(secs => $2)) AS last_window,
       count(*) FILTER (WHERE outcome IN ('answered', 'handoff')) AS last_hour,
       count(*) FILTER (WHERE outcome = 'answered'
                          AND created_at > now() - make_interval(secs => $3)) AS loop_window
FROM ai_replies
WHERE conversation_id = $1 AND created_at > now() - interval '1 hour'
"""
_SAME_TEXT = """
SELECT count(*) FROM messages
WHERE conversation_id = $1 AND direction = 'inbound' AND text_content = $2
  AND sent_at > now() - make_interval(secs => $3)
"""
_DECIDED = "SELECT outcome FROM ai_replies WHERE inbound_message_id = $1"
_RECORD = """
INSERT INTO ai_replies (inbound_message_id, conversation_id, outcome, provider, score, detail)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (inbound_message_id) DO NOTHING
RETURNING inbound_message_id
"""
_NEEDS_HUMAN = """
UPDATE conversations SET needs_human = $2, updated_at = now() WHERE id = $1
  AND needs_human IS DISTINCT FROM $2
RETURNING id
"""
_PAUSE = """
UPDATE conversations SET ai_paused_until = greatest(ai_paused_until, $2), updated_at = now()
WHERE id = $1 AND ai_active
RETURNING id
"""
_RESUME = """
UPDATE conversations SET needs_human = false, ai_paused_until = NULL, updated_at = now()
WHERE id = $1
"""
_LATEST_REPLIES = """
SELECT inbound_message_id, outcome, provider, score, detail, created_at FROM ai_replies
WHERE conversation_id = $1 ORDER BY created_at DESC, inbound_message_id DESC LIMIT $2
"""


async def context(conn: Executor, message_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(_CONTEXT, message_id)
    return dict(row) if row else None


async def history(
    conn: Executor, conversation_id: int, message_id: int, before: datetime, limit: int
) -> list[dict[str, Any]]:
    """The chat's last `limit` text messages up to `before` (not `message_id`), oldest first."""
    rows = await conn.fetch(_HISTORY, conversation_id, message_id, before, limit)
    return [dict(r) for r in reversed(rows)]


async def recent(
    conn: Executor, conversation_id: int, window: float, loop_window: float
) -> dict[str, int]:
    row = await conn.fetchrow(_RECENT, conversation_id, window, loop_window)
    assert row is not None
    return {k: int(row[k]) for k in ("last_window", "last_hour", "loop_window")}


async def same_text_count(conn: Executor, conversation_id: int, text: str, seconds: float) -> int:
    return int(await conn.fetchval(_SAME_TEXT, conversation_id, text, seconds))


async def decided(conn: Executor, message_id: int) -> str | None:
    value = await conn.fetchval(_DECIDED, message_id)
    return str(value) if value is not None else None


async def record(
    conn: Executor,
    message_id: int,
    conversation_id: int,
    outcome: str,
    *,
    provider: str | None = None,
    score: float | None = None,
    detail: str | None = None,
) -> bool:
    """Record the decision; False when one was recorded already (the guard against answering
    the same message twice)."""
    value = await conn.fetchval(
        _RECORD, message_id, conversation_id, outcome, provider, score, detail
    )
    return value is not None


async def set_needs_human(conn: Executor, conversation_id: int, value: bool) -> bool:
    return await conn.fetchval(_NEEDS_HUMAN, conversation_id, value) is not None


async def pause(conn: Executor, conversation_id: int, until: datetime) -> bool:
    return await conn.fetchval(_PAUSE, conversation_id, until) is not None


async def resume(conn: Executor, conversation_id: int) -> None:
    await conn.execute(_RESUME, conversation_id)


async def latest_replies(conn: Executor, conversation_id: int, limit: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(_LATEST_REPLIES, conversation_id, limit)]


# -- the cursors ----------------------------------------------------------------------------------

_BEHIND = """
SELECT e.user_id, e.last_seq AS latest, coalesce(a.last_seq, 0) AS cursor
FROM event_counters e LEFT JOIN ai_cursors a ON a.user_id = e.user_id
WHERE e.last_seq > coalesce(a.last_seq, 0)
"""
# Operators for whom the AI may answer something: a chat with it on, or an account default.
_MAY_ANSWER = """
SELECT DISTINCT s.owner_id FROM sessions s
WHERE s.owner_id = ANY($1::bigint[])
  AND (EXISTS (SELECT 1 FROM ai_session_defaults d WHERE d.session_id = s.id AND d.ai_default)
       OR EXISTS (SELECT 1 FROM conversations c
                  WHERE c.session_id = s.id AND c.ai_active AND NOT c.no_ac_ai))
"""
_ADVANCE = """
INSERT INTO ai_cursors (user_id, last_seq) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE SET last_seq = greatest(ai_cursors.last_seq, EXCLUDED.last_seq),
    updated_at = now()
"""
_CURSOR = "SELECT last_seq FROM ai_cursors WHERE user_id = $1"
_EVENTS = """
SELECT seq, payload FROM event_log
WHERE user_id = $1 AND seq > $2 AND seq <= $3 AND event = 'message-new'
ORDER BY seq
LIMIT $4
"""


async def behind(conn: Executor) -> list[tuple[int, int, int]]:
    """(user id, latest seq, cursor) of every operator whose log has events not looked at."""
    return [
        (int(r["user_id"]), int(r["latest"]), int(r["cursor"])) for r in await conn.fetch(_BEHIND)
    ]


async def may_answer(conn: Executor, user_ids: list[int]) -> set[int]:
    return {int(r["owner_id"]) for r in await conn.fetch(_MAY_ANSWER, user_ids)}


async def advance(conn: Executor, user_id: int, seq: int) -> None:
    await conn.execute(_ADVANCE, user_id, seq)


async def cursor(conn: Executor, user_id: int) -> int:
    value = await conn.fetchval(_CURSOR, user_id)
    return int(value) if value is not None else 0


async def message_events(
    conn: Executor, user_id: int, after: int, upto: int, limit: int
) -> list[tuple[int, dict[str, Any]]]:
    rows = await conn.fetch(_EVENTS, user_id, after, upto, limit)
    return [(int(r["seq"]), r["payload"]) for r in rows]
