"""Housekeeping deletes only finished bookkeeping rows past their age, in batches, and never
a message, a waiting job or a failed one."""

from __future__ import annotations

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from gateway import housekeeping
from gateway.housekeeping import Housekeeper
from gateway.keys import POOL
from gateway.metrics import Metrics
from tests.sessions_helpers import Client


async def test_old_finished_rows_go_and_everything_else_stays(
    client: Client, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        admin = await conn.fetchval("SELECT id FROM users ORDER BY id LIMIT 1")
        old, new = "now() - interval '20 days'", "now() - interval '2 days'"
        for state, done_at, key in (
            ("done", old, "old-done-1"),
            ("done", old, "old-done-2"),
            ("done", old, "old-done-3"),
            ("done", new, "new-done"),
            ("failed", old, "old-failed"),
            ("pending", old, "old-pending"),
        ):
            await conn.execute(
                f"INSERT INTO outbox (kind, payload, dedupe_key, state, done_at, created_at) "
                f"VALUES ('send', '{{}}', $1, $2, {done_at}, {done_at})",
                key,
                state,
            )
        for state, at in (
            ("done", old),
            ("unknown_number", old),
            ("failed", old),
            ("pending", old),
            ("done", new),
        ):
            await conn.execute(
                f"INSERT INTO cloud_webhook_events (received_at, event_at, body, state) "
                f"VALUES ({at}, {at}, '{{}}', $1)",
                state,
            )
        await conn.execute(
            f"INSERT INTO jira_webhook_deliveries (user_id, identifier, received_at) "
            f"VALUES ($1, 'old', {old}), ($1, 'new', {new})",
            admin,
        )
        messages_before = await conn.fetchval("SELECT count(*) FROM messages")

        metrics = Metrics(CollectorRegistry(), "test")
        monkeypatch.setattr(housekeeping, "BATCH", 2)
        keeper = Housekeeper(_pool(client), 14, metrics.housekeeping_deleted)
        counts = await keeper.run_once()
        assert counts == {"outbox": 3, "cloud_webhook_events": 2, "jira_webhook_deliveries": 1}
        left = await conn.fetch("SELECT dedupe_key FROM outbox ORDER BY dedupe_key")
        assert [r["dedupe_key"] for r in left] == ["new-done", "old-failed", "old-pending"]
        states = await conn.fetch("SELECT state FROM cloud_webhook_events ORDER BY state")
        assert [r["state"] for r in states] == ["done", "failed", "pending"]
        ids = await conn.fetch("SELECT identifier FROM jira_webhook_deliveries")
        assert [r["identifier"] for r in ids] == ["new"]
        assert await conn.fetchval("SELECT count(*) FROM messages") == messages_before
        assert metrics.housekeeping_deleted.labels("outbox")._value.get() == 3
        # Again: nothing more to do.
        assert set((await keeper.run_once()).values()) == {0}
        # 0 days keeps everything: the task is never started.
        idle = Housekeeper(_pool(client), 0)
        idle.start()
        assert idle._task is None
    finally:
        await conn.close()


def _pool(client: Client) -> asyncpg.Pool:
    return client.server.app[POOL]
