"""Meta's webhook behind a load balancer: two gateway nodes on one database, every delivery
to either node, redeliveries to the other one, out of order and at once. One number, every
message stored once, in timestamp order, each announced once; statuses end where they should."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.app import create_app
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login
from tests.fakes.graph import FakeGraph, emit, inbound, msg, status, statuses
from tests.sessions_helpers import Client, wait_for
from tests.test_cloud_inbound import cloud_settings, outbound_row

pytestmark = pytest.mark.timeout(120)

CUSTOMERS = 10
PER_CUSTOMER = 20


@pytest.fixture
async def fake_graph() -> AsyncIterator[FakeGraph]:
    fake = FakeGraph()
    await fake.start()
    yield fake
    await fake.stop()


async def test_webhooks_spread_over_two_nodes_store_everything_once_in_order(
    tmp_path: Path, db_url: str, fake_graph: FakeGraph, aiohttp_client: Any
) -> None:
    nodes: list[Client] = [
        await aiohttp_client(
            create_app(cloud_settings(tmp_path / name, db_url, fake_graph.base, lease_seconds=3.0))
        )
        for name in ("a", "b")
    ]
    token = await login(nodes[0], ADMIN_EMAIL, ADMIN_PASSWORD)
    resp = await nodes[1].get("/api/v1/sessions", headers=bearer(token))
    cloud = [s for s in (await resp.json())["items"] if s["channel"] == "cloud"]
    assert len(cloud) == 1, "both nodes bootstrapped the number from the same settings: once"
    sid = int(cloud[0]["id"])

    db = await asyncpg.connect(db_url)
    try:
        sent_by_us = [await outbound_row(db, sid, f"wamid.OUT{i}") for i in range(5)]
        rng = random.Random(7)
        t0 = 1_700_000_000
        deliveries: list[dict[str, Any]] = []
        expected: dict[str, list[str]] = {}
        for c in range(CUSTOMERS):
            wa_id = f"1650555{c:04d}"
            bodies = [f"c{c} m{i}" for i in range(PER_CUSTOMER)]
            expected[wa_id] = bodies
            items = [
                msg("text", {"body": body}, ts=t0 + i, **{"from": wa_id})
                for i, body in enumerate(bodies)
            ]
            for start in range(0, PER_CUSTOMER, 4):
                deliveries.append(inbound(*items[start : start + 4], name=f"C{c}", wa_id=wa_id))
        for i, _ in enumerate(sent_by_us):
            wamid = f"wamid.OUT{i}"
            deliveries += [
                statuses(status(wamid, "sent", ts=t0 + 1)),
                statuses(status(wamid, "delivered", ts=t0 + 2)),
                statuses(status(wamid, "read", ts=t0 + 3)),
            ]
        # Meta redelivers about a third of them; a balancer sends each copy anywhere.
        copies = deliveries + rng.sample(deliveries, len(deliveries) // 3)
        rng.shuffle(copies)
        received = {0: 0, 1: 0}

        async def deliver(payload: dict[str, Any]) -> None:
            which = rng.randrange(2)
            answer = await emit(nodes[which], payload)
            assert answer.status == 200, await answer.text()
            received[which] += 1

        for start in range(0, len(copies), 16):  # 16 requests in flight at a time
            await asyncio.gather(*(deliver(p) for p in copies[start : start + 16]))
        assert min(received.values()) > len(copies) // 4, received

        total = CUSTOMERS * PER_CUSTOMER

        async def stored() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM messages WHERE session_id = $1 AND direction = 'inbound'",
                sid,
            )
            pending = await db.fetchval(
                "SELECT count(*) FROM cloud_webhook_events WHERE state = 'pending'"
            )
            return bool(n == total and pending == 0)

        await wait_for(stored, timeout=60, what="every message stored")
        await asyncio.sleep(0.5)  # anything still running on either node would show now

        rows = await db.fetch(
            "SELECT c.external_id, m.text_content, m.wa_message_id FROM messages m "
            "JOIN conversations c ON c.id = m.conversation_id "
            "WHERE m.session_id = $1 AND m.direction = 'inbound' "
            "ORDER BY m.sent_at, m.id",
            sid,
        )
        assert len(rows) == total
        assert len({r["wa_message_id"] for r in rows}) == total
        for wa_id, bodies in expected.items():
            chat = [r["text_content"] for r in rows if r["external_id"].startswith(wa_id)]
            assert chat == bodies, wa_id
        announced = await db.fetch(
            "SELECT payload->>'id' AS id FROM event_log WHERE event = 'message-new'"
        )
        assert len(announced) == total
        assert len({r["id"] for r in announced}) == total
        listing = await (
            await nodes[1].get("/api/v1/conversations?limit=200", headers=bearer(token))
        ).json()
        unread = {c["contact"]["phone"]: c["unread_count"] for c in listing["items"]}
        inbound_chats = {k: v for k, v in unread.items() if v}
        assert len(inbound_chats) == CUSTOMERS
        assert set(inbound_chats.values()) == {PER_CUSTOMER}
        finals = await db.fetch(
            "SELECT status FROM messages WHERE id = ANY($1::bigint[])", sent_by_us
        )
        assert [r["status"] for r in finals] == ["read"] * len(sent_by_us)
        changes = await db.fetch(
            "SELECT payload->>'id' AS id, payload->>'status' AS status FROM event_log "
            "WHERE event = 'message-status'"
        )
        pairs = [(r["id"], r["status"]) for r in changes]
        assert len(pairs) == len(set(pairs)), "a status was announced twice"
        assert {(str(m), "read") for m in sent_by_us} <= set(pairs)
    finally:
        await db.close()
