"""Cloud API tables: numbers (`cloud_numbers`), the durable webhook inbox
(`cloud_webhook_events`), reported statuses (`cloud_statuses`) and templates
(`cloud_templates`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from db import Conn, Executor

# -- numbers ------------------------------------------------------------------------------------

_NUMBER_COLUMNS = (
    "n.session_id, s.owner_id, s.name, n.phone_number_id, n.waba_id, n.display_phone_number, "
    "n.access_token_sealed, n.app_secret_sealed, n.verify_token_sealed, n.coexistence, "
    "n.messages_per_second, n.bootstrapped"
)
_INSERT_NUMBER = """
INSERT INTO cloud_numbers (session_id, phone_number_id, waba_id, access_token_sealed,
                           app_secret_sealed, verify_token_sealed, coexistence,
                           messages_per_second, bootstrapped)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
_ALL_NUMBERS = f"""
SELECT {_NUMBER_COLUMNS} FROM cloud_numbers n JOIN sessions s ON s.id = n.session_id
ORDER BY n.session_id
"""
_NUMBER = f"""
SELECT {_NUMBER_COLUMNS} FROM cloud_numbers n JOIN sessions s ON s.id = n.session_id
WHERE n.session_id = $1
"""
_NUMBER_BY_PHONE_ID = "SELECT session_id FROM cloud_numbers WHERE phone_number_id = $1"
_SET_DISPLAY = """
UPDATE cloud_numbers SET display_phone_number = $2, updated_at = now() WHERE session_id = $1
"""


@dataclass(frozen=True)
class CloudNumberRow:
    session_id: int
    owner_id: int
    name: str
    phone_number_id: str
    waba_id: str | None
    display_phone_number: str | None
    access_token_sealed: str
    app_secret_sealed: str
    verify_token_sealed: str | None
    coexistence: bool
    messages_per_second: int | None
    bootstrapped: bool

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> CloudNumberRow:
        return cls(**dict(row))


async def insert_number(
    conn: Executor,
    *,
    session_id: int,
    phone_number_id: str,
    waba_id: str | None,
    access_token_sealed: str,
    app_secret_sealed: str,
    verify_token_sealed: str | None,
    coexistence: bool = False,
    messages_per_second: int | None = None,
    bootstrapped: bool = False,
) -> None:
    await conn.execute(
        _INSERT_NUMBER,
        session_id,
        phone_number_id,
        waba_id,
        access_token_sealed,
        app_secret_sealed,
        verify_token_sealed,
        coexistence,
        messages_per_second,
        bootstrapped,
    )


_UPDATE_NUMBER = """
UPDATE cloud_numbers SET
    waba_id = CASE WHEN $2 THEN $3 ELSE waba_id END,
    access_token_sealed = coalesce($4, access_token_sealed),
    app_secret_sealed = coalesce($5, app_secret_sealed),
    verify_token_sealed = CASE WHEN $6 THEN $7 ELSE verify_token_sealed END,
    coexistence = coalesce($8, coexistence),
    messages_per_second = CASE WHEN $9 THEN $10 ELSE messages_per_second END,
    updated_at = now()
WHERE session_id = $1
"""


async def update_number(
    conn: Executor,
    session_id: int,
    *,
    waba_id: tuple[str | None] | None = None,
    access_token_sealed: str | None = None,
    app_secret_sealed: str | None = None,
    verify_token_sealed: tuple[str | None] | None = None,
    coexistence: bool | None = None,
    messages_per_second: tuple[int | None] | None = None,
) -> None:
    """Change a number's settings; a one-tuple sets a nullable column (to None clears it),
    None leaves it as it is."""
    await conn.execute(
        _UPDATE_NUMBER,
        session_id,
        waba_id is not None,
        waba_id[0] if waba_id else None,
        access_token_sealed,
        app_secret_sealed,
        verify_token_sealed is not None,
        verify_token_sealed[0] if verify_token_sealed else None,
        coexistence,
        messages_per_second is not None,
        messages_per_second[0] if messages_per_second else None,
    )


async def all_numbers(conn: Executor) -> list[CloudNumberRow]:
    return [CloudNumberRow.from_row(r) for r in await conn.fetch(_ALL_NUMBERS)]


async def number(conn: Executor, session_id: int) -> CloudNumberRow | None:
    row = await conn.fetchrow(_NUMBER, session_id)
    return CloudNumberRow.from_row(row) if row else None


async def session_of_phone_number_id(conn: Executor, phone_number_id: str) -> int | None:
    value = await conn.fetchval(_NUMBER_BY_PHONE_ID, phone_number_id)
    return int(value) if value is not None else None


async def set_display_phone_number(conn: Executor, session_id: int, display: str) -> None:
    await conn.execute(_SET_DISPLAY, session_id, display)


# -- the webhook inbox ------------------------------------------------------------------------

_INSERT_EVENTS = """
INSERT INTO cloud_webhook_events (event_at, phone_number_id, session_id, body, state)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::bigint[], $4::text[], $5::text[])
"""
_CLAIM = """
SELECT id, session_id, body FROM cloud_webhook_events
WHERE state = 'pending'
ORDER BY event_at, id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""
_FINISH = """
UPDATE cloud_webhook_events SET state = $2, error = $3, processed_at = now()
WHERE id = ANY($1::bigint[])
"""
_PENDING_COUNT = "SELECT count(*) FROM cloud_webhook_events WHERE state = 'pending'"


@dataclass(frozen=True)
class InboxRow:
    """One raw webhook body to commit: when its oldest event happened, whose it is."""

    event_at: datetime
    phone_number_id: str | None
    session_id: int | None
    body: str
    state: str = "pending"


@dataclass(frozen=True)
class PendingEvent:
    id: int
    session_id: int | None
    body: str


async def insert_events(conn: Executor, rows: Sequence[InboxRow]) -> None:
    """Several raw webhook bodies in ONE statement (so one commit covers a whole batch)."""
    await conn.execute(
        _INSERT_EVENTS,
        [r.event_at for r in rows],
        [r.phone_number_id for r in rows],
        [r.session_id for r in rows],
        [r.body for r in rows],
        [r.state for r in rows],
    )


async def claim_pending(conn: Conn, limit: int) -> list[PendingEvent]:
    """The oldest unprocessed events, locked for the caller's transaction (another processor
    skips them)."""
    rows = await conn.fetch(_CLAIM, limit)
    return [PendingEvent(int(r["id"]), r["session_id"], str(r["body"])) for r in rows]


async def finish(conn: Executor, ids: list[int], state: str, error: str | None = None) -> None:
    if ids:
        await conn.execute(_FINISH, ids, state, error)


async def pending_count(conn: Executor) -> int:
    return int(await conn.fetchval(_PENDING_COUNT))


# -- statuses -------------------------------------------------------------------------------

_RECORD_STATUS = """
INSERT INTO cloud_statuses (session_id, wa_message_id, status, at, error_code, error)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING
RETURNING status
"""
# Forward only: pending < sent < delivered < read < played; `failed` only from pending or sent
# (a message someone has read did not fail).
_RANK = "array_position(ARRAY['pending','sent','delivered','read','played']::text[], {})"
_APPLY_STATUS = f"""
UPDATE messages SET status = $3, updated_at = now()
WHERE session_id = $1 AND wa_message_id = $2
  AND status NOT IN ('failed', 'received')
  AND coalesce({_RANK.format("status")}, 0) < {_RANK.format("$3")}
RETURNING id, conversation_id, wa_message_id, status
"""
_APPLY_FAILED = """
UPDATE messages SET status = 'failed', error = $3, error_code = $4, updated_at = now()
WHERE session_id = $1 AND wa_message_id = $2 AND status IN ('pending', 'sent')
RETURNING id, conversation_id, wa_message_id, status, error, error_code
"""
_KNOWN_STATUSES = """
SELECT status, error_code, error FROM cloud_statuses
WHERE session_id = $1 AND wa_message_id = $2
"""


async def record_status(
    conn: Executor,
    session_id: int,
    wa_message_id: str,
    status: str,
    at: datetime,
    error_code: int | None,
    error: str | None,
) -> bool:
    """Note a reported status; False when this (message, status) was reported before."""
    value = await conn.fetchval(
        _RECORD_STATUS, session_id, wa_message_id, status, at, error_code, error
    )
    return value is not None


async def apply_status(
    conn: Executor,
    session_id: int,
    wa_message_id: str,
    status: str,
    error_code: int | None = None,
    error: str | None = None,
) -> dict[str, Any] | None:
    """Move a message's status forward (or to failed); the changed row, or None."""
    if status == "failed":
        row = await conn.fetchrow(_APPLY_FAILED, session_id, wa_message_id, error, error_code)
    else:
        row = await conn.fetchrow(_APPLY_STATUS, session_id, wa_message_id, status)
    return dict(row) if row else None


async def known_statuses(
    conn: Executor, session_id: int, wa_message_id: str
) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(_KNOWN_STATUSES, session_id, wa_message_id)]


# -- contacts removed on the Business app -------------------------------------------------------

_REMOVE_CONTACT = "DELETE FROM contacts WHERE session_id = $1 AND jid = $2 RETURNING id"


async def remove_contact(conn: Executor, session_id: int, jid: str) -> bool:
    return await conn.fetchval(_REMOVE_CONTACT, session_id, jid) is not None


# -- the customer service window ----------------------------------------------------------------

_LAST_INBOUND = """
SELECT max(sent_at) FROM messages
WHERE conversation_id = $1 AND direction = 'inbound' AND NOT from_history
"""


async def last_inbound_at(conn: Executor, conversation_id: int) -> datetime | None:
    value: datetime | None = await conn.fetchval(_LAST_INBOUND, conversation_id)
    return value


# -- templates ------------------------------------------------------------------------------

_TEMPLATE_COLUMNS = (
    "id, session_id, template_id, name, language, category, status, components, "
    "rejected_reason, synced_at"
)
_UPSERT_TEMPLATE = f"""
INSERT INTO cloud_templates (session_id, template_id, name, language, category, status,
                             components, rejected_reason, synced_at)
VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, now())
ON CONFLICT (session_id, name, language) DO UPDATE SET
    template_id = coalesce(EXCLUDED.template_id, cloud_templates.template_id),
    category = coalesce(EXCLUDED.category, cloud_templates.category),
    status = EXCLUDED.status,
    components = EXCLUDED.components,
    rejected_reason = EXCLUDED.rejected_reason,
    synced_at = now()
RETURNING {_TEMPLATE_COLUMNS}
"""
_LIST_TEMPLATES = f"""
SELECT {_TEMPLATE_COLUMNS} FROM cloud_templates
WHERE session_id = $1
  AND ($2::text IS NULL OR status = upper($2))
  AND ($3::text IS NULL OR category = upper($3))
  AND ($4::text IS NULL OR language = $4)
ORDER BY name, language
"""
_SET_TEMPLATE_STATUS = """
UPDATE cloud_templates SET status = $3, rejected_reason = $4, synced_at = now()
WHERE session_id = $1 AND template_id = $2
RETURNING id
"""


# A status Meta reported by webhook: found by Meta's template id, else by name and language;
# a template we never listed is added (its components come with the next sync).
_TEMPLATE_UPDATE_BY_ID = """
UPDATE cloud_templates SET status = $3, rejected_reason = $4, synced_at = now()
WHERE session_id = $1 AND template_id = $2
RETURNING id
"""
_TEMPLATE_UPDATE_BY_NAME = """
UPDATE cloud_templates SET status = $4, rejected_reason = $5, synced_at = now(),
    template_id = coalesce(template_id, $6)
WHERE session_id = $1 AND name = $2 AND language = $3
RETURNING id
"""
_TEMPLATE_INSERT_REPORTED = """
INSERT INTO cloud_templates (session_id, template_id, name, language, status, rejected_reason)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (session_id, name, language) DO UPDATE SET
    status = EXCLUDED.status, rejected_reason = EXCLUDED.rejected_reason, synced_at = now()
RETURNING id
"""


@dataclass(frozen=True)
class TemplateRow:
    id: int
    session_id: int
    template_id: str | None
    name: str
    language: str
    category: str | None
    status: str
    components: list[dict[str, Any]]
    rejected_reason: str | None
    synced_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> TemplateRow:
        values = dict(row)
        components = values["components"]
        values["components"] = json.loads(components) if isinstance(components, str) else components
        return cls(**values)


async def upsert_template(
    conn: Executor,
    session_id: int,
    *,
    template_id: str | None,
    name: str,
    language: str,
    category: str | None,
    status: str,
    components: list[dict[str, Any]],
    rejected_reason: str | None = None,
) -> TemplateRow:
    row = await conn.fetchrow(
        _UPSERT_TEMPLATE,
        session_id,
        template_id,
        name,
        language,
        category,
        status,
        json.dumps(components),
        rejected_reason,
    )
    assert row is not None
    return TemplateRow.from_row(row)


async def list_templates(
    conn: Executor,
    session_id: int,
    *,
    status: str | None = None,
    category: str | None = None,
    language: str | None = None,
) -> list[TemplateRow]:
    rows = await conn.fetch(_LIST_TEMPLATES, session_id, status, category, language)
    return [TemplateRow.from_row(r) for r in rows]


async def set_template_status(
    conn: Executor, session_id: int, template_id: str, status: str, reason: str | None
) -> bool:
    return (
        await conn.fetchval(_SET_TEMPLATE_STATUS, session_id, template_id, status, reason)
        is not None
    )


async def apply_template_update(
    conn: Executor,
    session_id: int,
    *,
    template_id: str | None,
    name: str | None,
    language: str | None,
    status: str,
    reason: str | None,
) -> bool:
    """A `message_template_status_update`; False when it names no template we can place."""
    if template_id and await conn.fetchval(
        _TEMPLATE_UPDATE_BY_ID, session_id, template_id, status, reason
    ):
        return True
    if not (name and language):
        return False
    if await conn.fetchval(
        _TEMPLATE_UPDATE_BY_NAME, session_id, name, language, status, reason, template_id
    ):
        return True
    await conn.fetchval(
        _TEMPLATE_INSERT_REPORTED, session_id, template_id, name, language, status, reason
    )
    return True


_SET_ERROR_CODE = "UPDATE messages SET error_code = $2 WHERE id = $1"


async def set_error_code(conn: Executor, message_id: int, code: int) -> None:
    await conn.execute(_SET_ERROR_CODE, message_id, code)


# -- what a Cloud API send needs beside the message row ------------------------------------------

_SET_LOCATION = """
UPDATE messages
SET raw = jsonb_build_object('wagate', jsonb_build_object('location', $2::text::jsonb))
WHERE id = $1
"""
_MESSAGE_ID_OF = "SELECT id FROM messages WHERE session_id = $1 AND wa_message_id = $2"


async def set_location(conn: Executor, message_id: int, location: dict[str, Any]) -> None:
    """An outbound location's coordinates, where inbound ones are kept (`details.location`)."""
    await conn.execute(_SET_LOCATION, message_id, json.dumps(location))


async def message_id_of(conn: Executor, session_id: int, wa_message_id: str) -> int | None:
    value = await conn.fetchval(_MESSAGE_ID_OF, session_id, wa_message_id)
    return int(value) if value is not None else None
