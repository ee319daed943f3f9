"""History sync import (db.history): COPY + one INSERT per chunk, idempotent, never noisy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from db import conversations as conversations_db
from db import messages as messages_db
from db import pool as pool_db
from db import sessions as sessions_db
from db import users as users_db
from db.history import (
    HistoryConversationRow,
    HistoryImportResult,
    HistoryMessageRow,
    import_history,
)

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
ALICE = "5215550000001@s.whatsapp.net"
BOB = "5215550000002@s.whatsapp.net"
GROUP = "120363000000000001@g.us"


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def chat(
    external_id: str,
    *,
    name: str | None = None,
    lid: str | None = None,
    unread: int = 0,
    last: datetime | None = None,
) -> HistoryConversationRow:
    return HistoryConversationRow(
        external_id=external_id,
        lid=lid,
        kind="group" if external_id.endswith("@g.us") else "direct",
        contact_name=name,
        wa_user_id=external_id.split("@")[0] if external_id.endswith("@s.whatsapp.net") else None,
        unread_count=unread,
        last_message_at=last,
    )


def message(
    external_id: str, wa_id: str, minute: int, *, text: str = "hola", raw: Any = None
) -> HistoryMessageRow:
    return HistoryMessageRow(
        external_id=external_id,
        wa_message_id=wa_id,
        direction="inbound",
        sender_type="user",
        sender_jid=external_id,
        sender_name="Alice",
        message_type="text",
        text_content=text,
        media_sha256=None,
        media_mime=None,
        media_size=None,
        media_filename=None,
        media_status=None,
        quoted_wa_message_id=None,
        raw=raw if raw is not None else {"id": wa_id},
        status="received",
        sent_at=at(minute),
    )


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection: asyncpg.Connection = await asyncpg.connect(db_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def session_id(conn: asyncpg.Connection) -> int:
    user = await users_db.create(conn, email="owner@example.com", password_hash="x")
    assert user is not None
    session = await sessions_db.create(conn, owner_id=user.id, name="main")
    return session.id


async def run(
    conn: asyncpg.Connection,
    session_id: int,
    chats: list[HistoryConversationRow],
    msgs: list[HistoryMessageRow],
) -> HistoryImportResult:
    async with conn.transaction():
        return await import_history(conn, session_id, chats, msgs)


def live_row(session_id: int, conversation_id: int, wa_id: str) -> messages_db.NewMessage:
    return messages_db.NewMessage(
        session_id=session_id,
        conversation_id=conversation_id,
        wa_message_id=wa_id,
        direction="inbound",
        sender_type="user",
        sender_jid=ALICE,
        sender_name="Alice",
        message_type="text",
        text_content="live text",
        media_sha256=None,
        media_mime=None,
        media_size=None,
        media_filename=None,
        media_status=None,
        quoted_wa_message_id=None,
        raw=None,
        status="read",
        from_history=False,
        sent_at=at(1),
    )


async def live_chat(
    conn: asyncpg.Connection,
    session_id: int,
    external_id: str,
    *,
    name: str | None,
    wa_user_id: str | None,
    lid: str | None,
    last: datetime,
    unread: int = 0,
) -> int:
    """A chat as the live path stores it."""
    touch = conversations_db.ChatTouch(
        external_id=external_id,
        kind="direct",
        contact_name=name,
        wa_user_id=wa_user_id,
        lid=lid,
        last_message_at=last,
        unread_inc=unread,
    )
    ids, _ = await conversations_db.upsert_many(conn, session_id, [touch])
    return ids[external_id]


async def live_message(
    conn: asyncpg.Connection, session_id: int, conversation_id: int, wa_id: str
) -> int:
    """A message as the live path stores it."""
    new = await messages_db.insert_many(
        conn, session_id, [live_row(session_id, conversation_id, wa_id)]
    )
    return new[wa_id]


async def wait_until_waiting(observer: asyncpg.Connection, waiter: asyncpg.Connection) -> None:
    """Until `waiter`'s backend waits for a lock."""
    pid = waiter.get_server_pid()
    for _ in range(500):
        state = await observer.fetchval(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
        )
        if state == "Lock":
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the import never waited")


async def one(conn: asyncpg.Connection, sql: str, *args: Any) -> asyncpg.Record:
    row = await conn.fetchrow(sql, *args)
    assert row is not None
    return row


async def snapshot(conn: asyncpg.Connection) -> tuple[list[Any], list[Any]]:
    convs = await conn.fetch("SELECT * FROM conversations ORDER BY id")
    msgs = await conn.fetch("SELECT * FROM messages ORDER BY id")
    return [tuple(r) for r in convs], [tuple(r) for r in msgs]


async def test_chunks_import_once_and_a_repeated_chunk_changes_nothing(
    conn: asyncpg.Connection, session_id: int
) -> None:
    chunk1 = (
        [chat(ALICE, name="Alice", unread=2), chat(GROUP, name="Team")],
        [message(ALICE, f"A{i}", i) for i in range(5)]
        + [message(GROUP, f"G{i}", 10 + i) for i in range(3)],
    )
    chunk2 = ([chat(ALICE, name="Alice")], [message(ALICE, f"A{i}", i) for i in range(5, 9)])
    chunk3 = ([chat(BOB, name="Bob", unread=1)], [message(BOB, "B0", 30)])

    first = await run(conn, session_id, *chunk1)
    assert (first.inserted, first.skipped) == (8, 0)
    second = await run(conn, session_id, *chunk2)
    assert (second.inserted, second.skipped) == (4, 0)
    assert second.conversations[ALICE] == first.conversations[ALICE]
    await run(conn, session_id, *chunk3)
    before = await snapshot(conn)

    again = await run(conn, session_id, *chunk2)
    assert (again.inserted, again.skipped) == (0, 4)
    assert again.conversations == second.conversations
    assert await snapshot(conn) == before  # same rows, same ids, not even updated_at moved

    rows = await conn.fetch(
        "SELECT external_id, kind, contact_name, unread_count, last_message_at, started_at, "
        "(SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS n "
        "FROM conversations c ORDER BY external_id"
    )
    assert [tuple(r) for r in rows] == [
        (GROUP, "group", "Team", 0, at(12), at(10), 3),
        (ALICE, "direct", "Alice", 2, at(8), at(0), 9),
        (BOB, "direct", "Bob", 1, at(30), at(30), 1),
    ]
    assert await conn.fetchval("SELECT bool_and(from_history) FROM messages") is True


async def test_existing_chat_keeps_unread_and_name_and_only_moves_forward(
    conn: asyncpg.Connection, session_id: int
) -> None:
    live_id = await live_chat(
        conn,
        session_id,
        ALICE,
        name="Alice (live)",
        wa_user_id=None,
        lid=None,
        last=at(100),
        unread=3,
    )
    older = await run(
        conn,
        session_id,
        [chat(ALICE, name="Alice (old)", lid="99@lid", unread=40, last=at(50))],
        [message(ALICE, "A1", 20), message(ALICE, "A2", 60)],
    )
    assert older.conversations == {ALICE: live_id}
    row = await one(conn, "SELECT * FROM conversations WHERE id = $1", live_id)
    assert row["unread_count"] == 3
    assert row["contact_name"] == "Alice (live)"
    assert row["last_message_at"] == at(100)  # older history does not move it back
    assert row["started_at"] == at(20)  # the chat began with its oldest known message
    assert row["lid"] == "99@lid"  # gaps are filled
    assert row["wa_user_id"] == "5215550000001"

    await run(conn, session_id, [chat(ALICE, unread=5)], [message(ALICE, "A3", 200)])
    row = await one(conn, "SELECT * FROM conversations WHERE id = $1", live_id)
    assert (row["last_message_at"], row["unread_count"]) == (at(200), 3)
    assert await conn.fetchval("SELECT count(*) FROM conversations") == 1


async def test_a_chat_known_by_its_lid_is_the_same_chat(
    conn: asyncpg.Connection, session_id: int
) -> None:
    by_lid = await live_chat(
        conn, session_id, "777@lid", name=None, wa_user_id=None, lid="777@lid", last=at(0)
    )
    result = await run(
        conn,
        session_id,
        [chat(ALICE, name="Alice", lid="777@lid")],
        [message(ALICE, "A1", 5)],
    )
    assert result.conversations == {ALICE: by_lid}
    row = await one(conn, "SELECT * FROM conversations WHERE id = $1", by_lid)
    assert (row["contact_name"], row["wa_user_id"], row["last_message_at"]) == (
        "Alice",
        "5215550000001",
        at(5),
    )
    # A chat named by a bare LID is the chat that holds that LID beside its phone JID.
    bob = await run(conn, session_id, [chat(BOB, lid="888@lid")], [message(BOB, "B1", 6)])
    again = await run(conn, session_id, [chat("888@lid")], [message("888@lid", "B2", 7)])
    assert again.conversations == {"888@lid": bob.conversations[BOB]}
    assert await conn.fetchval("SELECT count(*) FROM conversations") == 2


async def test_duplicate_ids_within_a_chunk_are_stored_once(
    conn: asyncpg.Connection, session_id: int
) -> None:
    result = await run(
        conn,
        session_id,
        [chat(ALICE), chat(ALICE, name="Alice")],  # a chat named twice is one chat, too
        [message(ALICE, "A1", 1), message(ALICE, "A1", 1), message(ALICE, "A2", 2)],
    )
    assert (result.inserted, result.skipped) == (2, 1)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 2
    assert await conn.fetchval("SELECT contact_name FROM conversations") == "Alice"


async def test_a_message_stored_live_is_not_duplicated_or_changed(
    conn: asyncpg.Connection, session_id: int
) -> None:
    async with conn.transaction():
        conversation_id = await live_chat(
            conn,
            session_id,
            ALICE,
            name="Alice",
            wa_user_id="5215550000001",
            lid=None,
            last=at(1),
            unread=1,
        )
        live_id = await live_message(conn, session_id, conversation_id, "A1")
    result = await run(
        conn,
        session_id,
        [chat(ALICE)],
        [message(ALICE, "A1", 1, text="history text"), message(ALICE, "A0", 0)],
    )
    assert (result.inserted, result.skipped) == (1, 1)
    row = await one(conn, "SELECT * FROM messages WHERE wa_message_id = 'A1'")
    assert (row["id"], row["text_content"], row["status"], row["from_history"]) == (
        live_id,
        "live text",
        "read",
        False,
    )
    assert await conn.fetchval("SELECT from_history FROM messages WHERE wa_message_id = 'A0'")
    assert await conn.fetchval("SELECT unread_count FROM conversations") == 1


async def test_raw_jsonb_round_trips_with_and_without_the_pools_codec(
    conn: asyncpg.Connection, session_id: int, db_url: str
) -> None:
    raw = {
        "key": {"id": "A1", "fromMe": False},
        "message": {"conversation": "¿qué tal? 👋", "n": [1, 2.5, None, True]},
        "nul": "a\x00b",
    }
    media = HistoryMessageRow(
        **{
            **message(ALICE, "A2", 2).__dict__,
            "message_type": "image",
            "text_content": "caption\x00",
            "media_sha256": "ab" * 32,
            "media_mime": "image/jpeg",
            "media_size": 123_456,
            "media_filename": "photo.jpg",
            "media_status": "pending",
            "quoted_wa_message_id": "A1",
            "raw": None,
        }
    )
    await run(conn, session_id, [chat(ALICE)], [message(ALICE, "A1", 1, raw=raw)])
    pooled = await pool_db.connect(db_url)  # jsonb codec installed, as in the gateway
    try:
        async with pooled.transaction():
            result = await import_history(
                pooled, session_id, [chat(ALICE)], [message(ALICE, "A3", 3, raw=raw), media]
            )
        assert result.inserted == 2
        stored = await pooled.fetch("SELECT wa_message_id, raw FROM messages ORDER BY sent_at")
    finally:
        await pooled.close()
    expected = {**raw, "nul": "ab"}  # PostgreSQL can not store NUL; it is dropped
    assert [(r["wa_message_id"], r["raw"]) for r in stored] == [
        ("A1", expected),
        ("A2", None),
        ("A3", expected),
    ]
    row = await one(conn, "SELECT * FROM messages WHERE wa_message_id = 'A2'")
    assert (row["text_content"], row["media_size"], row["media_status"]) == (
        "caption",
        123_456,
        "pending",
    )
    assert (row["quoted_wa_message_id"], row["from_history"]) == ("A1", True)


async def test_a_message_of_a_missing_chat_is_refused_before_anything_is_written(
    conn: asyncpg.Connection, session_id: int
) -> None:
    with pytest.raises(ValueError, match="not in the chunk"):
        await run(conn, session_id, [chat(ALICE)], [message(ALICE, "A1", 1), message(BOB, "B1", 2)])
    assert await conn.fetchval("SELECT count(*) FROM conversations") == 0
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


async def test_two_chunks_in_one_transaction_and_the_transaction_is_required(
    conn: asyncpg.Connection, session_id: int
) -> None:
    async with conn.transaction():
        await import_history(conn, session_id, [chat(ALICE)], [message(ALICE, "A1", 1)])
        await import_history(conn, session_id, [chat(BOB)], [message(BOB, "B1", 1)])
    assert await conn.fetchval("SELECT count(*) FROM messages") == 2
    with pytest.raises(RuntimeError, match="transaction"):
        await import_history(conn, session_id, [chat(ALICE)], [])


async def test_a_chunk_gives_way_to_a_live_write_it_would_deadlock_with(
    conn: asyncpg.Connection, session_id: int, db_url: str
) -> None:
    alice = await live_chat(
        conn, session_id, ALICE, name="Alice", wa_user_id=None, lid=None, last=at(0)
    )
    live = await pool_db.connect(db_url)
    try:
        # A live frame: Alice's message "M" is stored (not yet committed) ...
        live_tx = live.transaction()
        await live_tx.start()
        await live_message(live, session_id, alice, "M")
        # ... while a history chunk creates Bob's chat and needs "M" too: it waits for the frame.
        chunk = asyncio.create_task(
            run(
                conn,
                session_id,
                [chat(BOB), chat(ALICE)],
                [message(BOB, "B1", 1), message(ALICE, "M", 2)],
            )
        )
        await wait_until_waiting(live, conn)
        # The frame's next message is Bob's: it needs the chunk's new chat. A deadlock, which the
        # chunk resolves by giving way within its 250 ms lock timeout (PostgreSQL looks after 1 s).
        started = asyncio.get_running_loop().time()
        bob = await live_chat(
            live, session_id, BOB, name=None, wa_user_id=None, lid=None, last=at(3)
        )
        await live_tx.commit()
        assert asyncio.get_running_loop().time() - started < 0.9
        with pytest.raises(asyncpg.LockNotAvailableError):
            await chunk
    finally:
        await live.close()
    retried = await run(
        conn, session_id, [chat(BOB), chat(ALICE)], [message(BOB, "B1", 1), message(ALICE, "M", 2)]
    )
    assert retried.conversations == {BOB: bob, ALICE: alice}
    assert (retried.inserted, retried.skipped) == (1, 1)
    assert (
        await conn.fetchval("SELECT from_history FROM messages WHERE wa_message_id = 'M'") is False
    )
