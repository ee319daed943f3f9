"""/metrics end to end with the fake WhatsApp: the families exist and their values move."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from db.pool import create_pool
from gateway.app import create_app
from gateway.metrics import OutboxCollector
from gateway.settings import Settings
from sessions.fake_server import SimHistory
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login
from tests.sessions_helpers import Client, fast_settings, link, phone, text, wait_for

pytestmark = pytest.mark.timeout(120)

ALICE = "+5215512345678"

# Every family the README promises (histograms and counters by their base name).
FAMILIES = {
    "wagate_sessions": "gauge",
    "wagate_messages": "counter",
    "wagate_event_commit_seconds": "histogram",
    "wagate_webhook_delivery_seconds": "histogram",
    "wagate_cloud_webhook_seconds": "histogram",
    "wagate_cloud_webhook_requests": "counter",
    "wagate_outbox_depth": "gauge",
    "wagate_outbox_oldest_age_seconds": "gauge",
    "wagate_cloud_numbers": "gauge",
    "wagate_outbox_items": "counter",
    "wagate_jira_request_seconds": "histogram",
    "wagate_jira_errors": "counter",
    "wagate_ai_request_seconds": "histogram",
    "wagate_ai_errors": "counter",
    "wagate_session_worker_rss_bytes": "gauge",
    "wagate_session_worker_pss_bytes": "gauge",
    "wagate_session_worker_cpu_percent": "gauge",
    "wagate_session_ingest_backlog": "gauge",
    "wagate_history_import_progress_percent": "gauge",
    "wagate_history_messages_imported": "counter",
    "wagate_history_chunks": "counter",
    "wagate_http_requests": "counter",
    "wagate_http_request_duration_seconds": "histogram",
}


class Scrape:
    def __init__(self, body: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(body):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))


async def scrape(client: Client) -> Scrape:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return Scrape(await resp.text())


async def until(client: Client, what: str, check: Any) -> Scrape:
    async def ok() -> Scrape | None:
        s = await scrape(client)
        return s if check(s) else None

    result: Scrape = await wait_for(ok, timeout=30, what=what)
    return result


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return fast_settings(tmp_path, db_url)


async def test_metrics_move_with_messages_sends_history_and_the_outbox(
    client: Client, settings: Settings, db_url: str
) -> None:
    # An item of a kind nobody takes yet (a Jira comment), waiting for 90 s, before any scrape.
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO outbox (kind, payload, created_at) "
            "VALUES ('jira_comment', '{}'::jsonb, now() - interval '90 seconds')"
        )
    finally:
        await conn.close()

    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    sid = await link(client, token, settings)
    first = await scrape(client)
    for name, kind in FAMILIES.items():
        assert first.types.get(name) == kind, name
    assert first.value("wagate_sessions", state="connected") == 1
    assert (first.value("wagate_session_worker_rss_bytes", session=str(sid)) or 0) > 10e6
    assert (first.value("wagate_session_worker_pss_bytes", session=str(sid)) or 0) > 1e6
    assert first.value("wagate_outbox_depth", kind="jira_comment") == 1
    assert (first.value("wagate_outbox_oldest_age_seconds", kind="jira_comment") or 0) >= 90
    assert first.value("wagate_outbox_depth", kind="send_text") == 0
    assert first.value("wagate_messages_total", channel="web", direction="in", type="text") is None

    # A message in: +1 in, and its event-to-commit latency observed.
    phone(settings, sid).send(text(ALICE, "hola", push_name="Alice"))
    got = await until(
        client,
        "one inbound text",
        lambda s: s.value("wagate_messages_total", channel="web", direction="in", type="text") == 1,
    )
    count = got.value("wagate_event_commit_seconds_count", queue="live") or 0
    assert count >= 1
    total = got.value("wagate_event_commit_seconds_sum", queue="live") or 0
    assert 0 < total / count < 5

    # A message out through the API and the outbox: +1 out, one outbox item done.
    chats = await (await client.get("/api/v1/conversations", headers=bearer(token))).json()
    chat_id = chats["items"][0]["id"]
    resp = await client.post(
        f"/api/v1/conversations/{chat_id}/messages", json={"text": "hi"}, headers=bearer(token)
    )
    assert resp.status == 202
    got = await until(
        client,
        "one outbound text",
        lambda s: s.value("wagate_outbox_items_total", kind="send_text", outcome="done") == 1,
    )
    assert got.value("wagate_messages_total", channel="web", direction="out", type="text") == 1
    assert got.value("wagate_messages_total", channel="web", direction="in", type="text") == 1

    # A history sync: progress and imported messages per session, not counted as live "in".
    history = SimHistory.model_validate(
        {
            "chunk_order": 1,
            "progress": 100,
            "conversations": [
                {
                    "chat": f"+52155000000{c}",
                    "messages": [
                        {
                            "type": "text",
                            "text": f"old {c}-{i}",
                            "id": f"HISTM{c}{i}",
                            "from": f"+52155000000{c}",
                            "ts": 1_700_000_000_000 + i,
                        }
                        for i in range(3)
                    ],
                }
                for c in range(2)
            ],
        }
    )
    phone(settings, sid).history(history)
    got = await until(
        client,
        "the history import",
        lambda s: s.value("wagate_history_messages_imported_total", session=str(sid)) == 6,
    )
    assert got.value("wagate_history_import_progress_percent", session=str(sid)) == 100
    assert got.value("wagate_history_chunks_total", session=str(sid)) == 1
    assert (got.value("wagate_event_commit_seconds_count", queue="history") or 0) >= 1
    assert got.value("wagate_messages_total", channel="web", direction="in", type="text") == 1


async def test_outbox_depth_is_read_at_most_once_per_cache_period(db_url: str) -> None:
    pool = await create_pool(db_url, min_size=1, max_size=2, connect_timeout=5)
    try:
        cached = OutboxCollector(pool, ["send_text"], max_age=60)
        for _ in range(5):
            await cached.refresh()
        assert cached.queries == 1
        families = {f.name: f for f in cached.collect()}
        assert [s.value for s in families["wagate_outbox_depth"].samples] == [0]
        fresh = OutboxCollector(pool, ["send_text"], max_age=0)
        await fresh.refresh()
        await fresh.refresh()
        assert fresh.queries == 2
    finally:
        await pool.close()


async def test_a_metrics_token_guards_metrics_and_cloud_numbers_are_counted(
    aiohttp_client: Any, tmp_path: Path, db_url: str
) -> None:
    settings = fast_settings(tmp_path, db_url, metrics_token="scrape-me-123")
    client = await aiohttp_client(create_app(settings))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-me-123"}):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401, headers
        assert "metrics token" in (await resp.json())["error"]["message"]
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO sessions (owner_id, channel, name, state) VALUES "
            "(1, 'cloud', 'a', 'connected'), (1, 'cloud', 'b', 'connected'), "
            "(1, 'cloud', 'c', 'token_expired')"
        )
    finally:
        await conn.close()
    resp = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me-123"})
    assert resp.status == 200
    got = Scrape(await resp.text())
    assert got.value("wagate_cloud_numbers", state="connected") == 2
    assert got.value("wagate_cloud_numbers", state="token_expired") == 1
