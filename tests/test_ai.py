"""The AI responder, as a customer and an operator notice it: answers from the knowledge base in
the customer's language, a model's answers with the right prompt, fallbacks when the model
fails, handoff to a person, silence where it must be silent, rate limits and loop stops, and
exactly one answer per message across restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.ai import text as ai_text
from gateway.ai.responder import AiResponder
from gateway.keys import AI, BUS, DATABASE_URL, SESSIONS
from gateway.security import SecretBox
from gateway.settings import Settings
from sessions.fake_server import Phone, SimHistory, SimReceipt
from tests.conftest import bearer
from tests.fakes.llm import HANDOFF, FakeLLM, Reply
from tests.sessions_helpers import Client, fast_settings, link, phone, record, text, wait_for

pytestmark = pytest.mark.timeout(90)

CUSTOMER = "+5215512345678"
CUSTOMER_JID = "5215512345678@s.whatsapp.net"


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    fake = FakeLLM()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return fast_settings(tmp_path, db_url, ai_allow_private=True, ai_min_interval_seconds=0)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    yield conn
    await conn.close()


@pytest.fixture
async def sid(client: Client, admin_token: str, settings: Settings) -> int:
    session_id = await link(client, admin_token, settings)
    await api(client, admin_token, "PATCH", f"/api/v1/sessions/{session_id}/ai", ai_default=True)
    return session_id


async def api(
    client: Client, token: str, method: str, path: str, status: int | None = None, **body: Any
) -> Any:
    resp = await client.request(method, path, json=body or None, headers=bearer(token))
    expected = status or {"POST": 201, "DELETE": 204}.get(method, 200)
    assert resp.status == expected, (path, resp.status, await resp.text())
    return None if resp.status == 204 else await resp.json()


async def article(
    client: Client, token: str, title: str, body: str, language: str = "en", **extra: Any
) -> int:
    created = await api(
        client,
        token,
        "POST",
        "/api/v1/kb/articles",
        title=title,
        body=body,
        language=language,
        **extra,
    )
    return int(created["id"])


def said(p: Phone) -> list[str]:
    """What the linked account sent, as the customer's phone shows it (texts, in order)."""
    out = []
    for item in p.sent():
        message = item.get("message") or {}
        body = message.get("conversation") or message.get("extendedTextMessage", {}).get("text")
        if body:
            out.append(body)
    return out


async def replies(p: Phone, n: int, timeout: float = 20.0) -> list[str]:
    async def enough() -> list[str] | None:
        got = said(p)
        return got if len(got) >= n else None

    return list(await wait_for(enough, timeout=timeout, what=f"{n} replies on the phone"))


async def decisions(db: asyncpg.Connection, n: int, timeout: float = 20.0) -> list[str]:
    async def enough() -> list[str] | None:
        rows = await db.fetch("SELECT outcome FROM ai_replies ORDER BY created_at, ctid")
        return [r["outcome"] for r in rows] if len(rows) >= n else None

    return list(await wait_for(enough, timeout=timeout, what=f"{n} AI decisions"))


async def conversation(db: asyncpg.Connection, jid: str = CUSTOMER_JID) -> asyncpg.Record:
    async def found() -> asyncpg.Record | None:
        return await db.fetchrow("SELECT * FROM conversations WHERE external_id = $1", jid)

    return await wait_for(found, what=f"conversation {jid}")


# -- the knowledge base ------------------------------------------------------------------------


async def test_kb_answers_in_the_customers_language_with_the_best_article(
    client: Client, admin_token: str, settings: Settings, sid: int, db: asyncpg.Connection
) -> None:
    token = admin_token
    await article(
        client,
        token,
        "Opening hours",
        "We are open Monday to Friday, 9:00 to 18:00.",
        tags=["hours", "schedule"],
    )
    await article(client, token, "Shipping", "Orders ship within two working days.")
    await article(
        client,
        token,
        "Horario de atención",
        "Abrimos de lunes a viernes, de 9:00 a 18:00.",
        language="es",
        tags=["horario"],
    )
    await article(
        client, token, "Horário de funcionamento", "Abrimos de segunda a sexta.", language="pt"
    )
    events = record(client)
    p = phone(settings, sid)
    p.send(text(CUSTOMER, "What are your opening hours?"))
    assert (await replies(p, 1))[0] == "We are open Monday to Friday, 9:00 to 18:00."
    p.send(text("+5215500000001", "¿Cuál es el horario de atención?"))
    p.send(text("+5215500000002", "Qual é o horário de funcionamento?"))
    got = await replies(p, 3)
    assert "Abrimos de lunes a viernes, de 9:00 a 18:00." in got
    assert "Abrimos de segunda a sexta." in got
    # Stored as the AI's, sent through the outbox, shown live.
    rows = await db.fetch(
        "SELECT sender_type, status, direction FROM messages WHERE sender_type = 'ai'"
    )
    assert len(rows) == 3
    assert all(r["direction"] == "outbound" for r in rows)

    async def all_sent() -> bool:
        statuses = await db.fetch("SELECT status FROM messages WHERE sender_type = 'ai'")
        return all(r["status"] == "sent" for r in statuses)

    await wait_for(all_sent, what="AI replies sent")
    live = [
        e for e in events.events if e.event == "message-new" and e.payload["sender_type"] == "ai"
    ]
    assert len(live) == 3
    assert all(e.seq is not None for e in live)
    # "typing…" was shown before the answers.
    presence = [item for item in p.sent() if item.get("presence") == "composing"]
    assert presence
    assert presence[0]["chat"] == CUSTOMER_JID
    # The decisions, as the operator sees them.
    chat = await conversation(db)
    state = await api(client, token, "GET", f"/api/v1/conversations/{chat['id']}/ai")
    assert state["decisions"][0]["outcome"] == "answered"
    assert state["decisions"][0]["provider"] == "kb"
    assert state["decisions"][0]["score"] >= 0.5


async def test_the_best_ranked_article_wins_and_search_shows_scores(
    client: Client, admin_token: str
) -> None:
    token = admin_token
    await article(client, token, "Password", "Change your password in the settings.")
    best = await article(
        client,
        token,
        "Reset your password",
        "Click *Forgot password* on the login page and follow the e-mail.",
        tags=["password", "reset", "login"],
    )
    found = await api(
        client, token, "GET", "/api/v1/kb/search?q=How+do+I+reset+my+password+for+login"
    )
    assert found["language"] == "en"
    assert found["items"][0]["article"]["id"] == best
    assert found["items"][0]["score"] == 1.0
    assert found["items"][1]["score"] < 1.0
    es = await api(client, token, "GET", "/api/v1/kb/search?q=contraseña&language=es")
    assert es["language"] == "es"


async def test_the_vocabulary_follows_edits_and_unknown_words_still_count(
    client: Client, admin_token: str, db: asyncpg.Connection
) -> None:
    token = admin_token

    async def vocabulary() -> dict[str, int]:
        rows = await db.fetch(
            "SELECT lexeme, articles FROM kb_lexemes WHERE language = 'en' ORDER BY lexeme"
        )
        return {r["lexeme"]: r["articles"] for r in rows}

    refund = await article(client, token, "Refunds", "A refund takes five days.")
    await article(client, token, "Shipping", "Shipping takes two days.")
    words = await vocabulary()
    assert words["refund"] == 1
    assert words["day"] == 2
    assert words["take"] == 2
    await api(client, token, "PATCH", f"/api/v1/kb/articles/{refund}", body="Money back in a week.")
    words = await vocabulary()
    assert words["refund"] == 1  # still in the title
    assert words["day"] == 1
    assert words["week"] == 1
    await api(client, token, "DELETE", f"/api/v1/kb/articles/{refund}")
    words = await vocabulary()
    assert "refund" not in words
    assert "week" not in words
    assert words["day"] == 1

    # Words no article has are not searched for, but they still count against the score.
    found = await api(
        client, token, "GET", "/api/v1/kb/search?q=shipping+days+for+my+bicycle+helmet"
    )
    assert found["items"][0]["article"]["title"] == "Shipping"
    assert found["items"][0]["score"] == pytest.approx(2 / 4)
    nothing = await api(client, token, "GET", "/api/v1/kb/search?q=bicycle+helmet")
    assert nothing["items"] == []


async def test_low_confidence_and_requests_for_a_person_hand_over(
    client: Client, admin_token: str, settings: Settings, sid: int, db: asyncpg.Connection
) -> None:
    await article(client, admin_token, "Opening hours", "Monday to Friday, 9 to 6.")
    p = phone(settings, sid)
    p.send(text(CUSTOMER, "Can you fix my broken washing machine?"))
    assert (await replies(p, 1))[0] == ai_text.HANDOFF_MESSAGES["en"]
    chat = await conversation(db)
    assert await db.fetchval("SELECT needs_human FROM conversations WHERE id = $1", chat["id"])
    # Handed over: the AI stays quiet in that chat.
    p.send(text(CUSTOMER, "What are your opening hours?"))
    assert await decisions(db, 2) == ["handoff", "needs_human"]
    assert len(said(p)) == 1
    # The inbox shows it; the operator gives the chat back, and the AI answers again.
    inbox = await api(client, admin_token, "GET", "/api/v1/conversations")
    assert [c["needs_human"] for c in inbox["items"]] == [True]
    await api(client, admin_token, "POST", f"/api/v1/conversations/{chat['id']}/ai/resume", 200)
    p.send(text(CUSTOMER, "What are your opening hours?"))
    assert (await replies(p, 2))[1] == "Monday to Friday, 9 to 6."


@pytest.mark.parametrize(
    ("language", "ask"),
    [
        ("en", "I want to talk to a real person please"),
        ("es", "Quiero hablar con un humano"),
        ("pt", "Posso falar com um atendente?"),
    ],
)
async def test_asking_for_a_person_hands_over_in_each_language(
    client: Client,
    admin_token: str,
    settings: Settings,
    sid: int,
    db: asyncpg.Connection,
    language: str,
    ask: str,
) -> None:
    await article(client, admin_token, "Humans", "A real person talks to a human agent.")
    p = phone(settings, sid)
    p.send(text(CUSTOMER, ask))
    assert (await replies(p, 1))[0] == ai_text.HANDOFF_MESSAGES[language]
    chat = await conversation(db)
    assert chat["needs_human"] is True or (
        await db.fetchval("SELECT needs_human FROM conversations WHERE id = $1", chat["id"])
    )
    row = await db.fetchrow("SELECT outcome, detail FROM ai_replies")
    assert row["outcome"] == "handoff"
    assert "asked for a person" in row["detail"]


# -- a model -----------------------------------------------------------------------------------


async def use_model(client: Client, token: str, llm: FakeLLM, **extra: Any) -> None:
    await api(
        client,
        token,
        "PATCH",
        "/api/v1/ai/settings",
        provider="openai",
        base_url=llm.base_url,
        model="fake-model",
        api_key="sk-test-key-123",
        **extra,
    )


async def test_the_model_gets_articles_history_and_personality(
    client: Client,
    admin_token: str,
    settings: Settings,
    sid: int,
    db: asyncpg.Connection,
    llm: FakeLLM,
) -> None:
    token = admin_token
    await use_model(client, token, llm)
    shown = await api(client, token, "GET", "/api/v1/ai/settings")
    assert shown["provider"] == "openai"
    assert shown["api_key_set"] is True
    assert "sk-test" not in str(shown)
    assert (await db.fetchval("SELECT api_key_sealed FROM ai_settings") or "") != "sk-test-key-123"
    persona = await api(
        client,
        token,
        "POST",
        "/api/v1/personalities",
        name="Lucía",
        instructions="Always greet the customer by name.",
        language="es",
        tone="warm",
        max_reply_chars=300,
    )
    await api(client, token, "PATCH", f"/api/v1/sessions/{sid}/ai", personality_id=persona["id"])
    await article(
        client,
        token,
        "Horario",
        "Abrimos de lunes a viernes de 9 a 18.",
        language="es",
        tags=["horario"],
    )
    llm.script(
        Reply("¡Hola! ¿En qué te ayudo?"),
        Reply("## Horario\n\n\n\nAbrimos **de lunes a viernes**.\n\n"),
    )
    p = phone(settings, sid)
    p.send(text(CUSTOMER, "Hola, buenas tardes"))
    await replies(p, 1)
    p.send(text(CUSTOMER, "¿Cuál es el horario?"))
    got = await replies(p, 2)
    assert got[1] == "*Horario*\n\nAbrimos *de lunes a viernes*."
    prompt = llm.prompts()[1]
    system = prompt[0]["content"]
    assert prompt[0]["role"] == "system"
    assert "Lucía" in system
    assert "Always greet the customer by name." in system
    assert "Spanish" in system
    assert "warm" in system
    assert "Abrimos de lunes a viernes de 9 a 18." in system  # the retrieved article
    assert [m["role"] for m in prompt[1:]] == ["user", "assistant", "user"]
    assert prompt[1]["content"] == "Hola, buenas tardes"  # the history
    assert prompt[-1]["content"] == "¿Cuál es el horario?"
    assert llm.requests[1]["authorization"] == "Bearer sk-test-key-123"
    assert llm.requests[1]["body"]["model"] == "fake-model"
    # The retrieval score is kept with each decision: none for the greeting, the article's
    # for the question it answers.
    scores = [
        r["score"] for r in await db.fetch("SELECT score FROM ai_replies ORDER BY created_at, ctid")
    ]
    assert scores[1] is not None
    assert scores[1] > 0
    assert scores[0] is None or scores[0] < scores[1]


async def test_model_failures_fall_back_to_the_kb_then_to_a_person(
    client: Client,
    admin_token: str,
    settings: Settings,
    sid: int,
    db: asyncpg.Connection,
    llm: FakeLLM,
) -> None:
    token = admin_token
    await use_model(client, token, llm, timeout_seconds=0.5)
    await article(client, token, "Opening hours", "Monday to Friday, 9 to 6.", tags=["hours"])
    llm.script(
        Reply(status=500),
        Reply(delay=2.0),
        Reply(status=429),
        Reply(f"Sorry, {HANDOFF}"),
    )
    p = phone(settings, sid)
    for n, (who, question) in enumerate(
        [
            ("+5215500000011", "What are your opening hours?"),  # 500: the kb answers
            ("+5215500000012", "opening hours?"),  # timeout: the kb answers
            ("+5215500000013", "Do you sell bicycles?"),  # 429, no article: a person
            ("+5215500000014", "What are your opening hours today?"),  # the model hands over
        ],
        start=1,
    ):
        p.send(text(who, question))
        await replies(p, n, timeout=30)
    got = said(p)
    assert got[:2] == ["Monday to Friday, 9 to 6."] * 2
    assert got[2:] == [ai_text.HANDOFF_MESSAGES["en"]] * 2
    rows = await db.fetch("SELECT outcome, provider, detail FROM ai_replies ORDER BY created_at")
    assert [r["outcome"] for r in rows] == ["answered", "answered", "handoff", "handoff"]
    assert "http_5xx" in rows[0]["detail"]
    assert "timeout" in rows[1]["detail"]
    assert "rate_limited" in rows[2]["detail"]
    assert rows[3]["provider"] == "openai"
    metrics = await (await client.get("/metrics")).text()
    for kind in ("http_5xx", "timeout", "rate_limited"):
        assert f'wagate_ai_errors_total{{kind="{kind}",provider="openai"}} 1.0' in metrics
    assert 'wagate_ai_request_seconds_count{outcome="ok",provider="kb"}' in metrics


# -- when it stays silent --------------------------------------------------------------------------


async def test_it_never_answers_what_it_must_not(
    client: Client, admin_token: str, settings: Settings, sid: int, db: asyncpg.Connection
) -> None:
    token = admin_token
    await article(client, token, "Opening hours", "Monday to Friday, 9 to 6.", tags=["hours"])
    p = phone(settings, sid)
    first = p.send(text(CUSTOMER, "opening hours?"))[0]
    await replies(p, 1)
    # The owner writing from the phone (or the Business app: a Coexistence echo is stored the
    # same way, sender_type owner), the customer's reaction and receipts, history, old messages,
    # a group, a status broadcast: none of them is answered.
    owner = text(CUSTOMER, "opening hours?", from_me=True, to=CUSTOMER)
    owner.from_ = None
    p.send(owner)
    p.send(
        text(CUSTOMER, "x", type="reaction", target_id=first, emoji="👍"),
        text("+5215500000021", "opening hours?", ts=int((time.time() - 3600) * 1000)),
        text("+5215500000022", "opening hours?", group="120363-999"),
        text("+5215500000023", "opening hours?", group="status@broadcast"),
    )
    p.receipt(SimReceipt(ids=[first], status="read", **{"from": CUSTOMER}))
    p.history(
        SimHistory(
            conversations=[
                {  # type: ignore[list-item]
                    "chat": "5215500000024@s.whatsapp.net",
                    "messages": [text("+5215500000024", "opening hours?")],
                }
            ]
        )
    )
    # A chat kept off for good.
    p.send(text("+5215500000025", "hello"))
    await replies(p, 2)  # no article says hello: handed over
    off = await conversation(db, "5215500000025@s.whatsapp.net")
    await api(client, token, "POST", f"/api/v1/conversations/{off['id']}/ai/resume", 200)
    await api(client, token, "PATCH", f"/api/v1/conversations/{off['id']}", no_ac_ai=True)
    p.send(text("+5215500000025", "opening hours?"))
    # Then a sentinel: once it is answered, everything before it was looked at.
    p.send(text("+5215500000099", "opening hours?"))
    got = await replies(p, 3)
    await asyncio.sleep(0.5)
    assert len(said(p)) == 3, got
    assert (
        await db.fetchval("SELECT count(*) FROM ai_replies WHERE conversation_id = $1", off["id"])
        == 1
    )
    stale = await db.fetchval(
        "SELECT r.outcome FROM ai_replies r JOIN messages m ON m.id = r.inbound_message_id "
        "JOIN conversations c ON c.id = m.conversation_id WHERE c.external_id = $1",
        "5215500000021@s.whatsapp.net",
    )
    assert stale == "stale"
    groups = await db.fetchval(
        "SELECT count(*) FROM ai_replies r JOIN conversations c ON c.id = r.conversation_id "
        "WHERE c.kind <> 'direct'"
    )
    assert groups == 0


async def test_an_operator_reply_pauses_the_ai_in_that_chat(
    client: Client, admin_token: str, settings: Settings, sid: int, db: asyncpg.Connection
) -> None:
    token = admin_token
    await article(client, token, "Opening hours", "Monday to Friday, 9 to 6.", tags=["hours"])
    p = phone(settings, sid)
    p.send(text(CUSTOMER, "opening hours?"))
    await replies(p, 1)
    chat = await conversation(db)
    await api(
        client,
        token,
        "POST",
        f"/api/v1/conversations/{chat['id']}/messages",
        202,
        text="Hi, this is Ana from the team.",
    )

    async def paused() -> Any:
        return await db.fetchval(
            "SELECT ai_paused_until FROM conversations WHERE id = $1", chat["id"]
        )

    await wait_for(paused, what="the AI paused")
    await replies(p, 2)
    p.send(text(CUSTOMER, "opening hours?"))
    assert (await decisions(db, 2))[1] == "paused"
    assert len(said(p)) == 2
    state = await api(client, token, "GET", f"/api/v1/conversations/{chat['id']}/ai")
    assert state["paused_until"] is not None


# -- limits ------------------------------------------------------------------------------------


async def test_one_reply_per_interval(
    client: Client, admin_token: str, settings: Settings, sid: int, db: asyncpg.Connection
) -> None:
    client.app[AI].limits = dataclass_replace(client.app[AI].limits, min_interval=5.0)
    await article(client, admin_token, "Opening hours", "Monday to Friday, 9 to 6.")
    p = phone(settings, sid)
    p.send(text(CUSTOMER, "opening hours?"), text(CUSTOMER, "opening hours please?"))
    assert await decisions(db, 2) == ["answered", "rate_limited"]
    await asyncio.sleep(0.3)
    assert len(said(p)) == 1


async def test_the_hourly_cap_per_chat(
    client: Client, admin_token: str, settings: Settings, sid: int, db: asyncpg.Connection
) -> None:
    client.app[AI].limits = dataclass_replace(
        client.app[AI].limits, min_interval=0.0, per_hour=2, loop_replies=100
    )
    await article(client, admin_token, "Opening hours", "Monday to Friday, 9 to 6.")
    p = phone(settings, sid)
    questions = ["opening hours?", "what are your hours?", "hours on monday?"]
    for n, question in enumerate(questions, start=1):
        p.send(text(CUSTOMER, question))
        await decisions(db, n)
    assert await decisions(db, 3) == ["answered", "answered", "rate_limited"]
    # Another chat has its own hour.
    p.send(text("+5215500000041", "opening hours?"))
    assert (await decisions(db, 4))[3] == "answered"
    await asyncio.sleep(0.3)
    assert len(said(p)) == 3


async def test_a_group_is_answered_only_when_switched_on_for_it(
    client: Client, admin_token: str, settings: Settings, sid: int, db: asyncpg.Connection
) -> None:
    await article(client, admin_token, "Opening hours", "Monday to Friday, 9 to 6.")
    p = phone(settings, sid)
    group = p.create_group("120363000000000088", "Buyers", [CUSTOMER])
    p.send(text(CUSTOMER, "opening hours?", group=group))
    chat = await conversation(db, f"{group}@g.us")
    # A sentinel in a 1:1 chat: once it is answered, the group message was looked at.
    p.send(text("+5215500000042", "opening hours?"))
    await replies(p, 1)
    await asyncio.sleep(0.3)
    assert len(said(p)) == 1
    assert not await db.fetchval("SELECT ai_active FROM conversations WHERE id = $1", chat["id"])
    await api(client, admin_token, "PATCH", f"/api/v1/conversations/{chat['id']}", ai_active=True)
    p.send(text(CUSTOMER, "and your opening hours on friday?", group=group))
    await replies(p, 2)
    sent = [m for m in p.sent() if m.get("message")]
    assert sent[-1]["to"].startswith(group), sent[-1]
    assert "Monday to Friday" in said(p)[1]


async def test_two_bots_talking_are_stopped_and_handed_over(
    client: Client, admin_token: str, settings: Settings, sid: int, db: asyncpg.Connection
) -> None:
    client.app[AI].limits = dataclass_replace(client.app[AI].limits, loop_replies=3)
    await article(client, admin_token, "Opening hours", "Monday to Friday, 9 to 6.")
    p = phone(settings, sid)
    questions = ["opening hours?", "and your hours?", "hours today?", "opening hours again?"]
    for n, question in enumerate(questions, start=1):
        p.send(text(CUSTOMER, question))  # a bot answering every answer at once
        if n <= 3:
            await replies(p, n)
    assert await decisions(db, 4) == ["answered"] * 3 + ["loop"]
    chat = await conversation(db)
    assert await db.fetchval("SELECT needs_human FROM conversations WHERE id = $1", chat["id"])
    p.send(text(CUSTOMER, "opening hours?"))
    assert (await decisions(db, 5))[4] == "needs_human"
    assert len(said(p)) == 3
    # The same message over and over is a loop as well.
    other = "+5215500000031"
    for _ in range(3):
        p.send(text(other, "opening hours?"))
    outcomes = await decisions(db, 8)
    assert "loop" in outcomes[5:]
    assert len(said(p)) <= 4


# -- exactly once ----------------------------------------------------------------------------------


async def test_a_restart_in_the_middle_answers_once(
    client: Client, admin_token: str, settings: Settings, sid: int, db: asyncpg.Connection
) -> None:
    await article(client, admin_token, "Opening hours", "Monday to Friday, 9 to 6.")
    first = client.app[AI]
    crashed = asyncio.Event()

    async def crash(*_args: Any) -> None:
        crashed.set()
        raise asyncio.CancelledError  # the process dies before the commit

    first._commit = crash  # type: ignore[method-assign]
    p = phone(settings, sid)
    p.send(text(CUSTOMER, "opening hours?"))
    await asyncio.wait_for(crashed.wait(), 20)
    await first.stop()
    assert await db.fetchval("SELECT count(*) FROM messages WHERE sender_type = 'ai'") == 0

    def restart() -> AiResponder:
        return AiResponder(
            first.pool,
            client.app[DATABASE_URL],
            client.app[BUS],
            settings,
            SecretBox(settings.resolved_secret_key()),
            first.openai._http,
            request=client.app[SESSIONS].request,
        )

    second = restart()
    await second.start()
    try:
        await replies(p, 1)
        # The cursor is lost as well (a restore, a bug): the message is still answered once.
        await second.stop()
        await db.execute("UPDATE ai_cursors SET last_seq = 0")
        third = restart()
        await third.start()
        try:
            p.send(text("+5215500000041", "opening hours?"))
            await replies(p, 2)
            await asyncio.sleep(0.5)
            assert said(p) == ["Monday to Friday, 9 to 6."] * 2
            assert await db.fetchval("SELECT count(*) FROM messages WHERE sender_type = 'ai'") == 2
        finally:
            await third.stop()
    finally:
        await second.stop()


def dataclass_replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


# -- the formatter -------------------------------------------------------------------------------


def test_the_formatter_trims_marks_up_caps_and_splits() -> None:
    out = ai_text.format_reply(
        "  # Title\r\n\r\n\r\n\r\nSome **bold** and _italic_ and __strong__.\n- one\n- two  \n",
        max_chars=500,
        split_chars=500,
    )
    assert out == ["*Title*\n\nSome *bold* and _italic_ and *strong*.\n• one\n• two"]
    # WhatsApp's own markup (what the prompt asks for, what articles are written in) is kept.
    whatsapp = "Our *opening hours* are _9 to 5_, ~not weekends~."
    assert ai_text.format_reply(whatsapp, max_chars=500, split_chars=500) == [whatsapp]
    long = " ".join(f"Sentence number {i} is here." for i in range(100))
    parts = ai_text.format_reply(long, max_chars=1000, split_chars=300)
    assert all(len(part) <= 300 for part in parts)
    assert sum(len(part) + 1 for part in parts) <= 1001
    assert all(part.endswith(".") for part in parts)
    assert ai_text.format_reply(" \n\n ", max_chars=100, split_chars=100) == []
    assert ai_text.format_reply("[docs](https://x.example/a)", max_chars=100, split_chars=100) == [
        "docs (https://x.example/a)"
    ]


def test_language_and_handoff_phrases() -> None:
    assert ai_text.detect_language("What time do you open?") == "en"
    assert ai_text.detect_language("¿A qué hora abren?") == "es"
    assert ai_text.detect_language("Qual é o horário? Não sei") == "pt"
    assert ai_text.asks_for_person("quiero hablar con una persona") == "hablar con una persona"
    assert ai_text.asks_for_person("Falar com alguém, por favor") == "falar com alguem"
    assert ai_text.asks_for_person("a HUMAN please") == "a human please"
    assert ai_text.asks_for_person("Can I speak to an agent?") == "speak to an agent"
    assert ai_text.asks_for_person("Pásame con un asesor") == "pasame con un asesor"
    assert ai_text.asks_for_person("Preciso de um atendente") == "preciso de um atendente"
    # Words about people that are not a request for one.
    for not_a_request in (
        "humanitarian aid for my personal account",
        "Do you have a job in human resources?",
        "The operator of the machine says error 5",
        "What are your customer service hours?",
        "Mesa para una persona, por favor",
        "El representante legal firma el contrato",
        "O atendente da loja foi ótimo",
    ):
        assert ai_text.asks_for_person(not_a_request) is None, not_a_request


async def test_a_chat_takes_only_its_owners_personality(
    client: Client, admin_token: str, settings: Settings, sid: int, db: asyncpg.Connection
) -> None:
    phone(settings, sid).send(text(CUSTOMER, "Hello"))
    chat = await conversation(db)
    mine = await api(client, admin_token, "POST", "/api/v1/personalities", name="Ana")
    await api(
        client,
        admin_token,
        "POST",
        "/api/v1/users",
        email="other@example.com",
        password="password-123",
    )
    resp = await client.post(
        "/api/v1/auth/login", json={"email": "other@example.com", "password": "password-123"}
    )
    other = (await resp.json())["access_token"]
    theirs = await api(client, other, "POST", "/api/v1/personalities", name="Not yours")

    path = f"/api/v1/conversations/{chat['id']}"
    for wrong in (theirs["id"], 987654321):
        refused = await api(client, admin_token, "PATCH", path, 422, personality_id=wrong)
        assert refused["error"]["code"] == "unknown_personality"
    assert (
        await db.fetchval("SELECT personality_id FROM conversations WHERE id = $1", chat["id"])
        is None
    )
    taken = await api(client, admin_token, "PATCH", path, personality_id=mine["id"])
    assert taken["personality_id"] == mine["id"]
