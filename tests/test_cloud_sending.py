# ruff: noqa: F811 - the fixtures imported from test_cloud_inbound are parameters here
"""Sending from a Cloud API number: the same REST calls as WhatsApp Web, the Graph API behind
them (the fake one on 127.0.0.1), the 24-hour window, Meta's error codes, the throughput cap,
templates and the former system's send route."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import pytest

from gateway.keys import CLOUD
from tests.conftest import bearer, login
from tests.fakes import graph as g
from tests.fakes.graph import FakeGraph, emit, inbound, msg, status, statuses
from tests.sessions_helpers import Client, record, wait_for
from tests.test_cloud_inbound import (  # noqa: F401 - fixtures
    db,
    fake_graph,
    messages,
    post,
    settings,
    sid,
    token,
)

pytestmark = pytest.mark.timeout(60)


async def open_chat(client: Client, token: str, wa_id: str = "16505551234", ago: int = 60) -> int:
    """A conversation whose customer wrote `ago` seconds ago; its id."""
    await post(
        client,
        inbound(
            msg("text", {"body": "hello"}, ts=int(time.time()) - ago, **{"from": wa_id}),
            wa_id=wa_id,
        ),
    )

    async def found() -> int | None:
        resp = await client.get("/api/v1/conversations", headers=bearer(token))
        for chat in (await resp.json())["items"]:
            if chat["external_id"].startswith(wa_id):
                return int(chat["id"])
        return None

    return int(await wait_for(found, what="the conversation"))


async def send(client: Client, token: str, conversation_id: int, text: str) -> Any:
    return await client.post(
        f"/api/v1/conversations/{conversation_id}/messages",
        json={"text": text},
        headers=bearer(token),
    )


async def status_of(db: asyncpg.Connection, message_id: int, *wanted: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        row = await db.fetchrow(
            "SELECT status, wa_message_id, error, error_code FROM messages WHERE id = $1",
            message_id,
        )
        return dict(row) if row and row["status"] in wanted else None

    return dict(await wait_for(check, what=f"message {message_id} {wanted}"))


async def test_text_and_reply_go_through_the_graph_api_and_come_back_as_statuses(
    client: Client, token: str, sid: int, fake_graph: FakeGraph, db: asyncpg.Connection
) -> None:
    recorder = record(client)
    chat = await open_chat(client, token)
    inbound_id = await db.fetchval("SELECT wa_message_id FROM messages")
    resp = await client.post(
        f"/api/v1/conversations/{chat}/messages",
        json={
            "text": "see https://example.com",
            "reply_to": await db.fetchval("SELECT id FROM messages"),
        },
        headers=bearer(token),
    )
    assert resp.status == 202, await resp.text()
    mid = (await resp.json())["id"]
    sent = await status_of(db, mid, "sent")
    body = fake_graph.sent[0]
    assert body["to"] == "16505551234"
    assert body["type"] == "text"
    assert body["text"] == {"body": "see https://example.com", "preview_url": True}
    assert body["context"] == {"message_id": inbound_id}
    assert sent["wa_message_id"] == body["_id"]
    await post(client, statuses(status(body["_id"], "delivered"), status(body["_id"], "read")))
    await status_of(db, mid, "read")
    seen = [e.payload["status"] for e in recorder.events if e.event == "message-status"]
    assert seen[:1] == ["sent"]
    assert "read" in seen


async def test_the_24_hour_window_refuses_free_form_but_not_templates(
    client: Client, token: str, sid: int, fake_graph: FakeGraph, db: asyncpg.Connection
) -> None:
    chat = await open_chat(client, token, ago=25 * 3600)
    refused = await send(client, token, chat, "hello again")
    assert refused.status == 422
    error = (await refused.json())["error"]
    assert error["code"] == "window_closed"
    assert "template" in error["message"]
    assert await db.fetchval("SELECT count(*) FROM messages WHERE direction = 'outbound'") == 0
    resp = await client.post(
        f"/api/v1/conversations/{chat}/template",
        json={
            "name": "ticket_updated",
            "language": "es",
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "SUP-1"}]}],
        },
        headers=bearer(token),
    )
    assert resp.status == 202, await resp.text()
    await status_of(db, (await resp.json())["id"], "sent")
    template = fake_graph.sent[0]["template"]
    assert template["name"] == "ticket_updated"
    assert template["language"] == {"code": "es"}
    # A 131047 failure that arrives anyway is shown on the message.
    fresh = await open_chat(client, token, wa_id="16505550000")
    resp = await send(client, token, fresh, "inside the window")
    mid = (await resp.json())["id"]
    wamid = (await status_of(db, mid, "sent"))["wa_message_id"]
    error_131047 = {
        "code": 131047,
        "title": "Re-engagement message",
        "error_data": {"details": "More than 24 hours have passed"},
    }
    await post(client, statuses(status(wamid, "failed", errors=[error_131047])))
    failed = await status_of(db, mid, "failed")
    assert failed["error_code"] == 131047
    assert "Re-engagement" in failed["error"]


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (131026, "failed"),
        (132001, "failed"),
        (131056, "retried"),
        (130429, "paused"),
        (190, "auth"),
    ],
)
async def test_graph_errors_are_mapped(
    client: Client,
    token: str,
    sid: int,
    fake_graph: FakeGraph,
    db: asyncpg.Connection,
    code: int,
    outcome: str,
) -> None:
    from gateway.cloud import sender as sender_module

    # Patch the waits, never wall time: retries are due at once.
    sender_module.PAIR_RETRY_SECONDS = 1.5
    sender_module.THROUGHPUT_PAUSE_SECONDS = 1.5
    sender_module.AUTH_RETRY_SECONDS = 0.0
    try:
        chat = await open_chat(client, token)
        other = await open_chat(client, token, wa_id="16505550000")
        fake_graph.fail(code, recipient="16505551234")
        first = (await (await send(client, token, chat, "one")).json())["id"]
        if outcome == "failed":
            row = await status_of(db, first, "failed")
            assert row["error_code"] == code
            assert f"({code})" in row["error"]
            return
        if outcome == "retried":
            # The pair limit holds back this recipient only: another one is served meanwhile.
            await wait_for(
                lambda: _true(sum(1 for c in fake_graph.calls if c[1].endswith("/messages")) >= 1),
                what="the first attempt",
            )
            second = (await (await send(client, token, other, "two")).json())["id"]
            await status_of(db, second, "sent")
            # The other recipient went first; this one is still waiting out its pair limit.
            assert (await db.fetchval("SELECT status FROM messages WHERE id = $1", first)) == (
                "pending"
            )
            await status_of(db, first, "sent")
            assert [s["to"] for s in fake_graph.sent] == ["16505550000", "16505551234"]
            return
        if outcome == "paused":
            await wait_for(
                lambda: _true(sum(1 for c in fake_graph.calls if c[1].endswith("/messages")) >= 1),
                what="the first attempt",
            )
            second = (await (await send(client, token, other, "two")).json())["id"]
            # The whole number pauses: not even the other recipient is served meanwhile.
            await asyncio.sleep(0.7)
            assert fake_graph.sent == []
            assert (await db.fetchval("SELECT status FROM messages WHERE id = $1", second)) == (
                "pending"
            )
            await status_of(db, first, "sent")
            await status_of(db, second, "sent")
            assert sorted(s["to"] for s in fake_graph.sent) == ["16505550000", "16505551234"]
            return

        # 190: the session goes to auth_failed; the message waits for a working token.
        async def auth_failed() -> bool:
            resp = await client.get(f"/api/v1/sessions/{sid}", headers=bearer(token))
            return (await resp.json())["state"] == "auth_failed"

        await wait_for(auth_failed, what="auth_failed")
        assert (await db.fetchval("SELECT status FROM messages WHERE id = $1", first)) == "pending"
        checked = await client.post(f"/api/v1/sessions/{sid}/test", headers=bearer(token))
        assert (await checked.json())["state"] == "connected"
        await status_of(db, first, "sent")
    finally:
        sender_module.PAIR_RETRY_SECONDS = 6.0
        sender_module.THROUGHPUT_PAUSE_SECONDS = 30.0
        sender_module.AUTH_RETRY_SECONDS = 60.0


async def _true(value: bool) -> bool:
    return value


async def test_throughput_is_capped_per_number(
    client: Client, token: str, sid: int, fake_graph: FakeGraph, db: asyncpg.Connection
) -> None:
    number = client.app[CLOUD].number(sid)
    assert number is not None
    assert client.app[CLOUD].messages_per_second(number) == 80
    object.__setattr__(number, "messages_per_second", 20)
    chat = await open_chat(client, token)
    ids = [(await (await send(client, token, chat, f"m{i}")).json())["id"] for i in range(10)]
    for mid in ids:
        await status_of(db, mid, "sent")
    times = fake_graph.send_times[-10:]
    # Ten sends at 20/s take at least 9 intervals of 50 ms.
    assert times[-1] - times[0] >= 9 * 0.05 * 0.9


async def test_media_reactions_and_compat_send(
    client: Client, token: str, sid: int, fake_graph: FakeGraph, db: asyncpg.Connection
) -> None:
    chat = await open_chat(client, token)
    import aiohttp

    form = aiohttp.FormData()
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    form.add_field("file", png, filename="photo.png", content_type="image/png")
    form.add_field("text", "a photo")
    resp = await client.post(
        f"/api/v1/conversations/{chat}/messages", data=form, headers=bearer(token)
    )
    assert resp.status == 202, await resp.text()
    await status_of(db, (await resp.json())["id"], "sent")
    sent = fake_graph.sent[-1]
    assert sent["type"] == "image"
    assert sent["image"]["caption"] == "a photo"
    assert fake_graph.uploads[sent["image"]["id"]][0] == png
    incoming = await db.fetchval("SELECT id FROM messages WHERE direction = 'inbound'")
    reacted = await client.post(
        f"/api/v1/messages/{incoming}/reactions", json={"emoji": "❤️"}, headers=bearer(token)
    )
    assert reacted.status in (200, 202), await reacted.text()
    await wait_for(
        lambda: _true(any(s.get("type") == "reaction" for s in fake_graph.sent)), what="a reaction"
    )
    assert fake_graph.sent[-1]["reaction"]["emoji"] == "❤️"
    # The former system's route, text and template.
    resp = await client.post(
        "/api/integrations/whatsapp/send",
        json={
            "to": "+16505551234",
            "type": "text",
            "content": {"text": "from the old system"},
            "ticketId": "T-1",
        },
        headers=bearer(token),
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["success"] is True
    await status_of(db, body["messageId"], "sent")
    resp = await client.post(
        "/api/integrations/whatsapp/send",
        json={
            "to": "5215599998888",
            "type": "template",
            "content": {
                "templateName": "ticket_created",
                "languageCode": "pt_BR",
                "components": [],
            },
        },
        headers=bearer(token),
    )
    assert resp.status == 200, await resp.text()
    await status_of(db, (await resp.json())["messageId"], "sent")
    assert fake_graph.sent[-1]["to"] == "5215599998888"
    # A new chat is outside the window for free-form text.
    resp = await client.post(
        "/api/integrations/whatsapp/send",
        json={"to": "5215599997777", "type": "text", "content": {"text": "cold"}},
        headers=bearer(token),
    )
    assert resp.status == 422


async def test_templates_sync_create_and_register_defaults(
    client: Client, token: str, sid: int, fake_graph: FakeGraph
) -> None:
    fake_graph.templates.append(
        {
            "id": "1",
            "name": "hello_world",
            "language": "en_US",
            "category": "UTILITY",
            "status": "APPROVED",
            "components": [{"type": "BODY", "text": "Hello"}],
        }
    )
    listed = await (
        await client.get(f"/api/v1/sessions/{sid}/templates", headers=bearer(token))
    ).json()
    assert listed["synced"] is True
    assert [t["name"] for t in listed["items"]] == ["hello_world"]
    created = await client.post(
        f"/api/v1/sessions/{sid}/templates",
        json={
            "name": "shipping_update",
            "category": "UTILITY",
            "language": "es",
            "components": [{"type": "BODY", "text": "Tu pedido {{1}} va en camino."}],
        },
        headers=bearer(token),
    )
    assert created.status == 201, await created.text()
    # What Meta's review would refuse is refused here, with the reason, before asking Meta.
    calls = len(fake_graph.calls)
    for text, reason in (
        ("Tu pedido {{1}}", "must not end with a variable"),
        ("{{1}}, tu pedido llegó.", "must not start with a variable"),
        ("Hola {{1}} {{2}} gracias.", "need text between them"),
        ("Hola {{2}}, tu pedido llegó.", "numbered {{1}}, {{2}}"),
    ):
        refused = await client.post(
            f"/api/v1/sessions/{sid}/templates",
            json={
                "name": "bad_one",
                "category": "UTILITY",
                "language": "es",
                "components": [{"type": "BODY", "text": text}],
            },
            headers=bearer(token),
        )
        assert refused.status == 400, text
        assert reason in await refused.text(), text
    assert len(fake_graph.calls) == calls
    assert (await created.json())["status"] == "PENDING"
    defaults = await client.post(
        f"/api/v1/sessions/{sid}/templates/register-defaults", headers=bearer(token)
    )
    body = await defaults.json()
    assert body["failed"] == []
    names = {(t["name"], t["language"]) for t in body["created"]}
    for name in (
        "ticket_created",
        "ticket_updated",
        "ticket_assigned",
        "ticket_resolved",
        "agent_response",
        "sla_warning",
    ):
        for language in ("es", "pt_BR", "en"):
            assert (name, language) in names
    pending = await (
        await client.get(
            f"/api/v1/sessions/{sid}/templates?status=pending&language=es&sync=false",
            headers=bearer(token),
        )
    ).json()
    assert len(pending["items"]) == 7
    assert g.WABA_ID in fake_graph.calls[-1][1]


async def test_an_expired_token_is_replaced_in_place_and_the_waiting_messages_go_at_once(
    client: Client, token: str, sid: int, fake_graph: FakeGraph, db: asyncpg.Connection
) -> None:
    """Meta's access tokens expire (190): the operator pastes a new one with
    `PATCH /api/v1/sessions/{id}`, without deleting the number and its history; the state is
    checked again and what waited goes at once, not after the 60 s wait. Rotating the app
    secret takes effect on the webhook at once. Bad input changes nothing."""
    chat = await open_chat(client, token)
    fake_graph.tokens.clear()  # the token expired
    first = (await (await send(client, token, chat, "after expiry")).json())["id"]

    async def state() -> str:
        resp = await client.get(f"/api/v1/sessions/{sid}", headers=bearer(token))
        return str((await resp.json())["state"])

    await wait_for(lambda: _true_async(state, "auth_failed"), what="auth_failed")
    assert (await db.fetchval("SELECT status FROM messages WHERE id = $1", first)) == "pending"

    path = f"/api/v1/sessions/{sid}"
    for bad in (
        {},
        {"access_token": None},
        {"access_token": ""},
        {"phone_number_id": "123"},
        {"messages_per_second": 0},
        {"name": ""},
    ):
        resp = await client.patch(path, json=bad, headers=bearer(token))
        assert resp.status == 400, (bad, await resp.text())
        assert (await resp.json())["error"]["code"] == "validation_error"
    assert await state() == "auth_failed"

    fake_graph.tokens.add("a-fresh-token")
    resp = await client.patch(
        path, json={"access_token": "a-fresh-token", "name": "Sales (Cloud)"}, headers=bearer(token)
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["name"], body["state"]) == ("Sales (Cloud)", "connected")
    assert "a-fresh-token" not in json.dumps(body)
    started = time.monotonic()
    await status_of(db, first, "sent")
    assert time.monotonic() - started < 10  # not the 60 s wait of a refused token
    assert fake_graph.sent[-1]["text"]["body"] == "after expiry"

    # A rotated app secret: the old one no longer signs, the new one does.
    resp = await client.patch(path, json={"app_secret": "rotated-secret"}, headers=bearer(token))
    assert resp.status == 200
    payload = inbound(msg("text", {"body": "signed"}))
    assert (await emit(client, payload)).status == 401
    assert (await emit(client, payload, secret="rotated-secret")).status == 200

    # Another operator's number is not found; nothing about it changes.
    made = await client.post(
        "/api/v1/users",
        json={"email": "c@example.com", "password": "password-123"},
        headers=bearer(token),
    )
    assert made.status == 201
    other = await login(client, "c@example.com", "password-123")
    resp = await client.patch(path, json={"name": "mine now"}, headers=bearer(other))
    assert resp.status == 404
    assert await db.fetchval("SELECT name FROM sessions WHERE id = $1", sid) == "Sales (Cloud)"


async def _true_async(get: Any, wanted: str) -> bool:
    return bool(await get() == wanted)


def test_template_bodies_meta_would_refuse_are_named() -> None:
    from gateway.cloud.templates import body_problem, default_templates

    assert body_problem("No variables at all") is None
    assert body_problem("Tu pedido {{1}} llega el {{2}}.") is None
    assert body_problem("Hola {{1}}, ¿cómo estás? {{1}} ya está listo.") is None
    assert "start" in (body_problem("{{1}} es tu código") or "")
    assert "end" in (body_problem("Tu código es {{1}}  ") or "")
    assert "between" in (body_problem("Hola {{1}}{{2}} listo") or "")
    assert "numbered" in (body_problem("Hola {{1}} y {{3}} listo") or "")
    assert "numbered" in (body_problem("Hola {{2}} y {{1}} listo") or "")
    # Every support template wagate registers passes (none ends with a variable).
    for template in default_templates():
        assert body_problem(template["components"][0]["text"]) is None, template
