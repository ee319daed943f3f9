"""SIGKILL a real gateway (`run.py serve`) after it answered Meta's webhook 200 and before it
processed the event: after a restart the event is processed, exactly once.

To hold the gateway between the two, this test locks the `messages` table against inserts: the
webhook's commit (into `cloud_webhook_events`) goes through, the processor claims the event and
then waits for the lock inside its transaction. The gateway is killed while it waits."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.fakes import graph as g
from tests.fakes.graph import emit, inbound, msg
from tests.procs import Server, free_port

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def gateway(tmp_path: Path, db_url: str) -> Iterator[Server]:
    srv = Server(
        tmp_path / "var",
        free_port(),
        WAGATE_DATABASE_URL=db_url,
        WAGATE_DRIVER="fake",
        WAGATE_ADMIN_PASSWORD="admin-password-1",
        WAGATE_LOG_LEVEL="warning",
        WAGATE_CLOUD_PHONE_NUMBER_ID=g.PHONE_NUMBER_ID,
        WAGATE_CLOUD_WABA_ID=g.WABA_ID,
        WAGATE_CLOUD_ACCESS_TOKEN=g.TOKEN,
        WAGATE_CLOUD_APP_SECRET=g.APP_SECRET,
        WAGATE_CLOUD_VERIFY_TOKEN=g.VERIFY_TOKEN,
        WAGATE_CLOUD_GRAPH_URL="http://127.0.0.1:9",
    )
    yield srv
    srv.kill()


async def until(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_sigkill_after_the_200_and_before_processing(gateway: Server, db_url: str) -> None:
    gateway.start()
    payload = inbound(msg("text", {"body": "said just before the crash"}))
    watcher = await asyncpg.connect(db_url)
    holder = await asyncpg.connect(db_url)
    try:
        others = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid NOT IN ($1, $2)"
        )
        pids = (watcher.get_server_pid(), holder.get_server_pid())
        lock = holder.transaction()
        await lock.start()
        # Inserts into messages wait; reads and the webhook inbox do not.
        await holder.execute("LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE")
        async with aiohttp.ClientSession(base_url=gateway.base) as http:
            resp = await emit(http, payload)
            assert resp.status == 200, await resp.text()
            assert await resp.json() == {"success": True}

        # The event is committed, and the processor has taken it and waits for the lock.
        async def processor_waiting() -> bool:
            waiting = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query ILIKE '%messages%'"
            )
            return bool(waiting)

        await until(processor_waiting, "the processor blocked on messages")
        row = await watcher.fetchrow("SELECT state, session_id FROM cloud_webhook_events")
        assert row is not None
        assert (row["state"], row["session_id"] is not None) == ("pending", True)
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGKILL)
        gateway.proc.wait(10)
        gateway.reap()
        await lock.rollback()

        # The dead gateway's connections go (the one that waited finds its client gone as soon
        # as it answers, and its transaction is rolled back): nothing of it was stored.
        async def gone() -> bool:
            return await watcher.fetchval(others, *pids) == 0

        await until(gone, "the killed gateway's connections to end", timeout=30)
        assert await watcher.fetchval("SELECT count(*) FROM messages") == 0
        assert await watcher.fetchval("SELECT state FROM cloud_webhook_events") == "pending"

        gateway.stdout.clear()
        gateway.start()

        async def processed() -> bool:
            state = await watcher.fetchval("SELECT state FROM cloud_webhook_events")
            return state == "done"

        await until(processed, "the replayed event")
        # Meta delivers at least once: the same webhook again stores nothing more.
        async with aiohttp.ClientSession(base_url=gateway.base) as http:
            assert (await emit(http, payload)).status == 200

        async def both_done() -> bool:
            rows = await watcher.fetch("SELECT state FROM cloud_webhook_events ORDER BY id")
            return [r["state"] for r in rows] == ["done", "done"]

        await until(both_done, "the redelivery processed")
        rows = await watcher.fetch("SELECT text_content, direction FROM messages")
        assert [dict(r) for r in rows] == [
            {"text_content": "said just before the crash", "direction": "inbound"}
        ]
        assert await watcher.fetchval("SELECT unread_count FROM conversations") == 1
    finally:
        await holder.close()
        await watcher.close()
