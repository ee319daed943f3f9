"""The Jira bridge end to end: a simulated phone writes to a linked WhatsApp account, the real
`jira` package talks HTTP to the fake Jira, Jira's webhooks come back signed; what the customer
and the agent would each see is asserted."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.app import create_app
from gateway.keys import JIRA
from gateway.settings import Settings
from sessions.fake_server import SimMessage
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login
from tests.fakes import jira as fj
from tests.fakes.jira import FakeJira
from tests.sessions_helpers import Client, fast_settings, link, phone, wait_for

pytestmark = pytest.mark.timeout(120)

ALICE = "+5215512345678"
SECRET = "jira-webhook-secret-1"


def jira_settings(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"jira_timeout_seconds": 1.0, "jira_backoff_max_seconds": 0.3}
    values.update(overrides)
    return fast_settings(tmp_path, db_url, **values)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return jira_settings(tmp_path, db_url)


@pytest.fixture
async def fake() -> AsyncIterator[FakeJira]:
    server = FakeJira()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def token(client: Client) -> str:
    return await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def connect(client: Client, token: str, fake: FakeJira, **extra: Any) -> dict[str, Any]:
    body = {
        "base_url": fake.url,
        "auth_kind": "cloud",
        "email": fj.EMAIL,
        "token": fj.API_TOKEN,
        "project_key": "SUP",
        "webhook_secret": SECRET,
        **extra,
    }
    resp = await client.put("/api/v1/jira/connection", json=body, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    saved = dict(await resp.json())
    assert "token" not in saved
    assert SECRET not in str(saved)
    resp = await client.post("/api/v1/jira/test", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    checked = await resp.json()
    assert checked["ok"], checked
    assert checked["account_id"] == fj.BOT_ACCOUNT
    return saved


def say(settings: Settings, sid: int, text: str, **extra: Any) -> str:
    fields = {"type": "text", "from": ALICE, "push_name": "Alice", "text": text, **extra}
    return phone(settings, sid).send(SimMessage.model_validate(fields))[0]


async def one_issue(fake: FakeJira, n: int = 1) -> str:
    async def made() -> list[str] | None:
        keys = fake.issue_keys()
        return keys if len(keys) >= n else None

    return (await wait_for(made, what=f"{n} issue(s)"))[n - 1]


async def comments(fake: FakeJira, key: str, n: int, timeout: float = 20) -> list[str]:
    async def enough() -> list[str] | None:
        found = [c["body"] for c in fake.comments(key)]
        return found if len(found) >= n else None

    return list(await wait_for(enough, timeout=timeout, what=f"{n} comments on {key}"))


async def sent_texts(settings: Settings, sid: int, n: int) -> list[str]:
    async def enough() -> list[str] | None:
        found = [text_of(m) for m in phone(settings, sid).sent() if "message" in m]
        return found if len(found) >= n else None

    return list(await wait_for(enough, what=f"{n} messages to the phone"))


def text_of(sent: dict[str, Any]) -> str:
    message = sent["message"]
    return str(
        message.get("conversation") or (message.get("extendedTextMessage") or {}).get("text") or ""
    )


async def rows(db_url: str, query: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(db_url)
    try:
        return [dict(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def recorded(client: Client, token: str, key: str) -> None:
    """The gateway has stored the ticket's mapping (Jira has the issue a moment earlier, and
    a webhook about an issue we do not know yet is ignored)."""

    async def known() -> bool:
        resp = await client.get("/api/v1/jira/tickets", headers=bearer(token))
        return key in {i["issue_key"] for i in (await resp.json())["items"]}

    await wait_for(known, what=f"the mapping of {key}")


def hook_url(client: Client, saved: dict[str, Any]) -> str:
    return str(client.make_url(saved["webhook_url"]))


async def test_a_bridged_chat_becomes_a_ticket_both_ways(
    client: Client, token: str, settings: Settings, fake: FakeJira, db_url: str
) -> None:
    sid = await link(client, token, settings)
    saved = await connect(client, token, fake, auto_bridge_session_ids=[sid])
    say(settings, sid, "Hello, my order 123 never arrived and I need help")
    key = await one_issue(fake)
    fields = fake.issues[key]["fields"]
    assert fields["summary"].startswith(f"[WhatsApp] Alice ({ALICE}): Hello, my order 123")
    assert ALICE in fields["description"]
    assert "never arrived" in fields["description"]
    assert fields["issuetype"] == {"name": "Task"}
    ticket = (await rows(db_url, "SELECT * FROM jira_tickets"))[0]
    assert (ticket["issue_key"], ticket["phone"], ticket["state"]) == (key, ALICE, "open")
    assert ticket["marker"] in fields["labels"]

    say(settings, sid, "It was a blue lamp")
    image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"x" * 200).decode()
    phone(settings, sid).send(
        SimMessage.model_validate(
            {
                "type": "image",
                "from": ALICE,
                "push_name": "Alice",
                "caption": "the box",
                "mime": "image/png",
                "data_b64": image,
            }
        )
    )
    got = await comments(fake, key, 2)
    assert got[0].startswith("[WhatsApp] Alice: It was a blue lamp")
    assert "sent a image" in got[1]
    assert "the box" in got[1]
    attachments = fake.issues[key]["attachments"]
    assert len(attachments) == 1
    assert attachments[0]["filename"] in got[1]

    # The operator answers from the inbox: a comment marked as theirs.
    conversation = (await rows(db_url, "SELECT id FROM conversations"))[0]["id"]
    resp = await client.post(
        f"/api/v1/conversations/{conversation}/messages",
        json={"text": "We are checking it"},
        headers=bearer(token),
    )
    assert resp.status == 202, await resp.text()
    got = await comments(fake, key, 3)
    assert got[2].startswith("[WhatsApp · operator]: We are checking it")

    # An agent answers in Jira: the customer gets it, stored as an agent's message.
    url = hook_url(client, saved)
    agent = fake.add_agent_comment(key, "Your lamp ships tomorrow")
    event = fake.comment_event(key, agent)
    status, answer = await fake.deliver(url, event, secret=SECRET, identifier="delivery-1")
    assert (status, answer["outcome"]) == (200, "queued")
    texts = await sent_texts(settings, sid, 2)
    assert texts == ["We are checking it", "Your lamp ships tomorrow"]
    stored = await rows(
        db_url, "SELECT sender_type FROM messages WHERE text_content = 'Your lamp ships tomorrow'"
    )
    assert [r["sender_type"] for r in stored] == ["agent"]
    # Jira's retry of the same delivery does nothing.
    status, answer = await fake.deliver(url, event, secret=SECRET, identifier="delivery-1")
    assert (status, answer["outcome"]) == (200, "duplicate")
    # Our own comments, the integration account's and internal ones never reach the phone.
    ours = fake.comments(key)[0]
    status, answer = await fake.deliver(url, fake.comment_event(key, ours), secret=SECRET)
    assert answer["outcome"].startswith("ignored")
    internal = fake.add_agent_comment(key, "internal note: refund?", public=False)
    status, answer = await fake.deliver(url, fake.comment_event(key, internal), secret=SECRET)
    assert answer["outcome"] == "ignored: an internal comment"
    # A bad signature: 401 and nothing happens.
    other = fake.add_agent_comment(key, "forged")
    status, _ = await fake.deliver(
        url, fake.comment_event(key, other), signature="sha256=" + "0" * 64
    )
    assert status == 401
    status, _ = await fake.deliver(url, fake.comment_event(key, other))
    assert status == 401
    # The agent's comment is not echoed back into Jira as a WhatsApp comment.
    # A status change: a localized notice.
    status, answer = await fake.deliver(
        url, fake.status_event(key, "To Do", "In Progress"), secret=SECRET
    )
    assert answer["outcome"] == "queued"
    texts = await sent_texts(settings, sid, 3)
    assert texts[-1] == f"Your ticket {key} is now In Progress."
    await asyncio.sleep(1.0)
    assert len(await sent_texts(settings, sid, 3)) == 3
    assert len(fake.comments(key)) == 6  # 3 ours + the agent's + internal + forged
    assert not any(
        "lamp ships" in c["body"] and c["author"]["accountId"] == fj.BOT_ACCOUNT
        for c in fake.comments(key)
    )

    resp = await client.get("/api/v1/jira/tickets", headers=bearer(token))
    items = (await resp.json())["items"]
    assert [(i["issue_key"], i["status"]) for i in items] == [(key, "In Progress")]
    resp = await client.get("/api/v1/jira/status", headers=bearer(token))
    state = await resp.json()
    assert (state["state"], state["tickets_open"], state["jobs_waiting"]) == ("active", 1, 0)


async def test_customer_commands_in_three_languages(
    client: Client, token: str, settings: Settings, fake: FakeJira, db_url: str
) -> None:
    sid = await link(client, token, settings)
    await connect(client, token, fake, auto_bridge_session_ids=[sid])
    say(settings, sid, "/ayuda")
    texts = await sent_texts(settings, sid, 1)
    assert texts[0].startswith("Comandos:")
    assert "/nuevo" in texts[0]
    say(settings, sid, "/status")
    texts = await sent_texts(settings, sid, 2)
    assert "No tienes" in texts[1]
    say(settings, sid, "Preciso de ajuda com a fatura")
    key = await one_issue(fake)
    say(settings, sid, "/status")
    texts = await sent_texts(settings, sid, 3)
    assert texts[2] == f"Tu ticket {key} está en To Do."
    say(settings, sid, "/novo")
    texts = await sent_texts(settings, sid, 4)
    assert texts[3].startswith("Pronto:")
    say(settings, sid, "Outra pergunta")
    second = await one_issue(fake, 2)
    assert second != key
    say(settings, sid, "/cancel")
    texts = await sent_texts(settings, sid, 5)
    assert texts[4] == f"Your ticket {second} was cancelled."
    assert fake.issues[second]["status"] == "Cancelled"
    assert any(
        "/cancel" not in c["body"] or "cancelled" in c["body"] for c in fake.comments(second)
    )
    say(settings, sid, "/help")
    texts = await sent_texts(settings, sid, 6)
    assert texts[5].startswith("Commands:")
    tickets = await rows(db_url, "SELECT state FROM jira_tickets ORDER BY id")
    assert [t["state"] for t in tickets] == ["closed", "closed"]
    # The answers were never bridged back as comments.
    assert all("Commands" not in c["body"] for c in fake.comments(key) + fake.comments(second))


async def test_resolved_ticket_then_new_message_opens_a_new_one_or_reopens(
    client: Client, token: str, settings: Settings, fake: FakeJira
) -> None:
    sid = await link(client, token, settings)
    saved = await connect(client, token, fake, auto_bridge_session_ids=[sid])
    url = hook_url(client, saved)
    say(settings, sid, "first problem")
    key = await one_issue(fake)
    await recorded(client, token, key)
    await fake.deliver(url, fake.status_event(key, "To Do", "Done"), secret=SECRET)
    await sent_texts(settings, sid, 1)
    say(settings, sid, "another problem")
    second = await one_issue(fake, 2)
    assert fake.issues[second]["fields"]["summary"].endswith("another problem")
    # With reopening on, the resolved ticket comes back instead.
    await connect(client, token, fake, auto_bridge_session_ids=[sid], reopen_resolved=True)
    await recorded(client, token, second)
    await fake.deliver(url, fake.status_event(second, "To Do", "Done"), secret=SECRET)
    await sent_texts(settings, sid, 2)
    say(settings, sid, "still broken")
    got = await comments(fake, second, 1)
    assert got[0].startswith("[WhatsApp] Alice: still broken")
    assert fake.issues[second]["status"] == "To Do"
    assert len(fake.issue_keys()) == 2


async def test_jira_down_then_up_loses_and_duplicates_nothing(
    client: Client, token: str, settings: Settings, fake: FakeJira
) -> None:
    sid = await link(client, token, settings)
    await connect(client, token, fake, auto_bridge_session_ids=[sid])
    say(settings, sid, "message 0")
    key = await one_issue(fake)
    fake.down()
    for i in range(1, 8):
        say(settings, sid, f"message {i}")
    await asyncio.sleep(2.0)
    assert fake.comments(key) == []
    fake.up()
    got = await comments(fake, key, 7)
    assert [g.split("\n")[0] for g in got] == [
        f"[WhatsApp] Alice: message {i}" for i in range(1, 8)
    ]
    # 429 with Retry-After, then an answer lost after the comment was made.
    fake.fail(429, times=1, ops={"add_comment"}, retry_after=1)
    fake.lose_answers = 1
    say(settings, sid, "message 8")
    say(settings, sid, "message 9")
    got = await comments(fake, key, 9)
    await asyncio.sleep(1.5)
    got = [c["body"].split("\n")[0] for c in fake.comments(key)]
    assert got == [f"[WhatsApp] Alice: message {i}" for i in range(1, 10)]


async def test_create_timeout_makes_one_ticket(
    client: Client, token: str, settings: Settings, fake: FakeJira
) -> None:
    sid = await link(client, token, settings)
    await connect(client, token, fake, auto_bridge_session_ids=[sid])
    fake.lose_answers = 1  # the issue is created, the answer never arrives
    say(settings, sid, "please help")
    say(settings, sid, "anyone?")
    key = await one_issue(fake)
    got = await comments(fake, key, 1)
    await asyncio.sleep(1.0)
    assert fake.issue_keys() == [key]
    assert [c.split("\n")[0] for c in got] == ["[WhatsApp] Alice: anyone?"]


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_credentials_park_the_bridge_until_fixed(
    client: Client, token: str, settings: Settings, fake: FakeJira, status: int
) -> None:
    sid = await link(client, token, settings)
    await connect(client, token, fake, auto_bridge_session_ids=[sid])
    fake.fail(status, times=1000, ops={"create_issue", "search", "add_comment"})
    say(settings, sid, "hello?")

    async def rejected() -> dict[str, Any] | None:
        resp = await client.get("/api/v1/jira/status", headers=bearer(token))
        found = await resp.json()
        return found if found["state"] == "rejected" else None

    found = await wait_for(rejected, what="rejected state")
    assert "credentials rejected" in found["message"]
    calls = len(fake.calls)
    await asyncio.sleep(1.5)
    assert len(fake.calls) == calls  # it stopped hammering
    fake.faults.clear()
    resp = await client.post("/api/v1/jira/test", headers=bearer(token))
    assert (await resp.json())["ok"]
    await one_issue(fake)


async def test_restart_in_the_middle_loses_and_duplicates_nothing(
    aiohttp_client: Any, tmp_path: Path, db_url: str, fake: FakeJira
) -> None:
    settings = jira_settings(tmp_path, db_url)
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    sid = await link(client, token, settings)
    await connect(client, token, fake, auto_bridge_session_ids=[sid])
    say(settings, sid, "before")
    key = await one_issue(fake)
    fake.down()
    for i in range(5):
        say(settings, sid, f"while down {i}")

    async def queued() -> bool:
        found = await rows(db_url, "SELECT count(*) AS n FROM outbox WHERE kind = 'jira_message'")
        return int(found[0]["n"]) >= 6

    await wait_for(queued, what="jobs queued")
    await client.close()
    fake.up()
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    got = await comments(fake, key, 5, timeout=40)
    await asyncio.sleep(1.0)
    got = [c["body"].split("\n")[0] for c in fake.comments(key)]
    assert got == [f"[WhatsApp] Alice: while down {i}" for i in range(5)]
    assert client.app[JIRA].done >= 5


async def test_webhook_token_and_connection_are_per_operator(
    client: Client, token: str, fake: FakeJira
) -> None:
    resp = await client.get("/api/v1/jira/connection", headers=bearer(token))
    assert resp.status == 404
    resp = await client.get("/api/v1/jira/status", headers=bearer(token))
    assert (await resp.json())["configured"] is False
    status, _ = await fake.deliver(
        str(client.make_url("/api/v1/jira/webhook/not-a-token")), {"webhookEvent": "x"}
    )
    assert status == 404
    # Wrong credentials: the test says so.
    body = {"base_url": fake.url, "auth_kind": "pat", "token": "wrong", "project_key": "SUP"}
    resp = await client.put("/api/v1/jira/connection", json=body, headers=bearer(token))
    assert resp.status == 200
    resp = await client.post("/api/v1/jira/test", headers=bearer(token))
    found = await resp.json()
    assert (found["ok"], found["kind"]) == (False, "rejected")
    body["token"] = fj.PAT
    resp = await client.put("/api/v1/jira/connection", json=body, headers=bearer(token))
    resp = await client.post("/api/v1/jira/test", headers=bearer(token))
    assert (await resp.json())["ok"]


async def test_a_bootstrapped_connection_learns_its_integration_account_before_relaying(
    tmp_path: Path, db_url: str, fake: FakeJira, aiohttp_client: Any
) -> None:
    """From `WAGATE_JIRA_*`, with nobody ever pressing "Test connection": the first agent
    comment makes the bridge ask Jira who it is, so a comment the integration account wrote
    without our marker (an automation rule, a person logged in as the bot) never reaches the
    customer, while a real agent's does."""
    settings = jira_settings(
        tmp_path,
        db_url,
        jira_url=fake.url,
        jira_email=fj.EMAIL,
        jira_api_token=fj.API_TOKEN,
        jira_project_key="sup",
        jira_webhook_secret=SECRET,
    )
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    resp = await client.get("/api/v1/jira/connection", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    saved = await resp.json()
    assert (saved["project_key"], saved["auth_kind"], saved["account_id"]) == ("SUP", "cloud", None)
    assert saved["has_webhook_secret"] is True
    sid = await link(client, token, settings)
    say(settings, sid, "Hello")

    async def chat() -> list[dict[str, Any]] | None:
        return await rows(db_url, "SELECT id FROM conversations") or None

    chats = await wait_for(chat, what="the conversation")
    resp = await client.patch(
        f"/api/v1/conversations/{chats[0]['id']}", json={"jira_bridge": True}, headers=bearer(token)
    )
    assert resp.status == 200, await resp.text()
    say(settings, sid, "My parcel is lost")
    key = await one_issue(fake)

    url = hook_url(client, saved)
    bot = fake.add_agent_comment(key, "Automation: SLA timer started", author=fj.BOT_ACCOUNT)
    status, answer = await fake.deliver(url, fake.comment_event(key, bot), secret=SECRET)
    assert (status, answer["outcome"]) == (200, "queued")
    agent = fake.add_agent_comment(key, "We found it, it arrives Monday")
    status, answer = await fake.deliver(url, fake.comment_event(key, agent), secret=SECRET)
    assert (status, answer["outcome"]) == (200, "queued")
    assert await sent_texts(settings, sid, 1) == ["We found it, it arrives Monday"]
    await asyncio.sleep(0.5)
    assert [text_of(m) for m in phone(settings, sid).sent() if "message" in m] == [
        "We found it, it arrives Monday"
    ]
    resp = await client.get("/api/v1/jira/connection", headers=bearer(token))
    assert (await resp.json())["account_id"] == fj.BOT_ACCOUNT


@pytest.mark.parametrize("as_date", [False, True], ids=["seconds", "http-date"])
async def test_a_429_waits_as_long_as_jira_says(
    client: Client, token: str, settings: Settings, fake: FakeJira, as_date: bool
) -> None:
    """Our own backoff is 0.3 s here; Jira's Retry-After (3 s, as seconds or as an HTTP-date)
    wins, and the comment still lands exactly once."""
    sid = await link(client, token, settings)
    await connect(client, token, fake, auto_bridge_session_ids=[sid])
    say(settings, sid, "first")
    key = await one_issue(fake)
    fake.retry_after_date = as_date
    fake.fail(429, times=1, ops={"add_comment"}, retry_after=3)
    say(settings, sid, "second")

    async def limited() -> list[float]:
        return [t for op, t in fake.op_times if op == "add_comment"]

    limited_at = (await wait_for(limited, what="the 429"))[0]
    # The limit is the account's: another customer's new ticket waits for it too.
    say(settings, sid, "hola", **{"from": "+5215599990000", "push_name": "Bea"})
    got = await comments(fake, key, 1)
    assert [g.split("\n")[0] for g in got] == ["[WhatsApp] Alice: second"]
    attempts = [t for op, t in fake.op_times if op == "add_comment"]
    assert len(attempts) == 2
    # An HTTP-date has whole seconds: allow for the rounding down of "now + 3 s".
    least = 2.0 if as_date else 2.9
    assert attempts[1] - limited_at >= least
    await one_issue(fake, 2)
    created = [t for op, t in fake.op_times if op == "create_issue"]
    assert created[1] - limited_at >= least


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    from email.utils import formatdate

    from gateway.jira_client import retry_after_seconds

    now = 1_800_000_000.0
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(formatdate(now + 30, usegmt=True), now) == 30.0
    assert retry_after_seconds(formatdate(now - 30, usegmt=True), now) == 0.0
    assert retry_after_seconds("86400", now) == 3600.0
    for junk in (None, "", "soon", "-5"):
        assert retry_after_seconds(junk, now) == 0.0


async def test_the_other_commands_and_the_status_notice_settings(
    client: Client, token: str, settings: Settings, fake: FakeJira, db_url: str
) -> None:
    sid = await link(client, token, settings)
    saved = await connect(client, token, fake, auto_bridge_session_ids=[sid], language="pt")
    url = hook_url(client, saved)
    say(settings, sid, "/ajuda")
    texts = await sent_texts(settings, sid, 1)
    assert texts[0].startswith("Comandos:\n/ajuda")
    assert "/novo" in texts[0]

    say(settings, sid, "Olá, meu pedido não chegou")
    first = await one_issue(fake)
    await recorded(client, token, first)
    # The notice speaks the operator's default language here (pt).
    await fake.deliver(url, fake.status_event(first, "To Do", "In Progress"), secret=SECRET)
    texts = await sent_texts(settings, sid, 2)
    assert texts[1] == f"Seu ticket {first} agora está em In Progress."

    say(settings, sid, "/nuevo")
    texts = await sent_texts(settings, sid, 3)
    assert texts[2] == "Listo: tu próximo mensaje abrirá un ticket nuevo."
    say(settings, sid, "Otra consulta")
    second = await one_issue(fake, 2)
    await recorded(client, token, second)
    say(settings, sid, "/cancelar")  # the customer's last command was Spanish
    texts = await sent_texts(settings, sid, 4)
    assert texts[3] == f"Tu ticket {second} fue cancelado."
    assert fake.issues[second]["status"] == "Cancelled"

    say(settings, sid, "One more thing")
    third = await one_issue(fake, 3)
    await recorded(client, token, third)
    say(settings, sid, "/new")
    texts = await sent_texts(settings, sid, 5)
    assert texts[4] == "Done: your next message opens a new ticket."
    assert [t["state"] for t in await rows(db_url, "SELECT state FROM jira_tickets")] == [
        "closed"
    ] * 3

    # An own notice text, then notices off.
    await connect(
        client,
        token,
        fake,
        auto_bridge_session_ids=[sid],
        language="pt",
        status_notice_text="Ticket {key}: {status}",
    )
    say(settings, sid, "Still waiting")
    fourth = await one_issue(fake, 4)
    await recorded(client, token, fourth)
    await fake.deliver(url, fake.status_event(fourth, "To Do", "In Progress"), secret=SECRET)
    texts = await sent_texts(settings, sid, 6)
    assert texts[5] == f"Ticket {fourth}: In Progress"
    await connect(
        client, token, fake, auto_bridge_session_ids=[sid], language="pt", status_notices=False
    )
    await fake.deliver(url, fake.status_event(fourth, "In Progress", "Done"), secret=SECRET)

    async def done() -> bool:
        found = await rows(db_url, "SELECT status FROM jira_tickets WHERE issue_key = $1", fourth)
        return found[0]["status"] == "Done"

    await wait_for(done, what="the status change taken")
    await asyncio.sleep(1.0)
    assert len([m for m in phone(settings, sid).sent() if "message" in m]) == 6


async def test_notices_and_answers_speak_the_language_the_customer_writes(
    client: Client, token: str, settings: Settings, fake: FakeJira
) -> None:
    """No command has told the customer's language: it is read from what they write, so a
    Spanish-speaking customer of an English-speaking team is answered in Spanish."""
    sid = await link(client, token, settings)
    saved = await connect(client, token, fake, auto_bridge_session_ids=[sid], language="en")
    url = hook_url(client, saved)
    say(settings, sid, "Hola, mi pedido no ha llegado todavía y necesito ayuda por favor")
    key = await one_issue(fake)
    await recorded(client, token, key)
    await fake.deliver(url, fake.status_event(key, "To Do", "In Progress"), secret=SECRET)
    texts = await sent_texts(settings, sid, 1)
    assert texts[0] == f"Tu ticket {key} ahora está en In Progress."
    say(settings, sid, "/status")  # the same word in every language
    texts = await sent_texts(settings, sid, 2)
    assert texts[1] == f"Tu ticket {key} está en In Progress."
    # A command of one language is answered in it.
    say(settings, sid, "/new")
    texts = await sent_texts(settings, sid, 3)
    assert texts[2] == "Done: your next message opens a new ticket."
