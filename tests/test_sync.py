"""Chat sync: from the fake phone through a real worker process to the rows an operator sees."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from sessions.fake_server import SAMPLE_MEDIA, SimHistory, SimMessage, SimReceipt
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login
from tests.sessions_helpers import Client, fast_settings, link, phone, record, wait_for

pytestmark = pytest.mark.timeout(120)

ALICE = "+5215512345678"
ALICE_JID = "5215512345678@s.whatsapp.net"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return fast_settings(tmp_path, db_url)


@pytest.fixture
async def token(client: Client) -> str:
    return await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.fixture
async def sid(client: Client, token: str, settings: Settings) -> int:
    return await link(client, token, settings)


class Db:
    def __init__(self, url: str) -> None:
        self.url = url

    async def rows(self, query: str, *args: Any) -> list[dict[str, Any]]:
        conn = await asyncpg.connect(self.url)
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    async def message(self, session_id: int, wa_id: str, timeout: float = 15) -> dict[str, Any]:
        async def found() -> list[dict[str, Any]]:
            return await self.rows(
                "SELECT m.*, c.external_id, c.lid AS conversation_lid, c.unread_count "
                "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                "WHERE m.session_id = $1 AND m.wa_message_id = $2",
                session_id,
                wa_id,
            )

        return (await wait_for(found, timeout=timeout, what=f"message {wa_id}"))[0]

    async def count(self, session_id: int) -> int:
        rows = await self.rows(
            "SELECT count(*) AS n FROM messages WHERE session_id = $1", session_id
        )
        return int(rows[0]["n"])


@pytest.fixture
def db(db_url: str) -> Db:
    return Db(db_url)


def sim(**fields: Any) -> SimMessage:
    fields.setdefault("from", ALICE)
    return SimMessage.model_validate(fields)


def send(settings: Settings, session_id: int, **fields: Any) -> str:
    return phone(settings, session_id).send(sim(**fields))[0]


# -- every message type ----------------------------------------------------------------------

CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"type": "text", "text": "hola"}, {"message_type": "text", "text_content": "hola"}),
    (
        {"type": "link", "text": "see https://example.com/x"},
        {"message_type": "text", "text_content": "see https://example.com/x"},
    ),
    (
        {"type": "image", "caption": "a photo"},
        {"message_type": "image", "text_content": "a photo", "media_mime": "image/jpeg"},
    ),
    ({"type": "video"}, {"message_type": "video", "media_mime": "video/mp4"}),
    ({"type": "audio"}, {"message_type": "audio"}),
    ({"type": "voice"}, {"message_type": "voice", "media_mime": "audio/ogg"}),
    (
        {"type": "document", "filename": "invoice-42.pdf"},
        {
            "message_type": "document",
            "media_filename": "invoice-42.pdf",
            "media_mime": "application/pdf",
        },
    ),
    ({"type": "sticker"}, {"message_type": "sticker", "media_mime": "image/webp"}),
    (
        {"type": "location", "lat": 19.4326, "lng": -99.1332, "name": "Zócalo"},
        {"message_type": "location"},
    ),
    ({"type": "live_location", "lat": 19.4, "lng": -99.1}, {"message_type": "live_location"}),
    ({"type": "contact", "contacts": [["Bob", "+5215587654321"]]}, {"message_type": "contact"}),
    (
        {"type": "contacts", "contacts": [["Bob", "+5215587654321"], ["Eve", "+5215500000000"]]},
        {"message_type": "contacts"},
    ),
    ({"type": "poll", "text": "Lunch?", "options": ["tacos", "sushi"]}, {"message_type": "poll"}),
    ({"type": "unknown", "text": "Team offsite"}, {"message_type": "unsupported"}),
]


@pytest.mark.parametrize(("spec", "expected"), CASES, ids=[c[0]["type"] for c in CASES])
async def test_every_message_type_lands_as_a_row(
    settings: Settings, sid: int, db: Db, spec: dict[str, Any], expected: dict[str, Any]
) -> None:
    wa_id = send(settings, sid, push_name="Alice", **spec)
    row = await db.message(sid, wa_id)
    assert row["external_id"] == ALICE_JID
    assert row["direction"] == "inbound"
    assert row["sender_type"] == "user"
    assert row["sender_name"] == "Alice"
    for key, value in expected.items():
        if key == "media_mime":
            continue  # checked after the download below
        assert row[key] == value, key
    if spec["type"] in SAMPLE_MEDIA:
        data = SAMPLE_MEDIA[spec["type"]]
        stored = await wait_for(
            lambda: _media_done(db, sid, wa_id), what=f"{spec['type']} media download"
        )
        assert stored["media_status"] == "stored"
        assert stored["media_sha256"] == hashlib.sha256(data).hexdigest()
        assert stored["media_size"] == len(data)
        media_file = settings.media_path / stored["media_sha256"][:2] / stored["media_sha256"]
        assert media_file.read_bytes() == data
        if "media_mime" in expected:
            assert stored["media_mime"] == expected["media_mime"]
    raw = row["raw"]
    assert raw is not None
    if spec["type"] == "location":
        assert '"latitude": 19.4326' in raw
    if spec["type"] in ("contact", "contacts"):
        assert "BEGIN:VCARD" in raw
    if spec["type"] == "poll":
        assert "tacos" in raw
    if spec["type"] == "unknown":
        assert "Team offsite" in raw


async def _media_done(db: Db, sid: int, wa_id: str) -> dict[str, Any] | None:
    row = await db.message(sid, wa_id)
    return row if row["media_status"] != "pending" else None


async def test_view_once_and_ephemeral_are_flagged(settings: Settings, sid: int, db: Db) -> None:
    once = send(settings, sid, type="image", view_once=True)
    fleeting = send(settings, sid, type="text", text="poof", ephemeral=True)
    assert '"view_once": true' in (await db.message(sid, once))["raw"]
    row = await db.message(sid, fleeting)
    assert row["text_content"] == "poof"
    assert '"ephemeral": true' in row["raw"]


async def test_reply_keeps_the_quoted_message(settings: Settings, sid: int, db: Db) -> None:
    first = send(settings, sid, text="question")
    answer = send(settings, sid, text="and more", reply_to=first, quoted_text="question")
    row = await db.message(sid, answer)
    assert row["quoted_wa_message_id"] == first
    assert "question" in row["raw"]


async def test_reaction_attaches_to_its_target_and_an_empty_one_removes_it(
    settings: Settings, sid: int, db: Db
) -> None:
    target = send(settings, sid, text="nice?")
    await db.message(sid, target)
    send(settings, sid, type="reaction", target_id=target, emoji="👍")

    async def reacted() -> dict[str, Any] | None:
        row = await db.message(sid, target)
        return row if '"reactions"' in str(row["interactions"]) else None

    row = await wait_for(reacted, what="the reaction")
    assert "👍" in row["interactions"]
    assert await db.count(sid) == 1  # not a new bubble
    send(settings, sid, type="reaction", target_id=target, emoji="")

    async def removed() -> bool:
        row = await db.message(sid, target)
        return '"reactions": {}' in row["interactions"]

    await wait_for(removed, what="the reaction removal")


async def test_an_edit_keeps_the_previous_versions(settings: Settings, sid: int, db: Db) -> None:
    target = send(settings, sid, text="v1")
    await db.message(sid, target)
    send(settings, sid, type="edit", target_id=target, text="v2")
    send(settings, sid, type="edit", target_id=target, text="v3")

    async def edited() -> dict[str, Any] | None:
        row = await db.message(sid, target)
        return row if row["text_content"] == "v3" else None

    row = await wait_for(edited, what="two edits")
    assert row["edited_at"] is not None
    assert '"text": "v1"' in row["interactions"]
    assert '"text": "v2"' in row["interactions"]
    assert await db.count(sid) == 1


async def test_revoke_marks_deleted_and_keeps_the_original_for_audit(
    settings: Settings, sid: int, db: Db
) -> None:
    target = send(settings, sid, text="oops")
    await db.message(sid, target)
    send(settings, sid, type="revoke", target_id=target)

    async def revoked() -> dict[str, Any] | None:
        row = await db.message(sid, target)
        return row if row["revoked_at"] is not None else None

    row = await wait_for(revoked, what="the revoke")
    assert row["text_content"] == "oops"
    assert await db.count(sid) == 1


async def test_revoke_erases_the_original_when_told_to(
    aiohttp_client: Any, tmp_path: Path, db_url: str
) -> None:
    settings = fast_settings(tmp_path, db_url, keep_revoked=False)
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    session_id = await link(client, token, settings)
    db = Db(db_url)
    target = send(settings, session_id, text="secret")
    await db.message(session_id, target)
    send(settings, session_id, type="revoke", target_id=target)

    async def revoked() -> dict[str, Any] | None:
        row = await db.message(session_id, target)
        return row if row["revoked_at"] is not None else None

    row = await wait_for(revoked, what="the revoke")
    assert row["text_content"] is None
    assert row["raw"] is None


async def test_poll_votes_attach_to_the_poll(settings: Settings, sid: int, db: Db) -> None:
    poll = send(settings, sid, type="poll", text="Lunch?", options=["tacos", "sushi"])
    await db.message(sid, poll)
    send(settings, sid, type="poll_vote", target_id=poll, options=["tacos"], target_from_me=False)

    async def voted() -> dict[str, Any] | None:
        row = await db.message(sid, poll)
        return row if '"votes"' in row["interactions"] else None

    row = await wait_for(voted, what="the vote")
    assert ALICE_JID in row["interactions"]
    assert await db.count(sid) == 1


async def test_what_the_owner_sends_from_the_phone_is_stored_as_owner(
    settings: Settings, sid: int, db: Db
) -> None:
    wa_id = send(settings, sid, text="sent from my phone", from_me=True, to=ALICE)
    row = await db.message(sid, wa_id)
    assert row["direction"] == "outbound"
    assert row["sender_type"] == "owner"
    assert row["status"] == "sent"
    assert row["external_id"] == ALICE_JID
    assert row["unread_count"] == 0


# -- receipts, duplicates, unread -------------------------------------------------------------


async def test_receipts_only_move_forward(settings: Settings, sid: int, db: Db) -> None:
    wa_id = send(settings, sid, text="ours", from_me=True, to=ALICE)
    await db.message(sid, wa_id)
    p = phone(settings, sid)
    p.receipt(SimReceipt.model_validate({"ids": [wa_id], "status": "read", "from": ALICE}))
    p.receipt(SimReceipt.model_validate({"ids": [wa_id], "status": "delivered", "from": ALICE}))
    marker = send(settings, sid, text="after the receipts")
    await db.message(sid, marker)
    assert (await db.message(sid, wa_id))["status"] == "read"


async def test_duplicate_deliveries_change_nothing(
    client: Client, token: str, settings: Settings, sid: int, db: Db
) -> None:
    events = record(client)
    message = sim(text="once", id="3EB0DUPLICATE0001")
    phone(settings, sid).send(message, message)
    phone(settings, sid).send(message)
    await db.message(sid, "3EB0DUPLICATE0001")
    marker = send(settings, sid, text="marker")
    row = await db.message(sid, marker)
    assert await db.count(sid) == 2
    assert row["unread_count"] == 2
    new = [e for e in events.events if e.event == "message-new"]
    assert [e.payload["wa_message_id"] for e in new] == ["3EB0DUPLICATE0001", marker]


async def test_reading_a_conversation_zeroes_unread_and_tells_whatsapp(
    client: Client, token: str, settings: Settings, sid: int, db: Db
) -> None:
    ids = phone(settings, sid).send(sim(text="one"), sim(text="two"))
    row = await db.message(sid, ids[1])

    async def both_unread() -> bool:
        return (await db.message(sid, ids[1]))["unread_count"] == 2

    await wait_for(both_unread, what="two unread")
    resp = await client.post(
        f"/api/v1/conversations/{row['conversation_id']}/read", headers=bearer(token)
    )
    assert resp.status == 200
    assert await resp.json() == {
        "conversation_id": row["conversation_id"],
        "unread_count": 0,
        "receipt_sent": True,
    }
    assert (await db.message(sid, ids[1]))["unread_count"] == 0
    reads = [s for s in phone(settings, sid).sent() if "read" in s]
    assert sorted(reads[-1]["read"]) == sorted(ids)


# -- one person, two addresses ------------------------------------------------------------------


async def test_lid_and_phone_conversations_are_merged(settings: Settings, sid: int, db: Db) -> None:
    lid = "240000111222333"
    first = send(settings, sid, text="from my LID", lid=lid, lid_only=True)
    row = await db.message(sid, first)
    assert row["external_id"] in (f"{lid}@lid", ALICE_JID)  # a lookup may resolve it at once
    second = send(settings, sid, text="by number")
    third = send(settings, sid, text="LID with number", lid=lid)
    await db.message(sid, third)

    async def one_conversation() -> list[dict[str, Any]] | None:
        rows = await db.rows(
            "SELECT id, external_id, lid, unread_count FROM conversations WHERE session_id = $1",
            sid,
        )
        return rows if len(rows) == 1 else None

    (conversation,) = await wait_for(one_conversation, what="one conversation")
    assert conversation["external_id"] == ALICE_JID
    assert conversation["lid"] == f"{lid}@lid"
    assert conversation["unread_count"] == 3
    placed = await db.rows(
        "SELECT DISTINCT conversation_id FROM messages WHERE session_id = $1", sid
    )
    assert placed == [{"conversation_id": conversation["id"]}]
    contacts = await db.rows("SELECT jid, lid, phone FROM contacts WHERE session_id = $1", sid)
    assert contacts == [{"jid": ALICE_JID, "lid": f"{lid}@lid", "phone": "5215512345678"}]
    assert second


async def test_a_lid_only_chat_is_resolved_by_the_lookup(
    settings: Settings, sid: int, db: Db
) -> None:
    lid = "240000999888777"
    wa_id = send(settings, sid, text="who am I", lid=lid, lid_only=True)

    async def resolved() -> dict[str, Any] | None:
        row = await db.message(sid, wa_id)
        return row if row["external_id"] == ALICE_JID else None

    row = await wait_for(resolved, what="the LID lookup")
    assert row["conversation_lid"] == f"{lid}@lid"


# -- media --------------------------------------------------------------------------------------


async def test_media_over_the_limit_is_kept_as_too_large(
    aiohttp_client: Any, tmp_path: Path, db_url: str
) -> None:
    settings = fast_settings(tmp_path, db_url, media_max_mb=0.001)
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    session_id = await link(client, token, settings)
    db = Db(db_url)
    big = base64.b64encode(b"\xff\xd8\xff\xe0" + b"x" * 5000).decode()
    wa_id = send(settings, session_id, type="image", data_b64=big, caption="huge")
    row = await wait_for(lambda: _media_done(db, session_id, wa_id), what="the verdict")
    assert row["media_status"] == "too_large"
    assert row["text_content"] == "huge"
    assert not list(settings.media_path.rglob("*")) or all(
        p.is_dir() for p in settings.media_path.rglob("*")
    )


async def test_failed_download_is_retried_then_marked_failed(
    client: Client, settings: Settings, sid: int, db: Db
) -> None:
    events = record(client)
    wa_id = send(settings, sid, type="document", filename="gone.pdf", media_unavailable=True)
    row = await wait_for(lambda: _media_done(db, sid, wa_id), timeout=30, what="the verdict")
    assert row["media_status"] == "failed"
    assert row["media_filename"] == "gone.pdf"
    # The event follows the committed row; a client sees it soon after, not necessarily first.
    failed = await wait_for(
        lambda: asyncio.sleep(
            0,
            result=[
                e
                for e in events.events
                if e.event == "message-updated" and e.payload.get("media_status") == "failed"
            ],
        ),
        what="the message-updated event saying the media failed",
    )
    assert failed[-1].payload["media_status"] == "failed"


async def test_media_is_served_to_its_owner_only_with_ranges(
    client: Client, token: str, settings: Settings, sid: int, db: Db
) -> None:
    data = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
    wa_id = send(
        settings,
        sid,
        type="document",
        filename="report.pdf",
        data_b64=base64.b64encode(data).decode(),
    )
    row = await wait_for(lambda: _media_done(db, sid, wa_id), what="the download")
    url = f"/api/v1/media/{row['id']}"
    resp = await client.get(url, headers=bearer(token))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/pdf"
    assert int(resp.headers["Content-Length"]) == len(data)
    assert 'filename="report.pdf"' in resp.headers["Content-Disposition"]
    assert await resp.read() == data
    part = await client.get(url, headers={**bearer(token), "Range": "bytes=100-199"})
    assert part.status == 206
    assert await part.read() == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"

    await client.post(
        "/api/v1/users",
        json={"email": "other@example.com", "password": "password-123"},
        headers=bearer(token),
    )
    other = await login(client, "other@example.com", "password-123")
    resp = await client.get(url, headers=bearer(other))
    assert resp.status == 404
    assert (await client.get(url)).status == 401
    text_row = await db.message(sid, send(settings, sid, text="no media"))
    assert (
        await client.get(f"/api/v1/media/{text_row['id']}", headers=bearer(token))
    ).status == 404


# -- history ------------------------------------------------------------------------------------


def history_chunk(order: int, chats: int, per_chat: int, progress: int) -> SimHistory:
    return SimHistory.model_validate(
        {
            "chunk_order": order,
            "progress": progress,
            "conversations": [
                {
                    "chat": f"+52155{order:02d}{c:06d}",
                    "name": f"Chat {order}-{c}",
                    "messages": [
                        {
                            "type": "text",
                            "text": f"old {order}-{c}-{i}",
                            "id": f"HIST{order:02d}{c:04d}{i:04d}",
                            "from": f"+52155{order:02d}{c:06d}",
                            "ts": 1_700_000_000_000 + i,
                        }
                        for i in range(per_chat)
                    ],
                }
                for c in range(chats)
            ],
        }
    )


async def test_history_sync_in_chunks_one_repeated_while_live_messages_flow(
    client: Client, settings: Settings, sid: int, db: Db
) -> None:
    events = record(client)
    p = phone(settings, sid)
    chunks = [history_chunk(n, chats=20, per_chat=50, progress=n * 33) for n in (1, 2, 3)]
    p.history(chunks[0])
    live = send(settings, sid, text="live during import")
    p.history(chunks[1])
    p.history(chunks[1])  # WhatsApp sends a chunk again
    p.history(chunks[2])
    await db.message(sid, live)

    async def imported() -> bool:
        return await db.count(sid) == 3 * 20 * 50 + 1

    await wait_for(imported, timeout=60, what="all history")

    async def progressed() -> bool:
        return any(
            e.event == "history-progress" and e.payload["progress"] == 99 for e in events.events
        )

    await wait_for(progressed, what="the last progress event")
    await asyncio.sleep(0.3)
    assert await db.count(sid) == 3001
    history_rows = await db.rows(
        "SELECT count(*) AS n, bool_and(from_history) AS h, max(unread_count) AS u "
        "FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE m.session_id = $1 AND m.wa_message_id LIKE 'HIST%'",
        sid,
    )
    assert history_rows == [{"n": 3000, "h": True, "u": 0}]
    progress = [e.payload["progress"] for e in events.events if e.event == "history-progress"]
    assert progress[0] == 33
    assert max(progress) == 99
    live_row = await db.message(sid, live)
    assert live_row["from_history"] is False
    chunks_done = [e.payload for e in events.events if e.event == "history-progress"]
    assert sum(p["imported"] for p in chunks_done) == 3000
    assert [p["already_stored"] for p in chunks_done] == [0, 0, 1000, 0]  # the repeat
    # A history import publishes its chats, not thousands of message events.
    assert not [e for e in events.events if e.event == "message-new" and e.payload["from_history"]]


async def test_group_messages_land_in_the_group_with_its_name_and_participants(
    settings: Settings, sid: int, db: Db
) -> None:
    group = phone(settings, sid).create_group(
        "120363000000000001", "Support team", [ALICE, "+5215587654321"]
    )
    wa_id = send(settings, sid, text="hi all", group=group, push_name="Alice")
    row = await db.message(sid, wa_id)
    assert row["external_id"] == f"{group}@g.us"
    assert row["sender_jid"] == ALICE_JID

    async def named() -> list[dict[str, Any]] | None:
        rows = await db.rows(
            "SELECT kind, contact_name, participants, unread_count FROM conversations "
            "WHERE id = $1",
            row["conversation_id"],
        )
        return rows if rows[0]["contact_name"] else None

    (conversation,) = await wait_for(named, what="the group's name")
    assert conversation["kind"] == "group"
    assert conversation["contact_name"] == "Support team"
    assert ALICE_JID in conversation["participants"]
    assert '"admin": true' in conversation["participants"]
    assert conversation["unread_count"] == 1


async def test_a_reaction_that_arrives_before_its_message_waits_for_it(
    settings: Settings, sid: int, db: Db
) -> None:
    send(settings, sid, type="reaction", target_id="3EB0LATECOMER0001", emoji="🎉")
    send(settings, sid, type="edit", target_id="3EB0LATECOMER0001", text="edited early")
    send(settings, sid, text="original", id="3EB0LATECOMER0001")

    async def applied() -> dict[str, Any] | None:
        row = await db.message(sid, "3EB0LATECOMER0001")
        return row if "🎉" in row["interactions"] and row["edited_at"] else None

    row = await wait_for(applied, what="the parked reaction and edit")
    assert row["text_content"] == "edited early"
    assert await db.count(sid) == 1
    assert await db.rows("SELECT * FROM pending_interactions") == []


async def test_contacts_get_their_profile_picture(settings: Settings, sid: int, db: Db) -> None:
    wa_id = send(settings, sid, text="hello", push_name="Alice")
    row = await db.message(sid, wa_id)

    async def pictured() -> list[dict[str, Any]] | None:
        rows = await db.rows(
            "SELECT k.jid, k.phone, k.push_name, k.photo_url, c.contact_photo_url, c.contact_id, "
            "k.id AS kid FROM contacts k JOIN conversations c ON c.contact_id = k.id "
            "WHERE c.id = $1",
            row["conversation_id"],
        )
        return rows if rows and rows[0]["photo_url"] else None

    (contact,) = await wait_for(pictured, what="the profile picture")
    assert contact["jid"] == ALICE_JID
    assert contact["phone"] == "5215512345678"
    assert contact["push_name"] == "Alice"
    assert contact["photo_url"].endswith("5215512345678.jpg")
    assert contact["contact_photo_url"] == contact["photo_url"]


async def test_a_nul_character_from_whatsapp_is_dropped_and_storage_goes_on(
    settings: Settings, sid: int, db: Db
) -> None:
    odd = send(settings, sid, text="a\x00b", push_name="Eve\x00")
    after = send(settings, sid, text="next")
    row = await db.message(sid, odd)
    assert row["text_content"] == "ab"
    assert row["sender_name"] == "Eve"
    assert (await db.message(sid, after))["text_content"] == "next"


async def test_a_location_without_finite_coordinates_does_not_jam_the_session(
    settings: Settings, sid: int, db: Db
) -> None:
    odd = send(settings, sid, type="location", lat=float("nan"), lng=float("inf"))
    after = send(settings, sid, text="still flowing")
    assert (await db.message(sid, after))["text_content"] == "still flowing"
    assert (await db.message(sid, odd))["message_type"] == "location"
