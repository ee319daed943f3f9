"""The AI responder on a Cloud API number: it answers the customer through the Graph API; what
the owner types on the WhatsApp Business app (a Coexistence echo) is never answered, and, as any
reply by a person, pauses the AI in that chat."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.settings import Settings
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login
from tests.fakes import graph as g
from tests.fakes.graph import FakeGraph, emit, envelope, inbound, msg
from tests.sessions_helpers import Client, wait_for
from tests.test_cloud_inbound import cloud_settings


@pytest.fixture
async def fake_graph() -> AsyncIterator[FakeGraph]:
    fake = FakeGraph()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def settings(tmp_path: Path, db_url: str, fake_graph: FakeGraph) -> Settings:
    return cloud_settings(tmp_path, db_url, fake_graph.base, ai_min_interval_seconds=0)


async def call(client: Client, token: str, method: str, path: str, **body: Any) -> Any:
    resp = await client.request(method, path, json=body or None, headers=bearer(token))
    assert resp.status in (200, 201), (path, resp.status, await resp.text())
    return await resp.json()


async def test_cloud_customer_answered_and_business_app_echo_never_answered(
    client: Client, fake_graph: FakeGraph, db_url: str
) -> None:
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    sessions = (await call(client, token, "GET", "/api/v1/sessions"))["items"]
    sid = next(s["id"] for s in sessions if s["channel"] == "cloud")
    await call(client, token, "PATCH", f"/api/v1/sessions/{sid}/ai", ai_default=True)
    await call(
        client,
        token,
        "POST",
        "/api/v1/kb/articles",
        title="Opening hours",
        body="We are open Monday to Friday, 9 to 6.",
        language="en",
        tags=["hours", "open"],
    )
    db = await asyncpg.connect(db_url)
    try:
        # The customer asks: the AI answers through the Graph API.
        resp = await emit(client, inbound(msg("text", {"body": "What are your opening hours?"})))
        assert resp.status == 200

        async def answered() -> list[dict[str, Any]] | None:
            return [s for s in fake_graph.sent if s.get("type") == "text"] or None

        sent = await wait_for(answered, what="the AI's answer sent through the Graph API")
        assert sent[0]["text"]["body"] == "We are open Monday to Friday, 9 to 6."
        assert sent[0]["to"] == "16505551234"

        # The owner then types on the WhatsApp Business app: an echo, stored as the owner's,
        # never answered; a person took over, so the AI also pauses in that chat.
        echo = {
            "from": g.DISPLAY_NUMBER,
            "to": "16505551234",
            "id": "wamid.ECHO-AI-1",
            "timestamp": str(int(time.time())),
            "type": "text",
            "text": {"body": "Hi, it's Maria from the shop. What are your opening hours?"},
        }
        resp = await emit(
            client, envelope({"message_echoes": [echo]}, field_name="smb_message_echoes")
        )
        assert resp.status == 200
        resp = await emit(client, inbound(msg("text", {"body": "And are you open on Sunday?"})))
        assert resp.status == 200

        async def decided() -> list[tuple[str, str]] | None:
            rows = await db.fetch(
                "SELECT r.outcome, m.sender_type FROM ai_replies r "
                "JOIN messages m ON m.id = r.inbound_message_id ORDER BY r.created_at"
            )
            found = [(r["outcome"], r["sender_type"]) for r in rows]
            return found if len(found) >= 2 else None

        # One decision per customer message; none for the owner's echo.
        assert await wait_for(decided, what="two AI decisions") == [
            ("answered", "user"),
            ("paused", "user"),
        ]
        owner = await db.fetchval(
            "SELECT sender_type FROM messages WHERE wa_message_id = $1", "wamid.ECHO-AI-1"
        )
        assert owner == "owner"
        ai_rows = await db.fetch("SELECT text_content FROM messages WHERE sender_type = 'ai'")
        assert [r["text_content"] for r in ai_rows] == ["We are open Monday to Friday, 9 to 6."]
        assert len([s for s in fake_graph.sent if s.get("type") == "text"]) == 1
    finally:
        await db.close()
