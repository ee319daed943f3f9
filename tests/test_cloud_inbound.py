"""The Cloud API webhook, end to end: Meta's signed POSTs against the real gateway, the fake Graph
API on 127.0.0.1 for media, and what an operator then sees through the REST API and the bus."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.app import create_app
from gateway.keys import CLOUD
from gateway.settings import Settings
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login, make_settings
from tests.fakes import graph as g
from tests.fakes.graph import FakeGraph, emit, envelope, inbound, msg, status, statuses
from tests.sessions_helpers import Client, Recorder, record, wait_for

pytestmark = pytest.mark.timeout(60)

PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00"
    b"\x00\x00IEND\xaeB`\x82"
)
CUSTOMER = "16505551234@s.whatsapp.net"


def cloud_settings(tmp_path: Path, db_url: str, base: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "cloud_graph_url": base,
        "cloud_api_version": g.VERSION,
        "cloud_phone_number_id": g.PHONE_NUMBER_ID,
        "cloud_waba_id": g.WABA_ID,
        "cloud_access_token": g.TOKEN,
        "cloud_app_secret": g.APP_SECRET,
        "cloud_verify_token": g.VERIFY_TOKEN,
        **extra,
    }
    return make_settings(tmp_path, db_url, **values)


@pytest.fixture
async def fake_graph() -> AsyncIterator[FakeGraph]:
    fake = FakeGraph()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def settings(tmp_path: Path, db_url: str, fake_graph: FakeGraph) -> Settings:
    return cloud_settings(tmp_path, db_url, fake_graph.base)


@pytest.fixture
async def token(client: Client) -> str:
    return await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.fixture
async def sid(client: Client, token: str) -> int:
    resp = await client.get("/api/v1/sessions", headers=bearer(token))
    cloud = [s for s in (await resp.json())["items"] if s["channel"] == "cloud"]
    assert len(cloud) == 1
    return int(cloud[0]["id"])


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    yield conn
    await conn.close()


async def messages(client: Client, token: str, n: int) -> list[dict[str, Any]]:
    """The account's messages, oldest first, once there are at least n."""

    async def enough() -> list[dict[str, Any]] | None:
        resp = await client.get("/api/v1/conversations", headers=bearer(token))
        found: list[dict[str, Any]] = []
        for chat in (await resp.json())["items"]:
            page = await client.get(
                f"/api/v1/conversations/{chat['id']}/messages?limit=200", headers=bearer(token)
            )
            found += (await page.json())["items"]
        return found if len(found) >= n else None

    found = await wait_for(enough, what=f"{n} messages")
    return sorted(found, key=lambda m: (m["sent_at"], m["id"]))


async def post(client: Client, payload: dict[str, Any], **kw: Any) -> None:
    resp = await emit(client, payload, **kw)
    assert resp.status == 200, await resp.text()


# -- verification -------------------------------------------------------------------------


async def test_verification_answers_the_challenge_only_for_a_configured_token(
    client: Client, sid: int
) -> None:
    for path in ("/api/whatsapp/webhook", "/api/integrations/whatsapp/webhook"):
        ok = await client.get(
            path,
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": g.VERIFY_TOKEN,
                "hub.challenge": "1158201444",
            },
        )
        assert ok.status == 200
        assert await ok.text() == "1158201444"
    for params in (
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": g.VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"},
        {"hub.verify_token": g.VERIFY_TOKEN, "hub.challenge": "1"},
        {},
    ):
        refused = await client.get("/api/whatsapp/webhook", params=params)
        assert refused.status == 403, params


async def test_no_configured_token_never_verifies(
    tmp_path: Path, db_url: str, aiohttp_client: Any
) -> None:
    client = await aiohttp_client(create_app(make_settings(tmp_path, db_url)))
    for token in ("", "anything"):
        resp = await client.get(
            "/api/whatsapp/webhook",
            params={"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "x"},
        )
        assert resp.status == 403
    # And with no number at all, no POST is ever accepted.
    assert (await emit(client, inbound(msg("text", {"body": "hi"})))).status == 401


# -- what is refused ----------------------------------------------------------------------


async def test_signature_size_and_shape_are_checked_before_anything_is_stored(
    client: Client, sid: int, db: asyncpg.Connection
) -> None:
    payload = inbound(msg("text", {"body": "hola"}))
    assert (await emit(client, payload, secret=None)).status == 401
    assert (await emit(client, payload, secret="another-secret")).status == 401
    assert (await emit(client, payload, signature="sha256=zz")).status == 401
    assert (await emit(client, payload, signature=g.sign(b"other body"))).status == 401
    huge = json.dumps({"object": "whatsapp_business_account", "pad": "x" * (3 * 1024 * 1024)})
    assert (await emit(client, huge.encode())).status == 413
    assert (await emit(client, b"not json")).status == 400
    assert (await emit(client, {"object": "page", "entry": []})).status == 400
    assert (await emit(client, b"[1, 2]")).status == 400
    assert await db.fetchval("SELECT count(*) FROM cloud_webhook_events") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_one_tenants_app_secret_never_writes_into_another_tenants_number(
    client: Client, token: str, sid: int, db: asyncpg.Connection
) -> None:
    """Two operators, two numbers, two app secrets: a payload for B's number signed with A's
    secret (valid for A, so it passes the first check) is refused 401 and nothing is stored,
    for message fields and account-level (WABA) fields alike; signed with B's own secret it
    lands on B's number."""
    made = await client.post(
        "/api/v1/users",
        json={"email": "tenant-b@example.com", "password": "password-123"},
        headers=bearer(token),
    )
    assert made.status == 201, await made.text()
    other = await login(client, "tenant-b@example.com", "password-123")
    created = await client.post(
        "/api/v1/sessions",
        json={
            "name": "B's number",
            "channel": "cloud",
            "phone_number_id": "777000777",
            "waba_id": "888000888",
            "access_token": "b-token",
            "app_secret": "b-app-secret",
        },
        headers=bearer(other),
    )
    assert created.status == 201, await created.text()
    b_session = (await created.json())["id"]

    for_b = inbound(msg("text", {"body": "forged"}), phone_number_id="777000777")
    resp = await emit(client, for_b)  # signed with A's (the admin's) app secret
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "bad_signature"
    for_a = inbound(msg("text", {"body": "forged too"}))
    assert (await emit(client, for_a, secret="b-app-secret")).status == 401
    waba_b = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "888000888",
                "changes": [
                    {
                        "field": "message_template_status_update",
                        "value": {"event": "APPROVED", "message_template_name": "x"},
                    }
                ],
            }
        ],
    }
    assert (await emit(client, waba_b)).status == 401
    assert await db.fetchval("SELECT count(*) FROM cloud_webhook_events") == 0
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    metrics = await (await client.get("/metrics")).text()
    assert 'wagate_cloud_webhook_requests_total{outcome="bad_signature"} 3.0' in metrics

    await post(client, for_b, secret="b-app-secret")
    rows = await db.fetch("SELECT session_id, state FROM cloud_webhook_events")
    assert [r["session_id"] for r in rows] == [b_session]
    assert rows[0]["state"] != "unknown_number"
    mine = await client.get("/api/v1/conversations", headers=bearer(token))
    assert (await mine.json())["items"] == []


async def test_unknown_number_is_answered_200_recorded_and_counted(
    client: Client, sid: int, db: asyncpg.Connection
) -> None:
    await post(client, inbound(msg("text", {"body": "hi"}), phone_number_id="999999"))
    row = await db.fetchrow("SELECT state, phone_number_id FROM cloud_webhook_events")
    assert dict(row) == {"state": "unknown_number", "phone_number_id": "999999"}
    metrics = await (await client.get("/metrics")).text()
    assert 'wagate_cloud_webhook_requests_total{outcome="unknown_number"} 1.0' in metrics
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


# -- every message type -------------------------------------------------------------------


async def test_every_message_type_lands_like_whatsapp_web(
    client: Client, token: str, sid: int, fake_graph: FakeGraph, db: asyncpg.Connection
) -> None:
    recorder = record(client)
    image = fake_graph.add_media(PNG, "image/png")
    voice = fake_graph.add_media(b"OggS" + b"\x00" * 60, "audio/ogg")
    doc = fake_graph.add_media(b"%PDF-1.4 test", "application/pdf")
    t = 1_700_000_000
    items = [
        msg("text", {"body": "hola"}, ts=t),
        msg(
            "image",
            {"id": image, "mime_type": "image/png", "sha256": "x", "caption": "pic"},
            ts=t + 1,
        ),
        msg("audio", {"id": voice, "mime_type": "audio/ogg; codecs=opus", "voice": True}, ts=t + 2),
        msg("video", {"id": image, "mime_type": "video/mp4"}, ts=t + 3),
        msg(
            "document",
            {"id": doc, "mime_type": "application/pdf", "filename": "invoice.pdf"},
            ts=t + 4,
        ),
        msg("sticker", {"id": image, "mime_type": "image/webp", "animated": True}, ts=t + 5),
        msg(
            "location",
            {"latitude": 19.43, "longitude": -99.13, "name": "Zócalo", "address": "CDMX"},
            ts=t + 6,
        ),
        msg(
            "contacts",
            None,
            ts=t + 7,
            contacts=[
                {
                    "name": {"formatted_name": "Ana López", "first_name": "Ana"},
                    "phones": [
                        {"phone": "+52 55 1234 5678", "wa_id": "5215512345678", "type": "CELL"}
                    ],
                }
            ],
        ),
        msg(
            "interactive",
            {"type": "button_reply", "button_reply": {"id": "yes", "title": "Sí"}},
            ts=t + 8,
        ),
        msg(
            "interactive",
            {
                "type": "list_reply",
                "list_reply": {"id": "r1", "title": "Row 1", "description": "d"},
            },
            ts=t + 9,
        ),
        msg("button", {"payload": "STOP", "text": "Stop promotions"}, ts=t + 10),
        msg(
            "system",
            {"body": "Customer changed their number", "type": "customer_changed_number"},
            ts=t + 11,
        ),
        msg(
            "unsupported",
            None,
            ts=t + 12,
            errors=[
                {"code": 131051, "title": "Message type unknown", "message": "Message type unknown"}
            ],
        ),
        msg("poll_of_the_future", {"question": "?"}, ts=t + 13),
    ]
    reply = msg(
        "text",
        {"body": "a reply"},
        ts=t + 14,
        context={"from": "16505551234", "id": items[0]["id"]},
    )
    await post(client, inbound(*items, reply))
    found = await messages(client, token, 15)
    by_type = [m["message_type"] for m in found]
    assert by_type == [
        "text", "image", "voice", "video", "document", "sticker", "location", "contact",
        "interactive", "interactive", "button", "system", "unsupported", "unsupported", "text",
    ]  # fmt: skip
    assert all(m["direction"] == "inbound" and m["sender_type"] == "user" for m in found)
    assert found[0]["text_content"] == "hola"
    assert found[0]["sender_name"] == "Sheena"
    assert found[1]["text_content"] == "pic"
    assert found[4]["media"]["filename"] == "invoice.pdf"
    assert found[6]["details"]["location"]["name"] == "Zócalo"
    assert "Ana López" in found[7]["details"]["contacts"][0]["vcard"]
    assert [m["text_content"] for m in found[8:11]] == ["Sí", "Row 1", "Stop promotions"]
    assert found[14]["quoted_wa_message_id"] == items[0]["id"]
    raw = {
        r["wa_message_id"]: json.loads(r["raw"])
        for r in await db.fetch("SELECT wa_message_id, raw FROM messages")
    }
    assert raw[items[5]["id"]]["message"]["sticker"]["animated"] is True
    assert raw[items[12]["id"]]["message"]["errors"][0]["code"] == 131051
    assert raw[items[13]["id"]]["message"]["poll_of_the_future"] == {"question": "?"}

    # Attachments are fetched through the Graph API into the content-addressed store.
    async def media_stored() -> bool:
        rows = await db.fetch(
            "SELECT media_status FROM messages WHERE media_status IS NOT NULL ORDER BY id"
        )
        return [r["media_status"] for r in rows] == ["stored"] * 5

    await wait_for(media_stored, what="five stored attachments")
    image_row = await db.fetchrow(
        "SELECT id, media_sha256, media_mime FROM messages WHERE wa_message_id = $1", items[1]["id"]
    )
    assert image_row["media_mime"] == "image/png"
    served = await client.get(f"/api/v1/media/{image_row['id']}", headers=bearer(token))
    assert served.status == 200
    assert await served.read() == PNG
    # The bus saw every new message and the conversation, as for WhatsApp Web.
    news = [e for e in recorder.events if e.event == "message-new"]
    assert len(news) == 15
    assert all(e.session_id == sid for e in news)
    assert any(e.event == "conversation-updated" for e in recorder.events)
    conv = await db.fetchrow("SELECT external_id, contact_name, unread_count FROM conversations")
    assert dict(conv) == {"external_id": CUSTOMER, "contact_name": "Sheena", "unread_count": 15}


async def test_reactions_edits_and_revokes_change_their_target(
    client: Client, token: str, sid: int
) -> None:
    first = msg("text", {"body": "original"}, ts=1_700_000_000)
    await post(client, inbound(first))
    await messages(client, token, 1)
    await post(client, inbound(msg("reaction", {"message_id": first["id"], "emoji": "👍"})))

    async def reacted(expected: dict[str, str]) -> bool:
        return (await messages(client, token, 1))[0]["reactions"] == expected

    await wait_for(lambda: reacted({CUSTOMER: "👍"}), what="the reaction")
    await post(client, inbound(msg("reaction", {"message_id": first["id"], "emoji": ""})))
    await wait_for(lambda: reacted({}), what="the reaction removed")
    await post(
        client,
        inbound(
            msg(
                "edit",
                {
                    "original_message_id": first["id"],
                    "message": {"type": "text", "text": {"body": "edited"}},
                },
            )
        ),
    )

    async def edited() -> bool:
        m = (await messages(client, token, 1))[0]
        return m["edited"] and m["text_content"] == "edited"

    await wait_for(edited, what="the edit")
    await post(client, inbound(msg("revoke", {"original_message_id": first["id"]})))

    async def revoked() -> bool:
        return bool((await messages(client, token, 1))[0]["deleted"])

    await wait_for(revoked, what="the revoke")
    assert len(await messages(client, token, 1)) == 1


# -- statuses ---------------------------------------------------------------------------------


async def outbound_row(db: asyncpg.Connection, sid: int, wamid: str) -> int:
    conv = await db.fetchval(
        "INSERT INTO conversations (session_id, external_id) VALUES ($1, $2) "
        "ON CONFLICT (session_id, external_id) DO UPDATE SET kind = 'direct' RETURNING id",
        sid,
        CUSTOMER,
    )
    return int(
        await db.fetchval(
            "INSERT INTO messages (session_id, conversation_id, wa_message_id, direction, "
            "sender_type, text_content, status) VALUES ($1, $2, $3, 'outbound', 'agent', 'hi', "
            "'sent') RETURNING id",
            sid,
            conv,
            wamid,
        )
    )


async def test_statuses_only_move_forward_and_failures_are_shown(
    client: Client, sid: int, db: asyncpg.Connection
) -> None:
    recorder = record(client)
    read_first = await outbound_row(db, sid, "wamid.A")
    failing = await outbound_row(db, sid, "wamid.B")
    t = 1_700_000_100
    # Out of order and duplicated: read arrives before delivered (and delivered never again
    # moves it back), sent is redelivered.
    await post(
        client, statuses(status("wamid.A", "read", ts=t + 2), status("wamid.A", "sent", ts=t))
    )
    await post(client, statuses(status("wamid.A", "delivered", ts=t + 1)))
    await post(client, statuses(status("wamid.A", "sent", ts=t)))
    error = {
        "code": 131047,
        "title": "Re-engagement message",
        "message": "Re-engagement message",
        "error_data": {"details": "Message failed to send because more than 24 hours have passed"},
    }
    await post(client, statuses(status("wamid.B", "failed", ts=t, errors=[error])))
    await post(client, statuses(status("wamid.B", "failed", ts=t, errors=[error])))

    async def settled() -> bool:
        rows = await db.fetch("SELECT id, status FROM messages ORDER BY id")
        return [r["status"] for r in rows] == ["read", "failed"]

    await wait_for(settled, what="read and failed")
    await asyncio.sleep(0.2)
    row = await db.fetchrow("SELECT status, error, error_code FROM messages WHERE id = $1", failing)
    assert row["error_code"] == 131047
    assert "Re-engagement message" in row["error"]
    assert "24 hours" in row["error"]
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", read_first) == "read"
    changes = [
        (e.payload["id"], e.payload["status"])
        for e in recorder.events
        if e.event == "message-status"
    ]
    # Each (message, status) published once: the late `delivered` and the duplicates change nothing.
    assert changes == [(read_first, "read"), (failing, "failed")]
    failed = next(
        e for e in recorder.events if e.event == "message-status" and e.payload["id"] == failing
    )
    assert failed.payload["error_code"] == 131047


# -- at least once, out of order, and crashes -------------------------------------------------


async def test_duplicates_and_reordering(client: Client, token: str, sid: int) -> None:
    t = 1_700_000_000
    a, b, c = (msg("text", {"body": f"m{i}"}, ts=t + i) for i in range(3))
    await post(client, inbound(c))
    await post(client, inbound(a, b))
    await post(client, inbound(b))
    await post(client, inbound(a, c))
    found = await messages(client, token, 3)
    await asyncio.sleep(0.3)
    found = await messages(client, token, 3)
    assert [m["text_content"] for m in found] == ["m0", "m1", "m2"]
    resp = await client.get("/api/v1/conversations", headers=bearer(token))
    assert (await resp.json())["items"][0]["unread_count"] == 3


async def test_a_crash_between_commit_and_processing_loses_nothing(
    tmp_path: Path, db_url: str, fake_graph: FakeGraph, aiohttp_client: Any
) -> None:
    settings = cloud_settings(tmp_path, db_url, fake_graph.base)
    first = await aiohttp_client(create_app(settings))
    # The gateway dies right after answering 200: nothing processes what it committed.
    await first.app[CLOUD].processor.stop()
    payload = inbound(msg("text", {"body": "survives"}))
    await post(first, payload)
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT state FROM cloud_webhook_events") == "pending"
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
        await first.close()
        # A new gateway on the same database processes it, once; Meta's redelivery of the same
        # webhook changes nothing.
        second = await aiohttp_client(create_app(settings))
        token = await login(second, ADMIN_EMAIL, ADMIN_PASSWORD)
        found = await messages(second, token, 1)
        assert [m["text_content"] for m in found] == ["survives"]
        await post(second, payload)

        async def both_done() -> bool:
            rows = await conn.fetch("SELECT state FROM cloud_webhook_events")
            return [r["state"] for r in rows] == ["done", "done"]

        await wait_for(both_done, what="both deliveries processed")
        assert await conn.fetchval("SELECT count(*) FROM messages") == 1
    finally:
        await conn.close()


# -- Coexistence --------------------------------------------------------------------------------


async def test_business_app_echoes_are_the_owners_and_wake_nothing(
    client: Client, token: str, sid: int, db: asyncpg.Connection
) -> None:
    recorder = record(client)
    echo = {
        "from": g.DISPLAY_NUMBER,
        "to": "16505551234",
        "id": "wamid.ECHO1",
        "timestamp": "1700000000",
        "type": "text",
        "text": {"body": "typed on the Business app"},
    }
    await post(client, envelope({"message_echoes": [echo]}, field_name="smb_message_echoes"))
    found = await messages(client, token, 1)
    assert found[0]["direction"] == "outbound"
    assert found[0]["sender_type"] == "owner"
    assert found[0]["text_content"] == "typed on the Business app"
    # The events are published right after the commit that made the message readable.
    await wait_for(lambda: _ready(recorder, "message-new", 1), what="the message-new event")
    new = [e for e in recorder.events if e.event == "message-new"]
    assert [(e.payload["direction"], e.payload["sender_type"]) for e in new] == [
        ("outbound", "owner")
    ]
    # Not unread, and it does not open the customer service window.
    assert await db.fetchval("SELECT unread_count FROM conversations") == 0
    assert await db.fetchval("SELECT count(*) FROM messages WHERE direction = 'inbound'") == 0


async def test_business_app_contacts_are_added_renamed_and_removed(
    client: Client, token: str, sid: int, db: asyncpg.Connection
) -> None:
    def sync(action: str, name: str | None, ts: int) -> dict[str, Any]:
        contact: dict[str, Any] = {"phone_number": "5215512345678"}
        if name:
            contact.update(full_name=name, first_name=name.split()[0])
        return envelope(
            {
                "state_sync": [
                    {
                        "type": "contact",
                        "contact": contact,
                        "action": action,
                        "metadata": {"timestamp": str(ts)},
                    }
                ]
            },
            field_name="smb_app_state_sync",
        )

    async def saved() -> list[str | None]:
        rows = await db.fetch("SELECT saved_name FROM contacts ORDER BY id")
        return [r["saved_name"] for r in rows]

    await post(client, sync("add", "Ana López", 1))
    await wait_for(lambda: _eq(saved(), ["Ana López"]), what="the contact")
    await post(client, sync("add", "Ana María López", 2))
    await wait_for(lambda: _eq(saved(), ["Ana María López"]), what="the rename")
    resp = await client.get("/api/v1/contacts", headers=bearer(token))
    assert (await resp.json())["items"][0]["phone"] == "5215512345678"
    await post(client, sync("remove", None, 3))
    await wait_for(lambda: _eq(saved(), []), what="the removal")


async def _eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_history_chunks_out_of_order_import_without_waking_bridges(
    client: Client, token: str, sid: int, db: asyncpg.Connection
) -> None:
    recorder = record(client)

    def chunk(order: int, progress: int, bodies: list[tuple[str, str, bool]]) -> dict[str, Any]:
        messages = []
        for wamid, body, mine in bodies:
            item = {
                "from": g.DISPLAY_NUMBER if mine else "16505551234",
                "id": wamid,
                "timestamp": str(1_690_000_000 + order * 10 + len(messages)),
                "type": "text",
                "text": {"body": body},
                "history_context": {"status": "READ" if mine else "DELIVERED"},
            }
            if mine:
                item["to"] = "16505551234"
            messages.append(item)
        return envelope(
            {
                "history": [
                    {
                        "metadata": {"phase": 1, "chunk_order": order, "progress": progress},
                        "threads": [{"id": "16505551234", "messages": messages}],
                    }
                ]
            },
            field_name="history",
        )

    await post(client, chunk(2, 100, [("wamid.H3", "third", False)]))
    await post(client, chunk(1, 50, [("wamid.H1", "first", False), ("wamid.H2", "second", True)]))
    await post(client, chunk(1, 50, [("wamid.H1", "first", False), ("wamid.H2", "second", True)]))
    found = await messages(client, token, 3)
    assert [m["text_content"] for m in found] == ["first", "second", "third"]
    assert [m["from_history"] for m in found] == [True, True, True]
    assert [m["sender_type"] for m in found] == ["user", "owner", "user"]
    await wait_for(
        lambda: _ready(recorder, "history-progress", 3), what="three history-progress events"
    )
    progress = [e.payload for e in recorder.events if e.event == "history-progress"]
    assert sorted(p["progress"] for p in progress) == [50, 50, 100]
    assert sum(p["imported"] for p in progress) == 3
    # History wakes no bridge: no message-new for imported messages.
    assert [e for e in recorder.events if e.event == "message-new"] == []
    declined = envelope(
        {
            "history": [
                {
                    "errors": [
                        {
                            "code": 2593109,
                            "title": "History sync declined",
                            "message": "History sync declined",
                            "error_data": {"details": "The business declined to share history"},
                        }
                    ]
                }
            ]
        },
        field_name="history",
    )
    await post(client, declined)

    async def shown() -> bool:
        resp = await client.get(f"/api/v1/sessions/{sid}", headers=bearer(token))
        return "declined" in ((await resp.json())["last_error"] or "")

    await wait_for(shown, what="the declined history on the session")
    await wait_for(lambda: _ready(recorder, "history-progress", 4), what="the declined event")
    assert [e.payload.get("declined") for e in recorder.events if e.event == "history-progress"][
        -1
    ] is True


async def _ready(recorder: Recorder, name: str, n: int) -> bool:
    return len([e for e in recorder.events if e.event == name]) >= n


# -- numbers ----------------------------------------------------------------------------------


async def test_cloud_numbers_keep_their_secrets_sealed(
    client: Client, token: str, sid: int, db: asyncpg.Connection, fake_graph: FakeGraph
) -> None:
    resp = await client.post(
        "/api/v1/sessions",
        json={
            "name": "Sales",
            "channel": "cloud",
            "phone_number_id": "222333444",
            "waba_id": "555",
            "access_token": "secret-token-value",
            "app_secret": "secret-app-value",
            "verify_token": "secret-verify-value",
            "coexistence": True,
        },
        headers=bearer(token),
    )
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    text = json.dumps(created)
    assert created["channel"] == "cloud"
    assert created["cloud"]["phone_number_id"] == "222333444"
    assert created["cloud"]["messages_per_second"] == 20
    for secret in ("secret-token-value", "secret-app-value", "secret-verify-value"):
        assert secret not in text
        dumped = await db.fetchval("SELECT row_to_json(n)::text FROM cloud_numbers n")
        assert secret not in dumped
    # Its own verify token now verifies too, and a duplicate number id is refused.
    ok = await client.get(
        "/api/whatsapp/webhook",
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": "secret-verify-value",
            "hub.challenge": "7",
        },
    )
    assert await ok.text() == "7"
    again = await client.post(
        "/api/v1/sessions",
        json={
            "name": "x",
            "channel": "cloud",
            "phone_number_id": "222333444",
            "access_token": "a",
            "app_secret": "b",
        },
        headers=bearer(token),
    )
    assert again.status == 409
    missing = await client.post(
        "/api/v1/sessions", json={"name": "x", "channel": "cloud"}, headers=bearer(token)
    )
    assert missing.status == 400
    # No worker is ever started for a cloud number.
    assert (
        await client.post(f"/api/v1/sessions/{created['id']}/start", headers=bearer(token))
    ).status == 409
    # The token check asks the Graph API.
    checked = await client.post(f"/api/v1/sessions/{sid}/test", headers=bearer(token))
    assert (await checked.json()) == {
        "ok": True,
        "message": "the access token works",
        "state": "connected",
    }
    fake_graph.tokens.clear()
    checked = await client.post(f"/api/v1/sessions/{sid}/test", headers=bearer(token))
    body = await checked.json()
    assert body["ok"] is False
    assert body["state"] == "auth_failed"
    deleted = await client.delete(f"/api/v1/sessions/{created['id']}", headers=bearer(token))
    assert deleted.status == 204
