"""The REST API over conversations and messages, as a client program uses it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from db import conversations as db_conversations
from gateway.app import FAKE_ROUTERS, ROUTERS
from gateway.settings import Settings
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login
from tests.sessions_helpers import Client, fast_settings, link, phone, text, wait_for

pytestmark = pytest.mark.timeout(120)

ALICE = "+5215512345678"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return fast_settings(tmp_path, db_url)


@pytest.fixture
async def token(client: Client) -> str:
    return await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.fixture
async def sid(client: Client, token: str, settings: Settings) -> int:
    return await link(client, token, settings)


async def get(client: Client, token: str, path: str, status: int = 200) -> Any:
    resp = await client.get(path, headers=bearer(token))
    assert resp.status == status, await resp.text()
    return await resp.json()


async def inbox(client: Client, token: str, n: int, **params: Any) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        items = (await get(client, token, f"/api/v1/conversations?{query}"))["items"]
        return items if len(items) >= n else None

    return list(await wait_for(enough, what=f"{n} conversations"))


async def one_chat(client: Client, token: str, settings: Settings, sid: int) -> dict[str, Any]:
    phone(settings, sid).send(text(ALICE, "hola", push_name="Alice"))
    return (await inbox(client, token, 1))[0]


# -- reading --------------------------------------------------------------------------------


async def test_inbox_lists_chats_with_preview_and_pages_stably(
    client: Client, token: str, settings: Settings, sid: int
) -> None:
    p = phone(settings, sid)
    for i in range(12):
        p.send(text(f"+52155000000{i:02d}", f"message {i}", push_name=f"Customer {i}"))
        await asyncio.sleep(0.01)
    await inbox(client, token, 12)
    first = await get(client, token, "/api/v1/conversations?limit=5")
    assert len(first["items"]) == 5
    top = first["items"][0]
    assert top["contact_name"] == "Customer 11"
    assert top["last_message"]["text_preview"] == "message 11"
    assert top["unread_count"] == 1
    assert top["ai_active"] is False
    assert top["jira_bridge"] is False
    assert "ticket_key" in top
    # New messages arrive between pages: the next page neither repeats nor skips anything.
    p.send(text("+5215500000003", "bump", push_name="Customer 3"))
    p.send(text("+5215599999999", "brand new"))
    await inbox(client, token, 13)
    seen = [c["contact_name"] for c in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = await get(client, token, f"/api/v1/conversations?limit=5&cursor={cursor}")
        seen += [c["contact_name"] for c in page["items"]]
        cursor = page["next_cursor"]
    # Customer 3 moved above the cursor (its update arrives as an event, not on a later page);
    # everything else is there exactly once, in order.
    assert seen == [f"Customer {i}" for i in (11, 10, 9, 8, 7, 6, 5, 4, 2, 1, 0)]


async def test_filters(client: Client, token: str, settings: Settings, sid: int) -> None:
    chat = await one_chat(client, token, settings, sid)
    phone(settings, sid).send(text("+5215587654321", "other"))
    await inbox(client, token, 2)
    resp = await client.patch(
        f"/api/v1/conversations/{chat['id']}",
        json={"archived": True, "labels": ["vip", " vip ", "billing"], "ai_active": True},
        headers=bearer(token),
    )
    assert resp.status == 200
    patched = await resp.json()
    assert patched["labels"] == ["billing", "vip"]
    assert patched["ai_active"] is True
    active = await get(client, token, "/api/v1/conversations")
    assert [c["id"] for c in active["items"]] != [chat["id"]]
    archived = await get(client, token, "/api/v1/conversations?archived=true")
    assert [c["id"] for c in archived["items"]] == [chat["id"]]
    labelled = await get(client, token, "/api/v1/conversations?archived=true&label=vip")
    assert [c["id"] for c in labelled["items"]] == [chat["id"]]
    assert (await get(client, token, "/api/v1/conversations?label=none"))["items"] == []
    unread = await get(client, token, f"/api/v1/conversations?unread=true&session_id={sid}")
    assert len(unread["items"]) == 1
    bad = await client.get("/api/v1/conversations?limit=500", headers=bearer(token))
    assert bad.status == 400
    bad = await client.get("/api/v1/conversations?cursor=%%%", headers=bearer(token))
    assert bad.status == 400


async def test_messages_page_in_both_directions(
    client: Client, token: str, settings: Settings, sid: int
) -> None:
    p = phone(settings, sid)
    p.send(*[text(ALICE, f"m{i}", ts=1_700_000_000_000 + i * 1000) for i in range(30)])
    chat = (await inbox(client, token, 1))[0]
    url = f"/api/v1/conversations/{chat['id']}/messages"

    async def all_there() -> bool:
        return len((await get(client, token, f"{url}?limit=200"))["items"]) == 30

    await wait_for(all_there, what="30 messages")
    newest = await get(client, token, f"{url}?limit=10")
    assert [m["text_content"] for m in newest["items"]] == [f"m{i}" for i in range(20, 30)]
    older = await get(client, token, f"{url}?limit=10&before={newest['before']}")
    assert [m["text_content"] for m in older["items"]] == [f"m{i}" for i in range(10, 20)]
    newer = await get(client, token, f"{url}?limit=5&after={older['after']}")
    assert [m["text_content"] for m in newer["items"]] == [f"m{i}" for i in range(20, 25)]
    assert (await client.get(f"{url}?before=999999", headers=bearer(token))).status == 404


# -- writing --------------------------------------------------------------------------------


async def test_send_is_queued_then_sent_and_idempotent(
    client: Client, token: str, settings: Settings, sid: int, db_url: str
) -> None:
    chat = await one_chat(client, token, settings, sid)
    url = f"/api/v1/conversations/{chat['id']}/messages"
    headers = {**bearer(token), "Idempotency-Key": "order-42-confirmation"}
    first = await client.post(url, json={"text": "Your order shipped"}, headers=headers)
    assert first.status == 202
    message = await first.json()
    assert message["status"] == "pending"
    assert message["sender_type"] == "agent"
    again = await client.post(url, json={"text": "Your order shipped"}, headers=headers)
    assert again.status == 202
    assert (await again.json())["id"] == message["id"]

    async def sent() -> dict[str, Any] | None:
        page = await get(client, token, url)
        mine = [m for m in page["items"] if m["id"] == message["id"]]
        return mine[0] if mine and mine[0]["status"] == "sent" else None

    done = await wait_for(sent, what="the send")
    assert done["wa_message_id"].startswith("3EB0")
    delivered = [s for s in phone(settings, sid).sent() if "message" in s]
    assert len(delivered) == 1
    assert delivered[0]["to"] == "5215512345678@s.whatsapp.net"
    assert delivered[0]["message"]["conversation"] == "Your order shipped"
    # A receipt from the phone moves it on.
    from sessions.fake_server import SimReceipt

    phone(settings, sid).receipt(
        SimReceipt.model_validate({"ids": [done["wa_message_id"]], "status": "read"})
    )

    async def read() -> bool:
        page = await get(client, token, url)
        return any(m["id"] == message["id"] and m["status"] == "read" for m in page["items"])

    await wait_for(read, what="the read receipt")
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE state = 'done'") == 1
    finally:
        await conn.close()


async def test_reply_react_edit_and_delete(
    client: Client, token: str, settings: Settings, sid: int
) -> None:
    chat = await one_chat(client, token, settings, sid)
    url = f"/api/v1/conversations/{chat['id']}/messages"
    incoming = (await get(client, token, url))["items"][0]
    resp = await client.post(
        url, json={"text": "replying", "reply_to": incoming["id"]}, headers=bearer(token)
    )
    assert resp.status == 202
    reply = await resp.json()
    assert reply["quoted_wa_message_id"] == incoming["wa_message_id"]

    async def sent() -> bool:
        page = await get(client, token, url)
        return any(m["id"] == reply["id"] and m["status"] == "sent" for m in page["items"])

    await wait_for(sent, what="the reply")
    react = await client.post(
        f"/api/v1/messages/{incoming['id']}/reactions",
        json={"emoji": "❤️"},
        headers=bearer(token),
    )
    assert react.status == 202
    edit = await client.patch(
        f"/api/v1/messages/{reply['id']}",
        json={"text": "replying (fixed)"},
        headers=bearer(token),
    )
    assert edit.status == 202
    refused = await client.patch(
        f"/api/v1/messages/{incoming['id']}", json={"text": "not mine"}, headers=bearer(token)
    )
    assert refused.status == 409
    delete = await client.delete(f"/api/v1/messages/{reply['id']}", headers=bearer(token))
    assert delete.status == 202

    async def applied() -> bool:
        page = {m["id"]: m for m in (await get(client, token, url))["items"]}
        return (
            page[incoming["id"]]["reactions"].get("me") == "❤️"
            and page[reply["id"]]["edited"]
            and page[reply["id"]]["deleted"]
        )

    await wait_for(applied, what="reaction, edit and delete")
    kinds = [s["message"] for s in phone(settings, sid).sent() if "message" in s]
    assert any("reactionMessage" in k for k in kinds)
    assert any("editedMessage" in k for k in kinds)
    assert any("protocolMessage" in k for k in kinds)
    assert "extendedTextMessage" in kinds[0]  # the reply quotes


async def test_sending_through_a_logged_out_account_is_409_and_queues_nothing(
    client: Client, token: str, settings: Settings, sid: int, db_url: str
) -> None:
    chat = await one_chat(client, token, settings, sid)
    phone(settings, sid).control("logout")

    async def logged_out() -> bool:
        body = await get(client, token, f"/api/v1/sessions/{sid}")
        return body["state"] == "logged_out"

    await wait_for(logged_out, what="logged out")
    resp = await client.post(
        f"/api/v1/conversations/{chat['id']}/messages",
        json={"text": "hello?"},
        headers=bearer(token),
    )
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert error["code"] == "session_unavailable"
    assert "logged out" in error["message"]
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE direction='outbound'") == 0
    finally:
        await conn.close()


async def test_events_catch_up_in_order(
    client: Client, token: str, settings: Settings, sid: int
) -> None:
    start = (await get(client, token, "/api/v1/events?limit=1000"))["last_seq"]
    phone(settings, sid).send(text(ALICE, "one"), text(ALICE, "two"))

    async def caught_up() -> list[dict[str, Any]] | None:
        page = await get(client, token, f"/api/v1/events?after={start}")
        new = [e for e in page["items"] if e["event"] == "message-new"]
        return page["items"] if len(new) == 2 else None

    items = await wait_for(caught_up, what="two message events")
    seqs = [e["seq"] for e in items]
    assert seqs == sorted(seqs)
    assert seqs == list(range(start + 1, start + 1 + len(seqs)))
    texts = [e["data"]["text_content"] for e in items if e["event"] == "message-new"]
    assert texts == ["one", "two"]
    tail = await get(client, token, f"/api/v1/events?after={seqs[-1]}")
    assert all(e["seq"] > seqs[-1] for e in tail["items"])


async def test_compatibility_routes_keep_their_shapes(
    client: Client, token: str, settings: Settings, sid: int
) -> None:
    chat = await one_chat(client, token, settings, sid)
    body = await get(client, token, "/api/whatsapp/get_conversations")
    assert body["success"] is True
    (item,) = body["conversations"]
    assert set(item) == {
        "id",
        "external_id",
        "contact_name",
        "contact_photo_url",
        "started_at",
        "unread_count",
    }
    assert item["external_id"] == "5215512345678@s.whatsapp.net"
    for ref in (chat["id"], "5215512345678@s.whatsapp.net"):
        msgs = await get(client, token, f"/api/whatsapp/get_messages?conversationId={ref}")
        assert msgs["success"] is True
        assert [set(m) for m in msgs["messages"]] == [
            {"id", "sender_type", "message_type", "text_content", "created_at"}
        ]
        assert msgs["messages"][0]["text_content"] == "hola"
    assert (await client.get("/api/whatsapp/get_conversations")).status == 401


# -- tenancy: every route, another operator's ids ---------------------------------------------


def _routes_with_ids() -> list[tuple[str, str]]:
    found = []
    for router in [*ROUTERS, *FAKE_ROUTERS]:
        for spec in router.specs:
            if spec.path_params and spec.path.startswith("/api/v1/") and spec.auth != "admin":
                found.append((spec.method, spec.path))
    return found


async def test_no_route_shows_or_touches_another_operators_things(
    client: Client, token: str, settings: Settings, sid: int
) -> None:
    chat = await one_chat(client, token, settings, sid)
    message = (await get(client, token, f"/api/v1/conversations/{chat['id']}/messages"))["items"][0]
    hook = await client.post(
        "/api/v1/webhooks",
        json={"url": "https://example.com/hook", "enabled": False},
        headers=bearer(token),
    )
    assert hook.status == 201, await hook.text()
    persona = await client.post(
        "/api/v1/personalities", json={"name": "Ana"}, headers=bearer(token)
    )
    article = await client.post(
        "/api/v1/kb/articles", json={"title": "Hours", "body": "9 to 6"}, headers=bearer(token)
    )
    assert persona.status == article.status == 201
    ids = {
        "session_id": sid,
        "conversation_id": chat["id"],
        "message_id": message["id"],
        "webhook_id": (await hook.json())["id"],
        # Jira's webhook is public and named by an operator's secret token: without it, a 404.
        "token": "not-an-operators-jira-token",
        "personality_id": (await persona.json())["id"],
        "article_id": (await article.json())["id"],
    }
    await client.post(
        "/api/v1/users",
        json={"email": "intruder@example.com", "password": "password-123"},
        headers=bearer(token),
    )
    intruder = await login(client, "intruder@example.com", "password-123")
    bodies: dict[str, Any] = {
        "pair-phone": {"phone": "+5215512345678"},
        "pair-code": {"code": "ABCD-EFGH"},
        "messages": {"text": "x"},
        "reactions": {"emoji": "x"},
        "receipts": {"ids": ["x"]},
        "history": {},
        "control": {"action": "disconnect"},
        "scan": {},
        "templates": {"name": "x", "category": "UTILITY", "language": "en", "components": []},
        "template": {"name": "x", "language": "en"},
        "coexistence-sync": {},
    }

    def body_for(method: str, path: str) -> Any:
        if path.startswith("/api/v1/sim/") and path.endswith("/messages"):
            return {"messages": [{"type": "text", "from": "+5215500000000", "text": "x"}]}
        if method == "PATCH":
            return {"text": "x"} if "/messages/" in path else {"archived": True}
        return bodies.get(path.rsplit("/", 1)[-1]) if method == "POST" else None

    routes = _routes_with_ids()
    assert len(routes) >= 20
    for method, path in routes:
        url = re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), path)
        resp = await client.request(
            method, url, json=body_for(method, path), headers=bearer(intruder)
        )
        assert resp.status == 404, (method, path, resp.status, await resp.text())
        assert (await resp.json())["error"]["code"] == "not_found"
    # Lists show nothing of the owner's.
    assert (await get(client, intruder, "/api/v1/conversations"))["items"] == []
    assert (await get(client, intruder, "/api/v1/sessions"))["items"] == []
    assert (await get(client, intruder, "/api/v1/webhooks"))["items"] == []
    assert (await get(client, intruder, "/api/v1/personalities"))["items"] == []
    assert (await get(client, intruder, "/api/v1/kb/articles"))["items"] == []
    assert (await get(client, intruder, "/api/v1/kb/search?q=hours"))["items"] == []
    events = (await get(client, intruder, "/api/v1/events"))["items"]
    assert events == []
    compat = await get(client, intruder, "/api/whatsapp/get_conversations")
    assert compat["conversations"] == []
    # And nothing changed for the owner.
    after = await get(client, token, f"/api/v1/conversations/{chat['id']}")
    assert after["archived"] is False
    assert (await get(client, token, f"/api/v1/sessions/{sid}"))["state"] == "connected"


async def test_full_text_search_in_three_languages(
    client: Client, token: str, settings: Settings, sid: int
) -> None:
    p = phone(settings, sid)
    p.send(text(ALICE, "Where are my shipped packages?", push_name="Alice"))
    p.send(text("+5215587654321", "¿Dónde están mis pedidos?", push_name="Bruno"))
    p.send(text("+5511987654321", "Preciso das minhas encomendas", push_name="Carla"))
    await inbox(client, token, 3)

    async def search(q: str) -> list[str]:
        found = await get(client, token, f"/api/v1/search?q={q}")
        return [hit["contact_name"] for hit in found["items"]]

    assert await search("package shipping") == ["Alice"]  # English stems
    assert await search("pedido") == ["Bruno"]  # Spanish
    assert await search("encomenda") == ["Carla"]  # Portuguese
    assert await search("nothing-like-this") == []
    by_text = await get(client, token, "/api/v1/conversations?q=pedido")
    assert [c["contact_name"] for c in by_text["items"]] == ["Bruno"]
    by_name = await get(client, token, "/api/v1/conversations?q=Carla")
    assert [c["contact_name"] for c in by_name["items"]] == ["Carla"]
    contacts = await get(client, token, "/api/v1/contacts")
    assert sorted(c["push_name"] for c in contacts["items"]) == ["Alice", "Bruno", "Carla"]
    only = await get(client, token, "/api/v1/contacts?q=bru")
    assert [c["phone"] for c in only["items"]] == ["5215587654321"]
    # Another operator finds nothing of it.
    await client.post(
        "/api/v1/users",
        json={"email": "nosy@example.com", "password": "password-123"},
        headers=bearer(token),
    )
    nosy = await login(client, "nosy@example.com", "password-123")
    assert (await get(client, nosy, "/api/v1/search?q=pedido"))["items"] == []
    assert (await get(client, nosy, "/api/v1/contacts"))["items"] == []
    assert (await get(client, nosy, "/api/v1/conversations?q=pedido"))["items"] == []


async def test_inbox_search_pages_alike_for_common_and_rare_words(
    client: Client, token: str, settings: Settings, sid: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`q` in the inbox: a word only some chats mention, a phone prefix and a name, paged by
    cursor; the same pages whether the word counts as rare (the matching chats are looked up)
    or as common (the inbox is walked and each chat checked)."""
    p = phone(settings, sid)
    for n in range(12):
        words = "Necesito la factura del pedido" if n % 3 == 0 else "Hola, buenas tardes"
        p.send(text(f"+52155000000{n:02d}", f"{words} {n}", push_name=f"Cliente {n}"))
    p.send(text("+5511999990000", "Olá", push_name="Valentina"))
    await inbox(client, token, 13)

    async def names(q: str, limit: int) -> list[str]:
        seen: list[str] = []
        cursor = ""
        while True:
            page = await get(client, token, f"/api/v1/conversations?q={q}&limit={limit}{cursor}")
            seen += [c["contact_name"] for c in page["items"]]
            if not page["next_cursor"]:
                return seen
            cursor = f"&cursor={page['next_cursor']}"

    newest_first = [f"Cliente {n}" for n in (9, 6, 3, 0)]
    for cap in (db_conversations.MENTIONS_CAP, 1):
        monkeypatch.setattr(db_conversations, "MENTIONS_CAP", cap)
        assert await names("facturas", 50) == newest_first, cap
        assert await names("facturas", 1) == newest_first, cap
        assert await names("pedidos factura", 3) == newest_first, cap
        assert await names("Valentina", 2) == ["Valentina"], cap
        assert await names("%2B5511999", 2) == ["Valentina"], cap
        assert await names("521550000001", 50) == [f"Cliente {n}" for n in (11, 10)], cap
        assert await names("ausente", 50) == [], cap


async def test_send_an_attachment_with_a_caption(
    client: Client, token: str, settings: Settings, sid: int
) -> None:
    import hashlib

    import aiohttp

    chat = await one_chat(client, token, settings, sid)
    url = f"/api/v1/conversations/{chat['id']}/messages"
    photo = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + bytes(range(256)) * 20
    form = aiohttp.FormData()
    form.add_field("file", photo, filename="photo.jpg", content_type="image/jpeg")
    form.add_field("text", "the package")
    resp = await client.post(url, data=form, headers=bearer(token))
    assert resp.status == 202, await resp.text()
    message = await resp.json()
    assert message["message_type"] == "image"
    assert message["text_content"] == "the package"
    assert message["media"]["status"] == "stored"
    assert message["media"]["mime_type"] == "image/jpeg"

    async def sent() -> list[dict[str, Any]] | None:
        media = [s for s in phone(settings, sid).sent() if s.get("media")]
        return media or None

    (delivered,) = await wait_for(sent, what="the photo on the phone")
    assert delivered["media"] == "image"
    assert delivered["caption"] == "the package"
    assert delivered["sha256"] == hashlib.sha256(photo).hexdigest()
    served = await client.get(message["media"]["url"], headers=bearer(token))
    assert await served.read() == photo

    exe = aiohttp.FormData()
    exe.add_field("file", b"MZ\x90\x00" + b"\x00" * 200, filename="x.exe")
    refused = await client.post(url, data=exe, headers=bearer(token))
    assert refused.status == 415
    assert (await refused.json())["error"]["code"] == "unsupported_media_type"
    empty = aiohttp.FormData()
    empty.add_field("text", "no file")
    assert (await client.post(url, data=empty, headers=bearer(token))).status == 400


async def test_an_attachment_over_the_limit_is_413(
    aiohttp_client: Any, tmp_path: Path, db_url: str
) -> None:
    import aiohttp

    from gateway.app import create_app

    settings = fast_settings(tmp_path, db_url, media_max_mb=0.01)
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    sid = await link(client, token, settings)
    chat = await one_chat(client, token, settings, sid)
    form = aiohttp.FormData()
    form.add_field("file", b"%PDF-1.4\n" + b"x" * 20000, filename="big.pdf")
    resp = await client.post(
        f"/api/v1/conversations/{chat['id']}/messages", data=form, headers=bearer(token)
    )
    assert resp.status == 413
    page = await get(client, token, f"/api/v1/conversations/{chat['id']}/messages")
    assert [m["direction"] for m in page["items"]] == ["inbound"]
