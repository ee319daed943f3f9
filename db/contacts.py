"""The `contacts` table: the people an account knows, by phone JID and LID."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from db import Executor

_UPSERT = """
INSERT INTO contacts (session_id, jid, lid, phone, push_name, saved_name, business_name)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (session_id, jid) DO UPDATE SET
    lid = coalesce(EXCLUDED.lid, contacts.lid),
    phone = coalesce(EXCLUDED.phone, contacts.phone),
    push_name = coalesce(EXCLUDED.push_name, contacts.push_name),
    saved_name = coalesce(EXCLUDED.saved_name, contacts.saved_name),
    business_name = coalesce(EXCLUDED.business_name, contacts.business_name),
    updated_at = now()
WHERE (contacts.lid, contacts.phone, contacts.push_name, contacts.saved_name,
       contacts.business_name)
   IS DISTINCT FROM
      (coalesce(EXCLUDED.lid, contacts.lid), coalesce(EXCLUDED.phone, contacts.phone),
       coalesce(EXCLUDED.push_name, contacts.push_name),
       coalesce(EXCLUDED.saved_name, contacts.saved_name),
       coalesce(EXCLUDED.business_name, contacts.business_name))
RETURNING id
"""
_BY_JID = "SELECT id FROM contacts WHERE session_id = $1 AND jid = $2"
# A contact first seen under its LID takes its phone JID once the mapping is known (or is
# folded into the phone-keyed contact that already exists).
_LID_ROW = "SELECT id FROM contacts WHERE session_id = $1 AND jid = $2"
_RENAME = "UPDATE contacts SET jid = $2, lid = $3, phone = coalesce(phone, $4) WHERE id = $1"
_DROP = "DELETE FROM contacts WHERE id = $1"
_CLEAR_LID = "UPDATE contacts SET lid = NULL WHERE session_id = $1 AND lid = $2 AND jid <> $3"
_LINK = """
UPDATE conversations SET contact_id = $3
WHERE session_id = $1 AND external_id = $2 AND contact_id IS DISTINCT FROM $3
"""


async def upsert(
    conn: Executor,
    *,
    session_id: int,
    jid: str,
    lid: str | None = None,
    phone: str | None = None,
    push_name: str | None = None,
    saved_name: str | None = None,
    business_name: str | None = None,
) -> int:
    if lid is not None and lid != jid:
        lid_row = await conn.fetchval(_LID_ROW, session_id, lid)
        if lid_row is not None:
            phone_row = await conn.fetchval(_BY_JID, session_id, jid)
            if phone_row is None:
                await conn.execute(_RENAME, lid_row, jid, lid, phone)
            else:
                await conn.execute(_DROP, lid_row)
        await conn.execute(_CLEAR_LID, session_id, lid, jid)
    value = await conn.fetchval(
        _UPSERT, session_id, jid, lid, phone, push_name, saved_name, business_name
    )
    if value is None:  # nothing changed
        value = await conn.fetchval(_BY_JID, session_id, jid)
    return int(value)


async def link_conversation(
    conn: Executor, session_id: int, external_id: str, contact_id: int
) -> None:
    await conn.execute(_LINK, session_id, external_id, contact_id)
