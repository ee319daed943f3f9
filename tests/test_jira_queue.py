"""The Jira bridge's job queue: one job per chat at a time, oldest first; a chat's next job
taken straight after its previous one; jobs of a stopped bridge back in the queue at once."""

from __future__ import annotations

import asyncpg

from db import jira as jira_db
from db import outbox


async def _jobs(conn: asyncpg.Connection, user: int, lanes: list[str]) -> list[int]:
    ids = []
    for n, lane in enumerate(lanes):
        item = await outbox.enqueue(
            conn, "jira_message", {"user": user, "lane": lane, "message_id": n}
        )
        assert item is not None
        ids.append(item)
    return ids


async def test_claims_take_each_lanes_head_and_the_next_only_after_it(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        user = await conn.fetchval(
            "INSERT INTO users (email, password_hash) VALUES ('q@x', 'x') RETURNING id"
        )
        a1, b1, a2, c1, a3 = await _jobs(conn, user, ["a", "b", "a", "c", "a"])
        got = await jira_db.claim(conn, 10, 60)
        assert [i.id for i in got] == [a1, b1, c1]
        assert await jira_db.claim(conn, 10, 60) == []
        # The lane's next job waits for the one running.
        assert await jira_db.claim_next(conn, "a", 60) is None
        await outbox.done(conn, a1)
        following = await jira_db.claim_next(conn, "a", 60)
        assert following is not None
        assert following.id == a2
        assert following.attempts == 1
        # Taken: neither claim hands it out again.
        assert await jira_db.claim_next(conn, "a", 60) is None
        assert await jira_db.claim(conn, 10, 60) == []
        # A job not due yet holds its lane back.
        await outbox.retry(conn, a2, "later", await conn.fetchval("SELECT now() + interval '1h'"))
        assert await jira_db.claim_next(conn, "a", 60) is None
        assert await jira_db.claim(conn, 10, 60) == []
        # A stopped bridge releases what it held: due again at once, the attempt still counted
        # (its retry looks for a comment the interrupted attempt may have made).
        await jira_db.release(conn, [b1, c1])
        again = await jira_db.claim(conn, 10, 60)
        assert [(i.id, i.attempts) for i in again] == [(b1, 2), (c1, 2)]
        # A lapsed lease (a crashed process) is taken over by the claim.
        await conn.execute(
            "UPDATE outbox SET locked_until = now() - interval '1s' WHERE id = $1", b1
        )
        assert [i.id for i in await jira_db.claim(conn, 10, 60)] == [b1]
        # Rejected credentials: nothing of that operator is claimed.
        await conn.execute(
            "INSERT INTO jira_connections (user_id, base_url, auth_kind, token_sealed, "
            "project_key, webhook_token_hash, webhook_token_sealed, state) "
            "VALUES ($1, 'http://x', 'pat', 't', 'SUP', 'h', 's', 'rejected')",
            user,
        )
        await outbox.done(conn, b1)
        await outbox.done(conn, c1)
        await conn.execute("UPDATE outbox SET next_attempt_at = now() WHERE id = $1", a2)
        assert await jira_db.claim(conn, 10, 60) == []
        assert await jira_db.claim_next(conn, "a", 60) is None
        assert a3 > a2
    finally:
        await conn.close()
