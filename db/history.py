"""History sync import: one chunk of WhatsApp history into `conversations` and `messages`.

A chunk may hold tens of thousands of messages. They are copied (`COPY`, binary) into a
temporary staging table and moved into `messages` by ONE `INSERT ... SELECT ... ON CONFLICT DO
NOTHING`, so the cost per message is what PostgreSQL needs for the row and its indexes, and
importing the same chunk again inserts nothing and updates nothing. The chats of the chunk take
three small set statements (insert the new ones, resolve ids, update the existing ones); each
chat's first and last message time is noted while the rows stream into COPY, so no statement
reads the staging table twice. `bench/history_import.py` measures all of it against the
physical limit (COPY + INSERT alone).

Live messages are never queued behind an import for long: the caller runs one transaction per
chunk (small chunks keep it short); rows the chunk inserts block only a live write of the very
same new chat or message id, until the chunk commits; existing chats are updated by the last
statement, and only when something really changes, so their row locks are held for moments.
Every lock wait of the import is bounded (LOCK_TIMEOUT_MS): when a live transaction holds what
the chunk needs, the chunk gives way instead of queueing or deadlocking with it. Unread
counters of existing chats are never touched and nothing here publishes events: history wakes
neither Jira nor the AI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from db import Conn

# One temporary table per call, dropped at its end (so two chunks may share a transaction);
# ON COMMIT DROP is the safety net. Creating and dropping it costs about 2 ms per chunk (<1% of
# a 10,000-message chunk), so a per-connection table is not worth its state. Temporary: no WAL,
# and a 10,000-row chunk stays in `temp_buffers` (8 MB).
STAGING = "wagate_history_messages"
_CREATE_STAGING = f"""
CREATE TEMPORARY TABLE {STAGING} (
    conversation_idx    integer NOT NULL,
    wa_message_id       text NOT NULL,
    direction           text NOT NULL,
    sender_type         text NOT NULL,
    sender_jid          text,
    sender_name         text,
    message_type        text NOT NULL,
    text_content        text,
    media_sha256        text,
    media_mime          text,
    media_size          bigint,
    media_filename      text,
    media_status        text,
    quoted_wa_message_id text,
    raw                 text,
    status              text NOT NULL,
    sent_at             timestamptz NOT NULL
) ON COMMIT DROP
"""
_STAGING_COLUMNS = (
    "conversation_idx",
    "wa_message_id",
    "direction",
    "sender_type",
    "sender_jid",
    "sender_name",
    "message_type",
    "text_content",
    "media_sha256",
    "media_mime",
    "media_size",
    "media_filename",
    "media_status",
    "quoted_wa_message_id",
    "raw",
    "status",
    "sent_at",
)
_DROP_STAGING = f"DROP TABLE {STAGING}"

# The import gives way to live writes: a wait longer than this (a live transaction holding a
# message or a chat this chunk needs, possibly waiting on this chunk in turn) aborts the chunk
# with asyncpg's LockNotAvailableError, long before PostgreSQL's deadlock check (1 s) could
# pick the live transaction as its victim. Live transactions take milliseconds.
LOCK_TIMEOUT_MS = 250
_SET_LOCK_TIMEOUT = (
    "SELECT current_setting('lock_timeout') AS previous, set_config('lock_timeout', $1, true)"
)
_RESTORE_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', $1, true)"

# New chats only, their first and last message times computed while the messages were copied.
# Without a conflict target, DO NOTHING also steps aside when the LID is taken: that chat is the
# same person under the other addressing form and is resolved below; so is a chat keyed by a LID
# that a stored chat already holds beside its phone JID.
_INSERT_CONVERSATIONS = """
INSERT INTO conversations (session_id, external_id, lid, kind, contact_name, wa_user_id,
                           unread_count, started_at, last_message_at)
SELECT $1, s.external_id, s.lid, s.kind, s.contact_name, s.wa_user_id, s.unread_count,
       coalesce(s.oldest, s.newest, now()), s.newest
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::integer[],
            $8::timestamptz[], $9::timestamptz[])
    AS s(external_id, lid, kind, contact_name, wa_user_id, unread_count, oldest, newest)
WHERE NOT EXISTS (SELECT 1 FROM conversations AS o
                  WHERE o.session_id = $1 AND o.lid = s.external_id)
ON CONFLICT DO NOTHING
"""

# Every chat of the chunk, by external id or else by LID ($3: the LIDs and the external ids).
_RESOLVE = """
SELECT id, external_id, lid FROM conversations
WHERE session_id = $1 AND (external_id = ANY($2::text[]) OR lid = ANY($3::text[]))
"""

_INSERT_MESSAGES = f"""
INSERT INTO messages (session_id, conversation_id, wa_message_id, direction, sender_type,
                      sender_jid, sender_name, message_type, text_content, media_sha256,
                      media_mime, media_size, media_filename, media_status,
                      quoted_wa_message_id, raw, status, from_history, sent_at)
SELECT $1, c.id, m.wa_message_id, m.direction, m.sender_type, m.sender_jid, m.sender_name,
       m.message_type, m.text_content, m.media_sha256, m.media_mime, m.media_size,
       m.media_filename, m.media_status, m.quoted_wa_message_id, m.raw::jsonb, m.status, true,
       m.sent_at
FROM {STAGING} AS m
JOIN unnest($2::integer[], $3::bigint[]) AS c(idx, id) ON c.idx = m.conversation_idx
ON CONFLICT (session_id, wa_message_id) WHERE wa_message_id IS NOT NULL DO NOTHING
"""

# Chats that already existed: fill what they lack, move activity forward, never touch unread.
# Rows that would not change are not written (and so not locked): a re-import writes nothing.
_UPDATE_CONVERSATIONS = """
UPDATE conversations AS c SET
    contact_name = coalesce(c.contact_name, s.contact_name),
    wa_user_id = coalesce(c.wa_user_id, s.wa_user_id),
    lid = coalesce(c.lid, s.lid),
    last_message_at = greatest(c.last_message_at, s.newest),
    started_at = least(c.started_at, s.oldest),
    updated_at = now()
FROM (
    SELECT s.id, s.contact_name, s.wa_user_id, s.oldest, s.newest,
           CASE WHEN NOT EXISTS (SELECT 1 FROM conversations AS o
                                 WHERE o.session_id = $1 AND o.lid = s.lid)
                THEN s.lid END AS lid
    FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                $7::timestamptz[])
        AS s(id, contact_name, wa_user_id, lid, oldest, newest)
) AS s
WHERE c.id = s.id AND c.session_id = $1
  AND (   (c.contact_name IS NULL AND s.contact_name IS NOT NULL)
       OR (c.wa_user_id IS NULL AND s.wa_user_id IS NOT NULL)
       OR (c.lid IS NULL AND s.lid IS NOT NULL)
       OR s.newest > coalesce(c.last_message_at, '-infinity')
       OR s.oldest < c.started_at)
"""

# ASCII output (the fastest path of the C encoder and of the UTF-8 step after it); no circular
# check: raw comes from a decoded protobuf, a tree.
_encode_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


@dataclass(frozen=True)
class HistoryConversationRow:
    """A chat as history sync describes it."""

    external_id: str
    lid: str | None
    kind: str
    contact_name: str | None
    wa_user_id: str | None
    unread_count: int
    last_message_at: datetime | None


@dataclass(frozen=True)
class HistoryMessageRow:
    """A message of history sync; `external_id` names its chat."""

    external_id: str
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
    sent_at: datetime


@dataclass(frozen=True)
class HistoryImportResult:
    conversations: dict[str, int]  # external id (as given) -> conversation id
    inserted: int  # messages newly stored
    skipped: int  # messages already stored (or repeated within the chunk)


def _combine(
    a: HistoryConversationRow, b: HistoryConversationRow, lid: str | None
) -> HistoryConversationRow:
    """Two descriptions of one chat: every field either has, the later activity."""
    return replace(
        a,
        lid=a.lid or lid,
        contact_name=a.contact_name or b.contact_name,
        wa_user_id=a.wa_user_id or b.wa_user_id,
        unread_count=max(a.unread_count, b.unread_count),
        last_message_at=_latest(a.last_message_at, b.last_message_at),
    )


def _merge(rows: Sequence[HistoryConversationRow]) -> list[HistoryConversationRow]:
    """One row per external id (a chat named twice in a chunk is one chat)."""
    merged: dict[str, HistoryConversationRow] = {}
    for row in rows:
        seen = merged.get(row.external_id)
        merged[row.external_id] = _combine(seen, row, row.lid) if seen else row
    return list(merged.values())


def _no_nul(value: str | None) -> str | None:
    # PostgreSQL text can not hold NUL; one such message must not fail the whole chunk.
    return value.replace("\x00", "") if value is not None and "\x00" in value else value


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


def _raw_json(raw: dict[str, Any] | None) -> str | None:
    if raw is None:
        return None
    text = _encode_json(raw)
    # jsonb refuses \u0000: the rare slow path.
    return _encode_json(_without_nul(raw)) if "\\u0000" in text else text


def _records(
    messages: Sequence[HistoryMessageRow],
    index: dict[str, int],
    oldest: dict[int, datetime],
    newest: dict[int, datetime],
) -> Iterator[tuple[Any, ...]]:
    """The staging rows, made while COPY sends them (nothing piles up for the collector); each
    chat's first and last message time is noted on the way."""
    for m in messages:
        i = index[m.external_id]
        sent = m.sent_at
        first = oldest.get(i)
        if first is None:
            oldest[i] = newest[i] = sent
        elif sent < first:
            oldest[i] = sent
        elif sent > newest[i]:
            newest[i] = sent
        yield (
            i,
            m.wa_message_id,
            m.direction,
            m.sender_type,
            m.sender_jid,
            _no_nul(m.sender_name),
            m.message_type,
            _no_nul(m.text_content),
            m.media_sha256,
            m.media_mime,
            m.media_size,
            _no_nul(m.media_filename),
            m.media_status,
            m.quoted_wa_message_id,
            _raw_json(m.raw),
            m.status,
            sent,
        )


def _latest(*times: datetime | None) -> datetime | None:
    present = [t for t in times if t is not None]
    return max(present) if present else None


def _earliest(*times: datetime | None) -> datetime | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None


def _inserted(status: str) -> int:
    # "INSERT 0 <rows>"
    return int(status.rsplit(" ", 1)[1])


async def import_history(
    conn: Conn,
    session_id: int,
    conversations: Sequence[HistoryConversationRow],
    messages: Sequence[HistoryMessageRow],
    *,
    lock_timeout_ms: int | None = LOCK_TIMEOUT_MS,
) -> HistoryImportResult:
    """Store one history chunk; the caller holds the transaction (one per chunk).

    Every message's `external_id` must be one of `conversations` (ValueError otherwise, before
    anything is written). New chats take the row's unread count; chats that exist keep theirs and
    their name, gain a LID or phone they lacked, and their last-message time only moves forward.
    A chat whose LID belongs to a stored chat under its other addressing form is that chat.

    Waits for locks are bounded by `lock_timeout_ms` (None: the connection's setting): on
    `asyncpg.exceptions.LockNotAvailableError` roll back and import the chunk again later, which
    is safe because the import is idempotent.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("import_history needs the caller's transaction")
    chats = _merge(conversations)
    index = {c.external_id: i for i, c in enumerate(chats)}
    missing = {m.external_id for m in messages}.difference(index)
    if missing:
        raise ValueError(
            f"history messages refer to conversations not in the chunk: {sorted(missing)[:5]}"
        )
    if not chats:
        return HistoryImportResult(conversations={}, inserted=0, skipped=0)

    previous: str | None = None
    if lock_timeout_ms is not None:
        previous = await conn.fetchval(_SET_LOCK_TIMEOUT, f"{lock_timeout_ms}ms")
    await conn.execute(_CREATE_STAGING)
    oldest: dict[int, datetime] = {}
    newest: dict[int, datetime] = {}
    if messages:
        await conn.copy_records_to_table(
            STAGING, records=_records(messages, index, oldest, newest), columns=_STAGING_COLUMNS
        )
    # From here on a chat's last_message_at includes its newest message of the chunk.
    chats = [
        replace(c, last_message_at=_latest(c.last_message_at, newest.get(i)))
        for i, c in enumerate(chats)
    ]
    firsts = [oldest.get(i) for i in range(len(chats))]

    external_ids = [c.external_id for c in chats]
    lids = [c.lid for c in chats]
    await conn.execute(
        _INSERT_CONVERSATIONS,
        session_id,
        external_ids,
        lids,
        [c.kind for c in chats],
        [c.contact_name for c in chats],
        [c.wa_user_id for c in chats],
        [c.unread_count for c in chats],
        firsts,
        [c.last_message_at for c in chats],
    )
    stored = await conn.fetch(
        _RESOLVE, session_id, external_ids, [x for x in lids if x] + external_ids
    )
    by_external = {r["external_id"]: int(r["id"]) for r in stored}
    by_lid = {r["lid"]: int(r["id"]) for r in stored if r["lid"] is not None}
    ids: list[int] = []
    for chat in chats:
        found = by_external.get(chat.external_id)
        if found is None and chat.lid is not None:
            found = by_lid.get(chat.lid)
        if found is None:
            found = by_lid.get(chat.external_id)
        if found is None:  # pragma: no cover - inserted or conflicting, so it is there
            raise RuntimeError(f"conversation {chat.external_id!r} was neither stored nor found")
        ids.append(found)

    inserted = 0
    if messages:
        status = await conn.execute(_INSERT_MESSAGES, session_id, list(range(len(chats))), ids)
        inserted = _inserted(status)

    # One source row per stored chat (two addressing forms of one person may share it), and a
    # LID offered to one chat only, so the single UPDATE never writes a row twice.
    updates: dict[int, HistoryConversationRow] = {}
    starts: dict[int, datetime | None] = {}
    lid_offered: set[str] = set()
    for chat, first, conversation_id in zip(chats, firsts, ids, strict=True):
        lid = chat.lid if chat.lid is not None and chat.lid not in lid_offered else None
        if lid is not None:
            lid_offered.add(lid)
        seen = updates.get(conversation_id)
        updates[conversation_id] = _combine(seen, chat, lid) if seen else replace(chat, lid=lid)
        starts[conversation_id] = _earliest(starts.get(conversation_id), first)
    await conn.execute(
        _UPDATE_CONVERSATIONS,
        session_id,
        list(updates),
        [c.contact_name for c in updates.values()],
        [c.wa_user_id for c in updates.values()],
        [c.lid for c in updates.values()],
        list(starts.values()),
        [c.last_message_at for c in updates.values()],
    )
    await conn.execute(_DROP_STAGING)
    if previous is not None:
        await conn.execute(_RESTORE_LOCK_TIMEOUT, previous)
    return HistoryImportResult(
        conversations={c.external_id: ids[index[c.external_id]] for c in conversations},
        inserted=inserted,
        skipped=len(messages) - inserted,
    )
