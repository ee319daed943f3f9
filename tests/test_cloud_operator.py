# ruff: noqa: F811 - the fixtures imported from test_cloud_inbound are parameters here
"""Cloud API, the operator's side: template statuses and Meta's errors arriving by webhook, read
receipts, locations, stickers, edits and revokes refused, the Coexistence sync, Socket.IO sends
and what the webhook answers when it can not verify a signature."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.app import create_app
from tests.conftest import bearer, make_settings
from tests.fakes import graph as g
from tests.fakes.graph import FakeGraph, emit, envelope, inbound, msg
from tests.sessions_helpers import Client, record, wait_for
from tests.test_cloud_inbound import (  # noqa: F401 - fixtures
    db,
    fake_graph,
    post,
    settings,
    sid,
    token,
)
from tests.test_cloud_sending import open_chat, status_of
from tests.test_realtime import base_url, connected

pytestmark = pytest.mark.timeout(60)

# A 1x1 lossless WebP: a sticker when sent as an attachment.
WEBP = bytes.fromhex("524946461a000000574542505650384c0d0000002f0000001007101111888888fe0700")


def template_update(event: str, **value: Any) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": g.WABA_ID,
                "time": int(time.time()),
                "changes": [
                    {
                        "field": "message_template_status_update",
                        "value": {"event": event, **value},
                    }
                ],
            }
        ],
    }


async def templates(client: Client, token: str, sid: int) -> dict[tuple[str, str], dict[str, Any]]:
    resp = await client.get(f"/api/v1/sessions/{sid}/templates?sync=false", headers=bearer(token))
    return {(t["name"], t["language"]): t for t in (await resp.json())["items"]}


async def test_template_status_updates_arrive_by_webhook(
    client: Client, token: str, sid: int, fake_graph: FakeGraph, db: asyncpg.Connection
) -> None:
    created = await client.post(
        f"/api/v1/sessions/{sid}/templates",
        json={
            "name": "shipping_update",
            "category": "UTILITY",
            "language": "es",
            "components": [{"type": "BODY", "text": "Tu pedido {{1}} está en camino."}],
        },
        headers=bearer(token),
    )
    template_id = (await created.json())["template_id"]
    assert (await templates(client, token, sid))[("shipping_update", "es")]["status"] == "PENDING"

    # Approved (found by Meta's id), then paused, then one we never listed is rejected.
    await post(
        client,
        template_update(
            "APPROVED",
            message_template_id=int(template_id),
            message_template_name="shipping_update",
            message_template_language="es",
            reason="NONE",
        ),
    )

    async def status(name: str, language: str, wanted: str) -> dict[str, Any] | None:
        found = (await templates(client, token, sid)).get((name, language))
        return found if found and found["status"] == wanted else None

    approved = await wait_for(lambda: status("shipping_update", "es", "APPROVED"), what="approval")
    assert approved["rejected_reason"] is None
    await post(
        client,
        template_update(
            "PAUSED",
            message_template_id=int(template_id),
            message_template_name="shipping_update",
            message_template_language="es",
            reason="NONE",
        ),
    )
    await wait_for(lambda: status("shipping_update", "es", "PAUSED"), what="the pause")
    await post(
        client,
        template_update(
            "REJECTED",
            message_template_id=987654321,
            message_template_name="promo_blast",
            message_template_language="en-US",
            reason="INCORRECT_CATEGORY",
        ),
    )
    rejected = await wait_for(lambda: status("promo_blast", "en_US", "REJECTED"), what="reject")
    assert rejected["rejected_reason"] == "INCORRECT_CATEGORY"
    assert rejected["template_id"] == "987654321"
    states = [r["state"] for r in await db.fetch("SELECT state FROM cloud_webhook_events")]
    assert states == ["done", "done", "done"]
    # Another account's update is not ours: answered, recorded, not applied.
    other = template_update("APPROVED", message_template_name="promo_blast")
    other["entry"][0]["id"] = "999000999"
    other["entry"][0]["changes"][0]["value"]["message_template_language"] = "en_US"
    await post(client, other)
    last = await db.fetchval("SELECT state FROM cloud_webhook_events ORDER BY id DESC LIMIT 1")
    assert last == "unknown_number"
    assert (await templates(client, token, sid))[("promo_blast", "en_US")]["status"] == "REJECTED"


async def test_top_level_errors_of_a_webhook_are_shown_to_the_operator(
    client: Client, token: str, sid: int, db: asyncpg.Connection
) -> None:
    recorder = record(client)
    error = {
        "code": 131000,
        "title": "Something went wrong",
        "message": "Something went wrong",
        "error_data": {"details": "Message failed to send because of an unknown error"},
    }
    await post(client, envelope({"errors": [error]}))

    async def shown() -> str | None:
        resp = await client.get(f"/api/v1/sessions/{sid}", headers=bearer(token))
        body = await resp.json()
        return body["last_error"] if body["last_error"] else None

    text = await wait_for(shown, what="the error on the session")
    assert "(131000) Something went wrong" in text
    assert "unknown error" in text
    resp = await client.get(f"/api/v1/sessions/{sid}", headers=bearer(token))
    assert (await resp.json())["state"] == "connected"  # shown, not a state change
    events = [e for e in recorder.events if e.event == "error"]
    assert [(e.payload["action"], e.payload["error_code"]) for e in events] == [
        ("cloud_webhook", 131000)
    ]
    assert events[0].session_id == sid
    # It is kept: the raw webhook is stored and its event is in the owner's event log.
    assert await db.fetchval("SELECT state FROM cloud_webhook_events") == "done"
    logged = await client.get("/api/v1/events", headers=bearer(token))
    assert any(e["event"] == "error" for e in (await logged.json())["items"])


async def test_reading_a_cloud_chat_queues_a_graph_read_receipt(
    client: Client, token: str, sid: int, fake_graph: FakeGraph, db: asyncpg.Connection
) -> None:
    chat = await open_chat(client, token)
    await post(client, inbound(msg("text", {"body": "second"})))

    async def unread_two() -> bool:
        return await db.fetchval("SELECT unread_count FROM conversations") == 2

    await wait_for(unread_two, what="two unread")
    newest = await db.fetchval(
        "SELECT wa_message_id FROM messages WHERE direction = 'inbound' ORDER BY sent_at DESC, "
        "id DESC LIMIT 1"
    )
    resp = await client.post(f"/api/v1/conversations/{chat}/read", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"conversation_id": chat, "unread_count": 0, "receipt_sent": True}
    await wait_for(lambda: _true(fake_graph.read_marks == [newest]), what="the read receipt")
    # Nothing unread: nothing more is queued.
    again = await client.post(f"/api/v1/conversations/{chat}/read", headers=bearer(token))
    assert (await again.json())["receipt_sent"] is False
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE kind = 'mark_read'") == 1


async def _true(value: bool) -> bool:
    return value


async def test_location_sticker_reply_and_reaction_from_the_rest_api(
    client: Client, token: str, sid: int, fake_graph: FakeGraph, db: asyncpg.Connection
) -> None:
    chat = await open_chat(client, token)
    incoming = await db.fetchval("SELECT id FROM messages")
    incoming_wamid = await db.fetchval("SELECT wa_message_id FROM messages")
    resp = await client.post(
        f"/api/v1/conversations/{chat}/messages",
        json={
            "location": {
                "latitude": 19.4326,
                "longitude": -99.1332,
                "name": "Zócalo",
                "address": "Centro, CDMX",
            },
            "reply_to": incoming,
        },
        headers=bearer(token),
    )
    assert resp.status == 202, await resp.text()
    queued = await resp.json()
    assert queued["message_type"] == "location"
    assert queued["details"]["location"]["name"] == "Zócalo"
    await status_of(db, queued["id"], "sent")
    sent = fake_graph.sent[-1]
    assert sent["type"] == "location"
    assert sent["location"] == {
        "latitude": 19.4326,
        "longitude": -99.1332,
        "name": "Zócalo",
        "address": "Centro, CDMX",
    }
    assert sent["context"] == {"message_id": incoming_wamid}
    # Text or location, one of them.
    both = await client.post(
        f"/api/v1/conversations/{chat}/messages",
        json={"text": "x", "location": {"latitude": 1, "longitude": 2}},
        headers=bearer(token),
    )
    assert both.status == 400
    bad = await client.post(
        f"/api/v1/conversations/{chat}/messages",
        json={"location": {"latitude": 91, "longitude": 2}},
        headers=bearer(token),
    )
    assert bad.status == 400
    # A WebP attachment is a sticker.
    form = aiohttp.FormData()
    form.add_field("file", WEBP, filename="sticker.webp", content_type="image/webp")
    resp = await client.post(
        f"/api/v1/conversations/{chat}/messages", data=form, headers=bearer(token)
    )
    assert resp.status == 202, await resp.text()
    await status_of(db, (await resp.json())["id"], "sent")
    sent = fake_graph.sent[-1]
    assert sent["type"] == "sticker"
    assert fake_graph.uploads[sent["sticker"]["id"]][0] == WEBP
    # A reaction to the customer's message.
    reacted = await client.post(
        f"/api/v1/messages/{incoming}/reactions", json={"emoji": "🙏"}, headers=bearer(token)
    )
    assert reacted.status == 202
    await wait_for(
        lambda: _true(fake_graph.sent[-1].get("type") == "reaction"), what="the reaction"
    )
    assert fake_graph.sent[-1]["reaction"] == {"message_id": incoming_wamid, "emoji": "🙏"}


async def test_a_location_from_a_whatsapp_web_session_is_refused(
    client: Client, token: str, sid: int, db: asyncpg.Connection
) -> None:
    web = await db.fetchval(
        "INSERT INTO sessions (owner_id, channel, name, state, desired_state) "
        "SELECT owner_id, 'web', 'web', 'connected', 'stopped' FROM sessions WHERE id = $1 "
        "RETURNING id",
        sid,
    )
    chat = await db.fetchval(
        "INSERT INTO conversations (session_id, external_id) VALUES ($1, $2) RETURNING id",
        web,
        "5215512345678@s.whatsapp.net",
    )
    resp = await client.post(
        f"/api/v1/conversations/{chat}/messages",
        json={"location": {"latitude": 1.5, "longitude": 2.5}},
        headers=bearer(token),
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "location_unsupported"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_edit_and_revoke_are_refused_on_a_cloud_number(
    client: Client, token: str, sid: int, fake_graph: FakeGraph, db: asyncpg.Connection
) -> None:
    chat = await open_chat(client, token)
    resp = await client.post(
        f"/api/v1/conversations/{chat}/messages", json={"text": "typo"}, headers=bearer(token)
    )
    mid = (await resp.json())["id"]
    await status_of(db, mid, "sent")
    before = await db.fetchval("SELECT count(*) FROM outbox")
    edit = await client.patch(
        f"/api/v1/messages/{mid}", json={"text": "fixed"}, headers=bearer(token)
    )
    assert edit.status == 409
    error = (await edit.json())["error"]
    assert error["code"] == "not_possible_on_cloud"
    assert "edited" in error["message"]
    revoke = await client.delete(f"/api/v1/messages/{mid}", headers=bearer(token))
    assert revoke.status == 409
    assert "deleted for everyone" in (await revoke.json())["error"]["message"]
    assert await db.fetchval("SELECT count(*) FROM outbox") == before
    row = await db.fetchrow("SELECT text_content, revoked_at FROM messages WHERE id = $1", mid)
    assert dict(row) == {"text_content": "typo", "revoked_at": None}


async def test_the_coexistence_sync_is_started_through_the_graph_api(
    client: Client, token: str, sid: int, fake_graph: FakeGraph
) -> None:
    both = await client.post(
        f"/api/v1/sessions/{sid}/coexistence-sync", json={}, headers=bearer(token)
    )
    assert both.status == 200, await both.text()
    assert (await both.json()) == {"started": ["smb_app_state_sync", "history"]}
    one = await client.post(
        f"/api/v1/sessions/{sid}/coexistence-sync",
        json={"sync_type": "history"},
        headers=bearer(token),
    )
    assert (await one.json()) == {"started": ["history"]}
    assert fake_graph.syncs == [
        {"messaging_product": "whatsapp", "sync_type": "smb_app_state_sync"},
        {"messaging_product": "whatsapp", "sync_type": "history"},
        {"messaging_product": "whatsapp", "sync_type": "history"},
    ]
    path = f"/{g.VERSION}/{g.PHONE_NUMBER_ID}/smb_app_data"
    assert [c for c in fake_graph.calls if c[1] == path] == [("POST", path)] * 3
    # Meta refusing (an expired token) is a 502 with its error; the route is documented.
    fake_graph.tokens.clear()
    refused = await client.post(
        f"/api/v1/sessions/{sid}/coexistence-sync", json={}, headers=bearer(token)
    )
    assert refused.status == 502
    assert "(190)" in (await refused.json())["error"]["message"]
    spec = await (await client.get("/openapi.json")).json()
    assert "post" in spec["paths"]["/api/v1/sessions/{session_id}/coexistence-sync"]


async def test_socketio_send_message_goes_through_the_graph_api(
    client: Client, token: str, sid: int, fake_graph: FakeGraph, db: asyncpg.Connection
) -> None:
    chat = await open_chat(client, token)
    closed = await open_chat(client, token, wa_id="16505550000", ago=25 * 3600)
    async with connected(base_url(client), auth={"token": token}) as sock:
        await sock.sio.emit("send-message", {"conversationId": chat, "textContent": "over socket"})
        sent = await sock.wait("message-sent")
        assert sent["success"] is True
        await status_of(db, sent["messageId"], "sent")
        assert fake_graph.sent[-1]["text"]["body"] == "over socket"
        assert fake_graph.sent[-1]["to"] == "16505551234"
        await sock.wait("message-status", lambda d: d.get("id") == sent["messageId"])
        # Outside the 24-hour window: the refusal is the `error` event, nothing is sent.
        await sock.sio.emit("send-message", {"conversationId": closed, "textContent": "late"})
        error = await sock.wait("error")
        assert "24-hour customer service window" in error
        assert "template" in error
    assert len(fake_graph.sent) == 1
    assert await db.fetchval("SELECT count(*) FROM messages WHERE direction = 'outbound'") == 1


async def test_without_any_number_a_signature_can_not_be_checked(
    tmp_path: Path, db_url: str, aiohttp_client: Any
) -> None:
    """No app secret is configured anywhere: nothing can verify the signature, so the POST is
    refused (401, counted); with a number, an unknown phone_number_id is answered 200, recorded
    and counted (test_cloud_inbound)."""
    client = await aiohttp_client(create_app(make_settings(tmp_path, db_url)))
    resp = await emit(client, inbound(msg("text", {"body": "hi"}), phone_number_id="999"))
    assert resp.status == 401
    metrics = await (await client.get("/metrics")).text()
    assert 'wagate_cloud_webhook_requests_total{outcome="bad_signature"} 1.0' in metrics
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM cloud_webhook_events") == 0
    finally:
        await conn.close()
