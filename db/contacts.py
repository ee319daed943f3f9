"""The `contacts` table: the people an account knows, by phone JID and LID."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


_UPSERT_MANY = """
INSERT INTO contacts (session_id, jid, phone, push_name)
SELECT $1, j, p, n FROM unnest($2::text[], $3::text[], $4::text[]) AS u(j, p, n)
ON CONFLICT (session_id, jid) DO UPDATE SET
    push_name = coalesce(EXCLUDED.push_name, contacts.push_name),
    phone = coalesce(contacts.phone, EXCLUDED.phone),
    updated_at = now()
WHERE contacts.push_name IS DISTINCT FROM coalesce(EXCLUDED.push_name, contacts.push_name)
   OR contacts.phone IS NULL AND EXCLUDED.phone IS NOT NULL
"""
_LINK_MANY = """
UPDATE conversations c SET contact_id = k.id
FROM contacts k
WHERE c.session_id = $1 AND k.session_id = $1 AND c.external_id = ANY($2::text[])
  AND k.jid = c.external_id AND c.contact_id IS DISTINCT FROM k.id
"""


_SET_PHOTO = """
UPDATE contacts SET photo_url = $3, updated_at = now() WHERE session_id = $1 AND jid = $2
"""
_SET_CHAT_PHOTO = """
UPDATE conversations SET contact_photo_url = $3, updated_at = now()
WHERE session_id = $1 AND external_id = $2
"""


async def set_photo(conn: Executor, session_id: int, jid: str, url: str | None) -> None:
    """The person's profile picture, on the contact and on their conversation."""
    await conn.execute(_SET_PHOTO, session_id, jid, url)
    await conn.execute(_SET_CHAT_PHOTO, session_id, jid, url)


async def upsert_many(
    conn: Executor,
    session_id: int,
    people: dict[str, tuple[str | None, str | None]],
    link: list[str],
) -> None:
    """Phone-keyed people seen in a batch: jid -> (phone, push name); the chats in `link`
    (new ones) get their contact linked."""
    if not people:
        return
    jids = list(people)
    await conn.execute(
        _UPSERT_MANY,
        session_id,
        jids,
        [people[j][0] for j in jids],
        [people[j][1] for j in jids],
    )
    if link:
        await conn.execute(_LINK_MANY, session_id, link)


_PAGE = """
SELECT k.id, k.session_id, k.jid, k.lid, k.phone, k.push_name, k.saved_name, k.business_name,
       k.photo_url, k.updated_at
FROM contacts k JOIN sessions s ON s.id = k.session_id
WHERE ($1::bigint IS NULL OR s.owner_id = $1)
  AND ($2::bigint IS NULL OR k.session_id = $2)
  AND ($3::text IS NULL OR k.push_name ILIKE '%' || $3 || '%' OR k.saved_name ILIKE '%' || $3 || '%'
       OR k.phone LIKE $3 || '%')
  AND k.id > $4
ORDER BY k.id
LIMIT $5
"""


async def page(
    conn: Executor,
    owner_id: int | None,
    *,
    session_id: int | None,
    q: str | None,
    after_id: int,
    limit: int,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(_PAGE, owner_id, session_id, q, after_id, limit)
    return [dict(r) for r in rows]
