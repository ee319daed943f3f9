"""The `conversations` table: one row per chat of a session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from db.pool import custom_plans

if TYPE_CHECKING:
    from db import Conn, Executor

# Where chats without any message sort (the same constant as _KEY and the API's cursor).
_NO_TIME = datetime(1, 1, 1, tzinfo=UTC)

_BY_EXTERNAL = "SELECT id FROM conversations WHERE session_id = $1 AND external_id = $2"


async def id_by_external(conn: Executor, session_id: int, external_id: str) -> int | None:
    value = await conn.fetchval(_BY_EXTERNAL, session_id, external_id)
    return int(value) if value is not None else None


_FIND_LID_CONV = """
SELECT id FROM conversations
WHERE session_id = $1 AND (external_id = $2 OR lid = $2) AND external_id <> $3
"""
_RENAME = """
UPDATE conversations SET external_id = $2, lid = $3, wa_user_id = coalesce(wa_user_id, $4),
    updated_at = now()
WHERE id = $1
"""
_MOVE_MESSAGES = "UPDATE messages SET conversation_id = $2 WHERE conversation_id = $1"
_ABSORB = """
UPDATE conversations AS keep SET
    unread_count = keep.unread_count + gone.unread_count,
    last_message_at = greatest(keep.last_message_at, gone.last_message_at),
    started_at = least(keep.started_at, gone.started_at),
    contact_name = coalesce(keep.contact_name, gone.contact_name),
    contact_photo_url = coalesce(keep.contact_photo_url, gone.contact_photo_url),
    ai_active = keep.ai_active OR gone.ai_active,
    jira_bridge = keep.jira_bridge OR gone.jira_bridge,
    labels = ARRAY(SELECT DISTINCT unnest(keep.labels || gone.labels)),
    updated_at = now()
FROM conversations AS gone
WHERE keep.id = $1 AND gone.id = $2
"""
_DELETE = "DELETE FROM conversations WHERE id = $1"
_SET_LID = "UPDATE conversations SET lid = $2, updated_at = now() WHERE id = $1 AND lid IS NULL"


async def link_lid(
    conn: Executor, *, session_id: int, phone_jid: str, lid: str, phone: str | None
) -> tuple[int, int] | None:
    """One person, two addresses: make the phone-keyed conversation own the LID.

    A chat that was opened under the LID before the mapping was known is renamed to the phone
    JID, or, when a phone-keyed chat exists too, merged into it (messages moved, counters
    added). Returns (merged-away id, kept id) when two conversations became one.
    """
    lid_conv = await conn.fetchval(_FIND_LID_CONV, session_id, lid, phone_jid)
    phone_conv = await id_by_external(conn, session_id, phone_jid)
    if lid_conv is None:
        if phone_conv is not None:
            await conn.execute(_SET_LID, phone_conv, lid)
        return None
    if phone_conv is None:
        await conn.execute(_RENAME, lid_conv, phone_jid, lid, phone)
        return None
    await conn.execute(_MOVE_MESSAGES, lid_conv, phone_conv)
    await conn.execute(_ABSORB, phone_conv, lid_conv)
    await conn.execute(_DELETE, lid_conv)
    await conn.execute(_SET_LID, phone_conv, lid)
    return int(lid_conv), phone_conv


_READ_BY_MESSAGES = """
UPDATE conversations SET unread_count = 0, updated_at = now()
WHERE id IN (SELECT DISTINCT conversation_id FROM messages
             WHERE session_id = $1 AND wa_message_id = ANY($2::text[]))
  AND unread_count > 0
RETURNING id
"""
_MARK_READ = """
UPDATE conversations SET unread_count = 0, updated_at = now() WHERE id = $1 AND unread_count > 0
RETURNING id
"""


_TOUCH = """
UPDATE conversations SET last_message_at = greatest(last_message_at, $2), updated_at = now()
WHERE id = $1
"""


async def touch(conn: Executor, conversation_id: int, at: datetime) -> None:
    """A message was added from our side: the chat's last activity moves forward."""
    await conn.execute(_TOUCH, conversation_id, at)


async def mark_read_by_messages(conn: Executor, session_id: int, wa_ids: list[str]) -> list[int]:
    """Zero the unread count of the chats holding these messages (read on the phone)."""
    return [int(r["id"]) for r in await conn.fetch(_READ_BY_MESSAGES, session_id, wa_ids)]


async def mark_read(conn: Executor, conversation_id: int) -> bool:
    return await conn.fetchval(_MARK_READ, conversation_id) is not None


_WITH_OWNER = """
SELECT c.id, c.session_id, s.owner_id, c.external_id, c.kind, c.unread_count
FROM conversations c JOIN sessions s ON s.id = c.session_id
WHERE c.id = $1
"""
_LAST_INBOUND = """
SELECT wa_message_id, sender_jid FROM messages
WHERE conversation_id = $1 AND direction = 'inbound' AND wa_message_id IS NOT NULL
ORDER BY sent_at DESC, id DESC
LIMIT $2
"""


async def with_owner(conn: Executor, conversation_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(_WITH_OWNER, conversation_id)
    return dict(row) if row else None


async def last_inbound(conn: Executor, conversation_id: int, limit: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(_LAST_INBOUND, conversation_id, limit)]


_UPSERT_MANY = """
INSERT INTO conversations (session_id, external_id, kind, contact_name, wa_user_id, lid,
                           started_at, last_message_at, unread_count)
SELECT $1, e, k, n, w, l, t, t, u
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
            $8::int[])
     AS u(e, k, n, w, l, t, u)
ON CONFLICT (session_id, external_id) DO UPDATE SET
    contact_name = coalesce(EXCLUDED.contact_name, conversations.contact_name),
    wa_user_id = coalesce(conversations.wa_user_id, EXCLUDED.wa_user_id),
    lid = coalesce(conversations.lid, EXCLUDED.lid),
    last_message_at = greatest(conversations.last_message_at, EXCLUDED.last_message_at),
    unread_count = conversations.unread_count + EXCLUDED.unread_count,
    updated_at = now()
RETURNING id, external_id, (xmax = 0) AS created
"""
_UNREAD_ADD_MANY = """
UPDATE conversations c SET unread_count = greatest(c.unread_count + u.n, 0), updated_at = now()
FROM unnest($1::bigint[], $2::int[]) AS u(id, n)
WHERE c.id = u.id
"""


@dataclass(frozen=True)
class ChatTouch:
    """One conversation a batch of messages touches (its newest message's data)."""

    external_id: str
    kind: str
    contact_name: str | None
    wa_user_id: str | None
    lid: str | None
    last_message_at: datetime
    unread_inc: int = 0


async def upsert_many(
    conn: Executor, session_id: int, chats: list[ChatTouch]
) -> tuple[dict[str, int], list[str]]:
    """Create or refresh several conversations in one statement; (external id -> id, the
    external ids that are new)."""
    if not chats:
        return {}, []
    rows = await conn.fetch(
        _UPSERT_MANY,
        session_id,
        [c.external_id for c in chats],
        [c.kind for c in chats],
        [c.contact_name for c in chats],
        [c.wa_user_id for c in chats],
        [c.lid for c in chats],
        [c.last_message_at for c in chats],
        [c.unread_inc for c in chats],
    )
    return (
        {r["external_id"]: int(r["id"]) for r in rows},
        [r["external_id"] for r in rows if r["created"]],
    )


_SET_GROUP = """
UPDATE conversations
SET contact_name = coalesce($2, contact_name), participants = $3::text::jsonb, updated_at = now()
WHERE id = $1
"""


async def set_group(
    conn: Executor, conversation_id: int, name: str | None, participants: list[dict[str, Any]]
) -> None:
    await conn.execute(_SET_GROUP, conversation_id, name, json.dumps(participants))


async def unread_add_many(conn: Executor, counts: dict[int, int]) -> None:
    if counts:
        await conn.execute(_UNREAD_ADD_MANY, list(counts), list(counts.values()))


CONVERSATION_COLUMNS = (
    "c.id, c.session_id, c.external_id, c.kind, c.contact_name, c.contact_photo_url, "
    "c.wa_user_id, c.lid, c.started_at, c.last_message_at, c.unread_count, c.archived, c.labels, "
    "c.ai_active, c.personality_id, c.no_ac_ai, c.jira_bridge, c.needs_human, c.participants, "
    "c.contact_id, c.created_at, c.updated_at, s.owner_id"
)
_LAST_MESSAGE = """
LEFT JOIN LATERAL (
    SELECT m.id AS last_id, m.message_type AS last_type, m.text_content AS last_text,
           m.direction AS last_direction, m.sent_at AS last_sent_at,
           m.revoked_at IS NOT NULL AS last_revoked, m.status AS last_status
    FROM messages m WHERE m.conversation_id = c.id
    ORDER BY m.sent_at DESC, m.id DESC LIMIT 1
) lm ON true
"""
# Conversations without any message sort last, at this constant (the cursor uses it too).
_KEY = "coalesce({t}.last_message_at, '0001-01-01 00:00:00+00'::timestamptz)"
_FILTERS = """
          AND ($3::bool IS NULL OR (c.unread_count > 0) = $3)
          AND ($4::bool IS NULL OR c.archived = $4)
          AND ($5::text IS NULL OR $5 = ANY(c.labels))
          AND ({key}, c.id)
              < (coalesce($6::timestamptz, 'infinity'::timestamptz), coalesce($7::bigint, 0))
"""
_MATCH_NAME = """
    to_tsvector('simple'::regconfig, coalesce(c.contact_name, ''))
        @@ websearch_to_tsquery('simple'::regconfig, $9)
    OR ($10::text IS NOT NULL AND c.wa_user_id LIKE $10 || '%')
"""


def _inbox(candidates: str) -> str:
    """The page around a set of candidate rows: the newest `$8` of them, then the last message
    of just those (never of every chat the filters let through)."""
    key_c, key_p = _KEY.format(t="c"), _KEY.format(t="p")
    return f"""
SELECT c.*, lm.*
FROM (
    SELECT p.* FROM ({candidates}) p
    ORDER BY {key_p} DESC, p.id DESC
    LIMIT $8
) c
{_LAST_MESSAGE}
ORDER BY {key_c} DESC, c.id DESC
"""


def _per_session(where: str) -> str:
    """Up to `$8` rows of each session in scope, walked down its own inbox index: a generic plan
    reads a page per session whatever the parameters."""
    key = _KEY.format(t="c")
    return f"""
    SELECT p.*
    FROM sessions s
    CROSS JOIN LATERAL (
        SELECT {CONVERSATION_COLUMNS}
        FROM conversations c
        WHERE c.session_id = s.id {_FILTERS.format(key=key)} {where}
        ORDER BY {key} DESC, c.id DESC
        LIMIT $8
    ) p
    WHERE ($1::bigint IS NULL OR s.owner_id = $1)
      AND ($2::bigint IS NULL OR s.id = $2)
"""


_LIST = _inbox(_per_session(""))
# `q`, a rarer word: the chats that mention it are known ($11), with the names that match.
_LIST_Q_KNOWN = _inbox(
    f"""
    SELECT {CONVERSATION_COLUMNS}
    FROM conversations c
    JOIN sessions s ON s.id = c.session_id
    WHERE ($1::bigint IS NULL OR s.owner_id = $1)
      AND ($2::bigint IS NULL OR s.id = $2)
      {_FILTERS.format(key=_KEY.format(t="c"))}
      AND (c.id = ANY($11::bigint[]) OR {_MATCH_NAME})
"""
)
# `q`, a common word: the inbox is walked a chunk at a time (ids, keys and whether the name
# matches), and each chunk's chats are checked for the words (below).
_LIST_CHUNK = f"""
SELECT p.id, p.last_message_at,
       (to_tsvector('simple'::regconfig, coalesce(p.contact_name, ''))
            @@ websearch_to_tsquery('simple'::regconfig, $9)
        OR ($10::text IS NOT NULL AND p.wa_user_id LIKE $10 || '%')) AS name_hit
FROM ({_per_session("")}) p
ORDER BY {_KEY.format(t="p")} DESC, p.id DESC
LIMIT $8
"""
_BY_IDS = f"""
SELECT {CONVERSATION_COLUMNS}, lm.*
FROM conversations c
JOIN sessions s ON s.id = c.session_id
{_LAST_MESSAGE}
WHERE c.id = ANY($1::bigint[])
ORDER BY {_KEY.format(t="c")} DESC, c.id DESC
"""
_SCOPE = """
SELECT id FROM sessions
WHERE ($1::bigint IS NULL OR owner_id = $1) AND ($2::bigint IS NULL OR id = $2)
"""
_MENTIONS = """
SELECT DISTINCT m.conversation_id FROM messages m
WHERE m.session_id = ANY($1::bigint[]) AND m.search_vector @@ wagate_search_query($2)
"""
# PostgreSQL's own estimate of how many messages mention `q` (planning only, no execution).
_ESTIMATE = """
EXPLAIN (FORMAT JSON)
SELECT 1 FROM messages m
WHERE m.session_id = ANY($1::bigint[]) AND m.search_vector @@ wagate_search_query($2)
"""
# Fewer estimated mentions than this: read them all. More: walk the inbox.
MENTIONS_CAP = 3000
WALK_CHUNK = 150
_INDEX_LOOKUPS_ONLY = "SET LOCAL enable_seqscan = off; SET LOCAL enable_indexscan = off"
_ALL_PLANS = "SET LOCAL enable_seqscan = on; SET LOCAL enable_indexscan = on"


# For each chat of a chunk ($2): does one of its newest messages mention `q` ($1), and does it
# have more messages than that window. Bounded by the window whatever the chat's length:
# statistics cannot tell that a long chat never mentions a word many others do, so an unbounded
# EXISTS may read a whole 80,000-message chat (or the table) hoping for an early match.
RECENT_WINDOW = 400
_CHUNK_PROBE = f"""
SELECT ids.id,
       EXISTS (SELECT 1 FROM (SELECT m.search_vector FROM messages m
                              WHERE m.conversation_id = ids.id
                              ORDER BY m.sent_at DESC, m.id DESC
                              LIMIT {RECENT_WINDOW}) w
               WHERE w.search_vector @@ wagate_search_query($1)) AS hit,
       EXISTS (SELECT 1 FROM messages m
               WHERE m.conversation_id = ids.id
               ORDER BY m.sent_at DESC, m.id DESC
               OFFSET {RECENT_WINDOW}) AS longer
FROM unnest($2::bigint[]) AS ids(id)
"""


# The rest of a long chat: one lookup in the (session, conversation, words) index.
_OLDER_MENTION = """
SELECT EXISTS (SELECT 1 FROM messages m
               WHERE m.conversation_id = $2 AND m.search_vector @@ wagate_search_query($1))
"""


_GET = f"""
SELECT {CONVERSATION_COLUMNS}, lm.*
FROM conversations c
JOIN sessions s ON s.id = c.session_id
{_LAST_MESSAGE}
WHERE c.id = $1
"""
_PATCH = """
UPDATE conversations SET
    ai_active = coalesce($2, ai_active),
    jira_bridge = coalesce($3, jira_bridge),
    archived = coalesce($4, archived),
    personality_id = CASE WHEN $5 THEN $6 ELSE personality_id END,
    labels = coalesce($7, labels),
    no_ac_ai = coalesce($8, no_ac_ai),
    updated_at = now()
WHERE id = $1
"""
_BY_EXTERNAL_FOR = """
SELECT c.id FROM conversations c JOIN sessions s ON s.id = c.session_id
WHERE c.external_id = $1 AND ($2::bigint IS NULL OR s.owner_id = $2)
ORDER BY c.last_message_at DESC NULLS LAST LIMIT 1
"""


def _phone_prefix(q: str) -> str | None:
    """The digits of a query that looks like (the start of) a phone number."""
    digits = "".join(ch for ch in q if ch.isdigit())
    rest = q.strip().lstrip("+").replace(" ", "").replace("-", "")
    return digits if len(digits) >= 3 and digits == rest else None


async def page(
    conn: Executor,
    *,
    owner_id: int | None,
    session_id: int | None = None,
    unread: bool | None = None,
    archived: bool | None = None,
    label: str | None = None,
    q: str | None = None,
    after: tuple[datetime, int] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """A page of conversations, most recent first (`owner_id` None: every owner's).

    `q` matches contact names (simple text search), phone-number prefixes, and the text of any
    message of the chat (English, Spanish and Portuguese stemming)."""
    args: list[Any] = [
        owner_id,
        session_id,
        unread,
        archived,
        label,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    ]
    if q is None:
        return [dict(r) for r in await conn.fetch(_LIST, *args)]
    args += [q, _phone_prefix(q)]
    async with custom_plans(conn) as c:
        scope = [r["id"] for r in await c.fetch(_SCOPE, owner_id, session_id)]
        plan = await c.fetchval(_ESTIMATE, scope, q)
        if isinstance(plan, str):  # without the pool's json codec
            plan = json.loads(plan)
        if plan[0]["Plan"]["Plan Rows"] < MENTIONS_CAP:
            known = [int(r["conversation_id"]) for r in await c.fetch(_MENTIONS, scope, q)]
            rows = await c.fetch(_LIST_Q_KNOWN, *args, known)
        else:
            rows = await _walk(c, args, limit)
    return [dict(r) for r in rows]


async def _walk(conn: Conn, args: list[Any], limit: int) -> list[Any]:
    """The inbox, newest first, keeping the chats whose name or messages match, until `limit`."""
    hits: list[int] = []
    chunk_args = list(args)
    chunk_args[7] = WALK_CHUNK
    q = args[8]
    while len(hits) < limit:
        chunk = await conn.fetch(_LIST_CHUNK, *chunk_args)
        if not chunk:
            break
        rest = [int(r["id"]) for r in chunk if not r["name_hit"]]
        by_text: set[int] = set()
        if rest:
            longer: list[int] = []
            for r in await conn.fetch(_CHUNK_PROBE, q, rest):
                if r["hit"]:
                    by_text.add(int(r["id"]))
                elif r["longer"]:
                    longer.append(int(r["id"]))
            if longer:
                await conn.execute(_INDEX_LOOKUPS_ONLY)
                for cid in longer:
                    if await conn.fetchval(_OLDER_MENTION, q, cid):
                        by_text.add(cid)
                await conn.execute(_ALL_PLANS)
        for r in chunk:
            if r["name_hit"] or int(r["id"]) in by_text:
                hits.append(int(r["id"]))
        if len(chunk) < WALK_CHUNK:
            break
        last = chunk[-1]
        chunk_args[5] = last["last_message_at"] or _NO_TIME
        chunk_args[6] = last["id"]
    return list(await conn.fetch(_BY_IDS, hits[:limit]))


async def get(conn: Executor, conversation_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(_GET, conversation_id)
    return dict(row) if row else None


async def patch(
    conn: Executor,
    conversation_id: int,
    *,
    ai_active: bool | None = None,
    jira_bridge: bool | None = None,
    archived: bool | None = None,
    personality_set: bool = False,
    personality_id: int | None = None,
    labels: list[str] | None = None,
    no_ac_ai: bool | None = None,
) -> None:
    await conn.execute(
        _PATCH,
        conversation_id,
        ai_active,
        jira_bridge,
        archived,
        personality_set,
        personality_id,
        labels,
        no_ac_ai,
    )


async def id_by_external_for(conn: Executor, external_id: str, owner_id: int | None) -> int | None:
    value = await conn.fetchval(_BY_EXTERNAL_FOR, external_id, owner_id)
    return int(value) if value is not None else None
