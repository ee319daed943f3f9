"""The Jira bridge beyond the basics: a photo as a chat's very first message, an AI reply landing
as a comment marked as the AI's, and a Cloud API number bridged both ways (Meta's signed
webhooks in, the Graph API out), each with the real `jira` package against the fake Jira."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.settings import Settings
from sessions.fake_server import SimMessage
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login
from tests.fakes.graph import FakeGraph, emit, inbound, msg
from tests.fakes.jira import FakeJira
from tests.sessions_helpers import Client, link, phone, wait_for
from tests.test_cloud_inbound import cloud_settings
from tests.test_jira import (
    ALICE,
    SECRET,
    comments,
    connect,
    hook_url,
    jira_settings,
    one_issue,
    rows,
    say,
    sent_texts,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def fake() -> AsyncIterator[FakeJira]:
    server = FakeJira()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def image(caption: str | None = None) -> SimMessage:
    data = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"p" * 300).decode()
    fields: dict[str, Any] = {
        "type": "image",
        "from": ALICE,
        "push_name": "Alice",
        "mime": "image/png",
        "data_b64": data,
    }
    if caption is not None:
        fields["caption"] = caption
    return SimMessage.model_validate(fields)


async def ticket_key_of(client: Client, token: str) -> str | None:
    resp = await client.get("/api/v1/conversations", headers=bearer(token))
    items = (await resp.json())["items"]
    return items[0]["ticket_key"] if items else None


async def test_a_photo_as_the_first_message_opens_the_ticket_with_its_attachment(
    aiohttp_client: Any, tmp_path: Path, db_url: str, fake: FakeJira
) -> None:
    settings = jira_settings(tmp_path, db_url)
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    sid = await link(client, token, settings)
    await connect(client, token, fake, auto_bridge_session_ids=[sid])
    phone(settings, sid).send(image("my broken lamp"))
    key = await one_issue(fake)
    fields = fake.issues[key]["fields"]
    assert fields["summary"] == f"[WhatsApp] Alice ({ALICE}): my broken lamp"
    # The photo is not lost in the description: it is attached, and a comment names it.
    got = await comments(fake, key, 1)
    attachments = fake.issues[key]["attachments"]
    assert len(attachments) == 1
    assert attachments[0]["filename"].endswith(".png")
    assert got[0].startswith(f"[WhatsApp] Alice: sent a image: [^{attachments[0]['filename']}]")
    assert "my broken lamp" in got[0]
    # A photo without a caption, then text: in order, once each.
    phone(settings, sid).send(image())
    say(settings, sid, "it arrived like that")
    got = await comments(fake, key, 3)
    assert "sent a image" in got[1]
    assert got[2].startswith("[WhatsApp] Alice: it arrived like that")
    assert len(fake.issues[key]["attachments"]) == 2
    assert len(fake.issue_keys()) == 1
    assert await ticket_key_of(client, token) == key


async def test_an_ai_reply_lands_as_a_comment_marked_as_the_ais(
    aiohttp_client: Any, tmp_path: Path, db_url: str, fake: FakeJira
) -> None:
    settings = jira_settings(tmp_path, db_url, ai_min_interval_seconds=0)
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    sid = await link(client, token, settings)
    resp = await client.patch(
        f"/api/v1/sessions/{sid}/ai", json={"ai_default": True}, headers=bearer(token)
    )
    assert resp.status == 200, await resp.text()
    resp = await client.post(
        "/api/v1/kb/articles",
        json={
            "title": "Opening hours",
            "body": "We are open Monday to Friday, 9:00 to 18:00.",
            "language": "en",
            "tags": ["hours", "schedule"],
        },
        headers=bearer(token),
    )
    assert resp.status == 201, await resp.text()
    await connect(client, token, fake, auto_bridge_session_ids=[sid])
    say(settings, sid, "What are your opening hours?")
    assert await sent_texts(settings, sid, 1) == ["We are open Monday to Friday, 9:00 to 18:00."]
    key = await one_issue(fake)
    assert "What are your opening hours?" in fake.issues[key]["fields"]["description"]
    got = await comments(fake, key, 1)
    assert got[0].startswith("[WhatsApp · AI reply]: We are open Monday to Friday, 9:00 to 18:00.")
    # The customer's next message follows it, in order.
    say(settings, sid, "Thanks!")
    got = await comments(fake, key, 2)
    assert got[1].startswith("[WhatsApp] Alice: Thanks!")
    stored = await rows(db_url, "SELECT sender_type FROM messages WHERE direction = 'outbound'")
    assert [r["sender_type"] for r in stored][:1] == ["ai"]


async def test_a_cloud_api_number_is_bridged_both_ways(
    aiohttp_client: Any, tmp_path: Path, db_url: str, fake: FakeJira
) -> None:
    graph = FakeGraph()
    await graph.start()
    try:
        settings: Settings = cloud_settings(
            tmp_path,
            db_url,
            graph.base,
            jira_timeout_seconds=1.0,
            jira_backoff_max_seconds=0.3,
        )
        client = await aiohttp_client(create_app(settings))
        token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
        resp = await client.get("/api/v1/sessions", headers=bearer(token))
        sid = next(s["id"] for s in (await resp.json())["items"] if s["channel"] == "cloud")
        saved = await connect(client, token, fake, auto_bridge_session_ids=[sid])
        # Meta's signed webhook: the first message opens the ticket, the next is a comment.
        resp = await emit(client, inbound(msg("text", {"body": "Hi, my card was charged twice"})))
        assert resp.status == 200, await resp.text()
        key = await one_issue(fake)
        fields = fake.issues[key]["fields"]
        assert (
            fields["summary"] == "[WhatsApp] Sheena (+16505551234): Hi, my card was charged twice"
        )
        resp = await emit(client, inbound(msg("text", {"body": "The order is 4711"})))
        assert resp.status == 200
        got = await comments(fake, key, 1)
        assert got[0].startswith("[WhatsApp] Sheena: The order is 4711")
        ticket = (await rows(db_url, "SELECT * FROM jira_tickets"))[0]
        assert (ticket["session_id"], ticket["phone"]) == (sid, "+16505551234")

        # The agent's answer in Jira reaches the customer through the Graph API.
        agent = fake.add_agent_comment(key, "Refund issued, sorry about that")
        status, answer = await fake.deliver(
            hook_url(client, saved), fake.comment_event(key, agent), secret=SECRET
        )
        assert (status, answer["outcome"]) == (200, "queued")

        async def sent(n: int) -> list[str] | None:
            found = [b["text"]["body"] for b in graph.sent if b.get("type") == "text"]
            return found if len(found) >= n else None

        assert await wait_for(lambda: sent(1), what="the Graph API send") == [
            "Refund issued, sorry about that"
        ]
        stored = await rows(
            db_url,
            "SELECT sender_type FROM messages WHERE text_content = $1",
            "Refund issued, sorry about that",
        )
        assert [r["sender_type"] for r in stored] == ["agent"]
        # A status change: a notice, also through the Graph API.
        event = fake.status_event(key, "To Do", "In Progress")
        status, answer = await fake.deliver(hook_url(client, saved), event, secret=SECRET)
        assert answer["outcome"] == "queued"
        got_sent = await wait_for(lambda: sent(2), what="the status notice")
        assert got_sent[1] == f"Your ticket {key} is now In Progress."
        # Neither of those came back to Jira as a comment.
        assert [c["body"].split("\n")[0] for c in fake.comments(key)] == [
            "[WhatsApp] Sheena: The order is 4711",
            "Refund issued, sorry about that",
        ]
        assert await ticket_key_of(client, token) == key
    finally:
        await graph.stop()


async def test_groups_are_bridged_only_when_switched_on_and_name_who_wrote(
    aiohttp_client: Any, tmp_path: Path, db_url: str, fake: FakeJira
) -> None:
    settings = jira_settings(tmp_path, db_url)
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    sid = await link(client, token, settings)
    # "Bridge every new 1:1 chat" is on for the account: it does not take groups.
    await connect(client, token, fake, auto_bridge_session_ids=[sid])
    bob = "+5215587654321"
    group = phone(settings, sid).create_group("120363000000000077", "Lamp buyers", [ALICE, bob])

    def in_group(sender: str, name: str, text: str) -> None:
        fields = {"type": "text", "from": sender, "push_name": name, "text": text, "group": group}
        phone(settings, sid).send(SimMessage.model_validate(fields))

    in_group(ALICE, "Alice", "anyone else got a broken lamp?")

    async def group_chat() -> dict[str, Any] | None:
        found = await rows(
            db_url, "SELECT id, jira_bridge, contact_name FROM conversations WHERE kind = 'group'"
        )
        return found[0] if found and found[0]["contact_name"] else None

    chat = await wait_for(group_chat, what="the group's conversation and its name")
    assert chat["jira_bridge"] is False
    # A 1:1 chat in the same account is bridged, which shows the rule ran by now.
    say(settings, sid, "my lamp is broken too")
    direct = await one_issue(fake)
    assert fake.issues[direct]["fields"]["summary"].startswith(f"[WhatsApp] Alice ({ALICE})")
    assert len(fake.issue_keys()) == 1

    # Switched on by hand: the group's next message opens its own ticket, named for its sender.
    resp = await client.patch(
        f"/api/v1/conversations/{chat['id']}", json={"jira_bridge": True}, headers=bearer(token)
    )
    assert resp.status == 200, await resp.text()
    in_group(bob, "Bob", "mine arrived cracked")
    key = await one_issue(fake, 2)
    assert key != direct
    summary = fake.issues[key]["fields"]["summary"]
    assert summary.startswith(f"[WhatsApp] Bob ({bob}): mine arrived cracked"), summary
    assert "* Group: Lamp buyers" in fake.issues[key]["fields"]["description"]
    in_group(ALICE, "Alice", "same here, box was wet")
    got = await comments(fake, key, 1)
    assert got[0].startswith("[WhatsApp] Alice: same here, box was wet"), got
    assert len(fake.issue_keys()) == 2
