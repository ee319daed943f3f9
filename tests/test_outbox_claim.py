"""Outbox items a gateway node was running when it died or left are taken by another node at
once (the node is gone), not after the item's own lock expires; a live node's are left alone."""

from __future__ import annotations

import json

import asyncpg

from db import outbox

NODE_TTL = 15.0


async def running_item(conn: asyncpg.Connection, locked_by: str | None) -> int:
    return int(
        await conn.fetchval(
            "INSERT INTO outbox (kind, payload, state, attempts, locked_until, locked_by) "
            "VALUES ('send_text', $1, 'running', 1, now() + interval '60 seconds', $2) "
            "RETURNING id",
            json.dumps({"message_id": 1}),
            locked_by,
        )
    )


async def test_a_dead_or_departed_nodes_running_items_are_taken_at_once(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO gateway_nodes (node_id, hostname, pid, heartbeat_at) VALUES "
            "('alive', 'h', 1, now()), ('me', 'h', 2, now()), "
            "('dead', 'h', 3, now() - interval '40 seconds')"
        )
        of_alive = await running_item(conn, "alive")
        of_me = await running_item(conn, "me")
        of_dead = await running_item(conn, "dead")
        of_departed = await running_item(conn, "left-the-cluster")  # its row was deleted
        of_nobody = await running_item(conn, None)  # a single-process gateway's lock

        # Without the node rule only expired locks count: nothing here.
        assert await outbox.claim(conn, ["send_text"], 20, 60, node_id="me") == []

        taken = await outbox.claim(conn, ["send_text"], 20, 60, node_id="me", node_ttl=NODE_TTL)
        assert sorted(item.id for item in taken) == sorted([of_dead, of_departed])
        assert all(item.attempts == 2 for item in taken)
        rows = {
            r["id"]: (r["state"], r["locked_by"])
            for r in await conn.fetch("SELECT id, state, locked_by FROM outbox")
        }
        assert rows[of_dead] == ("running", "me")
        assert rows[of_departed] == ("running", "me")
        assert rows[of_alive] == ("running", "alive")
        assert rows[of_me] == ("running", "me")
        assert rows[of_nobody] == ("running", None)

        # Taken once: a second round (or another node) does not take them again.
        assert (
            await outbox.claim(conn, ["send_text"], 20, 60, node_id="me", node_ttl=NODE_TTL) == []
        )
        assert (
            await outbox.claim(conn, ["send_text"], 20, 60, node_id="alive", node_ttl=NODE_TTL)
            == []
        )
    finally:
        await conn.close()
