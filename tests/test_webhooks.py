"""Outgoing webhooks, as an integrator's endpoint sees them: signed, in order, retried, replayed,
never aimed inside the network, and one dead endpoint never holding up another."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway import targets as targets_mod
from gateway import webhooks as webhooks_mod
from gateway.app import create_app
from gateway.keys import BUS
from gateway.settings import Settings
from gateway.webhooks import delivery_id
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login, make_settings
from tests.sessions_helpers import Client, wait_for
from tests.webhook_receiver import Receiver, verify

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, webhooks_allow_private=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry waits, recorded instead of waited out."""
    seen: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        seen.append(seconds)
        await asyncio.sleep(0.01)

    monkeypatch.setattr(webhooks_mod, "retry_sleep", fake_sleep)
    return seen


async def create(client: Client, token: str, status: int = 201, **body: Any) -> dict[str, Any]:
    resp = await client.post("/api/v1/webhooks", json=body, headers=bearer(token))
    assert resp.status == status, await resp.text()
    return dict(await resp.json())


async def get(client: Client, token: str, path: str) -> Any:
    resp = await client.get(path, headers=bearer(token))
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def me(client: Client, token: str) -> int:
    return int((await get(client, token, "/api/v1/me"))["id"])


async def publish(client: Client, user_id: int, n: int, event: str = "message-new") -> list[int]:
    seqs = []
    for i in range(n):
        item = await client.app[BUS].publish(event, user_id, None, {"n": i, "text": f"m{i}"})
        assert item.seq is not None
        seqs.append(item.seq)
    return seqs


async def arrived(receiver: Receiver, path: str, n: int, timeout: float = 15.0) -> list[Any]:
    async def enough() -> list[Any] | None:
        got = receiver.acked(path)
        return got if len(got) >= n else None

    return list(await wait_for(enough, timeout=timeout, what=f"{n} deliveries at {path}"))


async def test_deliveries_are_signed_and_carry_the_event(
    client: Client, admin_token: str, receiver: Receiver, db_url: str
) -> None:
    hook = await create(client, admin_token, url=receiver.url(), events=["message-new"])
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    assert hook["state"] == "active"
    user = await me(client, admin_token)
    seqs = await publish(client, user, 3)
    await client.app[BUS].publish("session-state", user, None, {"state": "connected"})
    got = await arrived(receiver, "/hook", 3)
    assert [r.json["seq"] for r in got] == seqs
    for item, seq in zip(got, seqs, strict=True):
        headers = item.headers
        assert verify(
            secret, headers["X-Wagate-Timestamp"], item.body, headers["X-Wagate-Signature"]
        )
        assert not verify(
            "another-secret-entirely",
            headers["X-Wagate-Timestamp"],
            item.body,
            headers["X-Wagate-Signature"],
        )
        assert headers["X-Wagate-Event"] == "message-new"
        assert headers["X-Wagate-Delivery"] == item.json["id"] == delivery_id(hook["id"], seq)
        body = item.json
        assert set(body) == {"id", "seq", "event", "session_id", "created_at", "data"}
        assert body["event"] == "message-new"
        assert body["data"]["text"] == f"m{seq - seqs[0]}"
    # Only the filtered event went out; the cursor passed the other one.
    await asyncio.sleep(0.3)
    assert len(receiver.at("/hook")) == 3

    async def settled() -> dict[str, Any] | None:
        found = await get(client, admin_token, f"/api/v1/webhooks/{hook['id']}")
        return found if found["last_seq"] == found["latest_seq"] == seqs[-1] + 1 else None

    shown = await wait_for(settled, what="the cursor at the end of the log")
    assert "secret" not in shown
    listed = await get(client, admin_token, "/api/v1/webhooks")
    assert [w["id"] for w in listed["items"]] == [hook["id"]]
    assert "secret" not in listed["items"][0]
    deliveries = await get(client, admin_token, f"/api/v1/webhooks/{hook['id']}/deliveries")
    items = deliveries["items"]
    assert [d["seq"] for d in items] == seqs[::-1]
    assert all(d["delivered"] and d["status_code"] == 200 and d["attempt"] == 1 for d in items)
    assert all(d["latency_ms"] is not None for d in items)
    # The secret is kept encrypted.
    conn = await asyncpg.connect(db_url)
    try:
        stored = await conn.fetchval("SELECT secret_encrypted FROM webhooks")
    finally:
        await conn.close()
    assert secret not in stored


async def test_order_is_kept_across_failures_with_growing_delays(
    client: Client, admin_token: str, receiver: Receiver, delays: list[float]
) -> None:
    hook = await create(client, admin_token, url=receiver.url())
    user = await me(client, admin_token)
    receiver.fail_first["/hook"] = 5
    seqs = await publish(client, user, 3)
    got = await arrived(receiver, "/hook", 3)
    sent = [r.json["seq"] for r in receiver.at("/hook")]
    # The first event five times (failing), and nothing after it went out meanwhile.
    assert sent == [seqs[0]] * 6 + seqs[1:]
    assert [r.json["seq"] for r in got] == seqs
    assert len({r.delivery for r in receiver.at("/hook")[:6]}) == 1  # stable across retries
    assert len(delays) == 5
    assert all(b > a for a, b in itertools.pairwise(delays)), delays
    assert 0.8 <= delays[0] <= 1.2
    deliveries = await get(client, admin_token, f"/api/v1/webhooks/{hook['id']}/deliveries")
    first = [d for d in deliveries["items"] if d["seq"] == seqs[0]]
    assert sorted(d["attempt"] for d in first) == [1, 2, 3, 4, 5, 6]
    assert [d["status_code"] for d in sorted(first, key=lambda d: d["attempt"])] == [500] * 5 + [
        200
    ]
    final = await get(client, admin_token, f"/api/v1/webhooks/{hook['id']}")
    assert final["attempts"] == 0
    assert final["state"] == "active"


async def test_410_disables_the_webhook(
    client: Client, admin_token: str, receiver: Receiver
) -> None:
    hook = await create(client, admin_token, url=receiver.url("/gone"))
    receiver.mode["/gone"] = 410
    user = await me(client, admin_token)
    await publish(client, user, 2)

    async def disabled() -> dict[str, Any] | None:
        found = await get(client, admin_token, f"/api/v1/webhooks/{hook['id']}")
        return found if found["state"] == "disabled" else None

    found = await wait_for(disabled, what="the webhook disabled")
    assert found["enabled"] is False
    assert found["last_status"] == 410
    await publish(client, user, 1)
    await asyncio.sleep(0.5)
    assert len(receiver.at("/gone")) == 1


async def test_after_the_horizon_it_is_failing_and_replay_resends_from_a_sequence(
    tmp_path: Path, db_url: str, aiohttp_client: Any, receiver: Receiver, delays: list[float]
) -> None:
    settings = make_settings(
        tmp_path, db_url, webhooks_allow_private=True, webhooks_retry_hours=0.5 / 3600
    )
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    hook = await create(client, token, url=receiver.url())
    user = await me(client, token)
    seqs = await publish(client, user, 2)
    await arrived(receiver, "/hook", 2)
    receiver.mode["/hook"] = 500
    more = await publish(client, user, 2)

    async def failing() -> dict[str, Any] | None:
        found = await get(client, token, f"/api/v1/webhooks/{hook['id']}")
        return found if found["state"] == "failing" else None

    found = await wait_for(failing, what="the webhook failing")
    assert found["last_seq"] == seqs[-1]  # nothing skipped
    assert str(more[0]) in found["last_error"]
    assert {r.json["seq"] for r in receiver.at("/hook")[2:]} == {more[0]}  # never the next one
    tried = len(receiver.at("/hook"))
    await asyncio.sleep(0.3)
    assert len(receiver.at("/hook")) == tried  # parked: no more attempts
    # The endpoint is fixed; replay from the second event of all.
    receiver.mode["/hook"] = 200
    resp = await client.post(
        f"/api/v1/webhooks/{hook['id']}/replay?from_seq={seqs[1]}", headers=bearer(token)
    )
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["state"] == "active"

    async def replayed() -> list[int] | None:
        acked = [r.json["seq"] for r in receiver.acked("/hook")]
        return acked if len(acked) >= 5 else None

    acked = await wait_for(replayed, what="the replay")
    assert acked == [*seqs, seqs[1], *more]
    again = receiver.acked("/hook")[2]
    assert again.delivery == delivery_id(hook["id"], seqs[1])  # the same delivery, again


class RebindingDns:
    """DNS that answers loopback for every name (a rebinding attacker's resolver)."""

    async def resolve(self, host: str, port: int = 0, family: Any = None) -> list[Any]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": 2,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass


async def test_private_addresses_are_refused_when_not_allowed(
    tmp_path: Path,
    db_url: str,
    aiohttp_client: Any,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(targets_mod, "ThreadedResolver", RebindingDns)
    client = await aiohttp_client(create_app(make_settings(tmp_path, db_url)))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    for url in (
        receiver.url(),
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/",
        "http://127.1/",
        "ftp://example.com/",
        "http://localhost/hook",
    ):
        refused = await create(client, token, status=400, url=url)
        assert refused["error"]["code"] == "validation_error", url
        assert refused["error"]["details"][0]["loc"] == ["url"]
    # A public name passes the check at creation; resolved to loopback at delivery, it is
    # refused there (DNS rebinding), and nothing reaches the address.
    hook = await create(client, token, url=f"http://hooks.example.com:{receiver.port}/hook")
    user = await me(client, token)
    await publish(client, user, 1)

    async def refused_attempt() -> list[dict[str, Any]] | None:
        items = (await get(client, token, f"/api/v1/webhooks/{hook['id']}/deliveries"))["items"]
        return items or None

    items = await wait_for(refused_attempt, what="a refused attempt")
    assert items[0]["delivered"] is False
    assert "private" in items[0]["error"] or "loopback" in items[0]["error"]
    assert receiver.received == []
    patched = await client.patch(
        f"/api/v1/webhooks/{hook['id']}", json={"url": receiver.url()}, headers=bearer(token)
    )
    assert patched.status == 400


async def test_one_dead_endpoint_does_not_delay_another(
    tmp_path: Path, db_url: str, aiohttp_client: Any, receiver: Receiver
) -> None:
    settings = make_settings(
        tmp_path, db_url, webhooks_allow_private=True, webhooks_timeout_seconds=30
    )
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    receiver.mode["/dead"] = "hang"
    await create(client, token, url=receiver.url("/dead"))
    await create(client, token, url=receiver.url("/alive"))
    user = await me(client, token)
    started = asyncio.get_running_loop().time()
    seqs = await publish(client, user, 20)
    got = await arrived(receiver, "/alive", 20, timeout=5)
    assert asyncio.get_running_loop().time() - started < 5
    assert [r.json["seq"] for r in got] == seqs
    assert len(receiver.at("/dead")) == 1  # still hanging on the first event


async def test_send_test_event_and_manage(
    client: Client, admin_token: str, receiver: Receiver
) -> None:
    hook = await create(
        client,
        admin_token,
        url=receiver.url(),
        secret="a-secret-of-my-own-1234",
        description="CRM",
    )
    assert hook["secret"] == "a-secret-of-my-own-1234"
    resp = await client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=bearer(admin_token))
    assert resp.status == 202
    delivery = (await resp.json())["delivery_id"]
    (got,) = await arrived(receiver, "/hook", 1)
    assert got.json["event"] == "webhook-test"
    assert got.json["seq"] is None
    assert got.delivery == delivery
    assert verify(
        "a-secret-of-my-own-1234",
        got.headers["X-Wagate-Timestamp"],
        got.body,
        got.headers["X-Wagate-Signature"],
    )

    async def recorded() -> list[dict[str, Any]] | None:
        items = await get(client, admin_token, f"/api/v1/webhooks/{hook['id']}/deliveries")
        return items["items"] or None

    (item,) = await wait_for(recorded, what="the test delivery recorded")
    assert item["event"] == "webhook-test"
    assert item["delivered"] is True
    # Pause, change the filter, delete.
    resp = await client.patch(
        f"/api/v1/webhooks/{hook['id']}",
        json={"enabled": False, "events": ["session-state"]},
        headers=bearer(admin_token),
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["state"] == "disabled"
    assert body["events"] == ["session-state"]
    bad = await client.patch(
        f"/api/v1/webhooks/{hook['id']}", json={"events": ["nope"]}, headers=bearer(admin_token)
    )
    assert bad.status == 400
    resp = await client.delete(f"/api/v1/webhooks/{hook['id']}", headers=bearer(admin_token))
    assert resp.status == 204
    resp = await client.get(f"/api/v1/webhooks/{hook['id']}", headers=bearer(admin_token))
    assert resp.status == 404


async def test_deliveries_carry_on_when_database_connections_drop(
    client: Client, admin_token: str, receiver: Receiver, db_url: str, delays: list[float]
) -> None:
    """What a database restart looks like from here: every connection cut at once."""
    await create(client, admin_token, url=receiver.url())
    user = await me(client, admin_token)
    first = await publish(client, user, 2)
    await arrived(receiver, "/hook", 2)
    receiver.mode["/hook"] = 500
    second = await publish(client, user, 2)
    await wait_for(lambda: asyncio.sleep(0, len(receiver.at("/hook")) > 2), what="a failure")
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    receiver.mode["/hook"] = 200
    got = await arrived(receiver, "/hook", 4, timeout=20)
    assert [r.json["seq"] for r in got] == first + second


async def test_two_gateway_processes_deliver_each_webhook_once(
    client: Client, admin_token: str, receiver: Receiver, db_url: str
) -> None:
    """A second dispatcher on the same database (another gateway process) takes no webhook the
    first one holds, and takes them over when the first one goes away."""
    from db.pool import create_pool
    from gateway.keys import WEBHOOKS
    from gateway.security import SecretBox
    from gateway.webhooks import DispatcherConfig, WebhookDispatcher

    first = client.app[WEBHOOKS]
    for i in range(3):
        await create(client, admin_token, url=receiver.url(f"/h{i}"))
    await wait_for(lambda: asyncio.sleep(0, first.lane_count() == 3), what="three lanes")
    pool = await create_pool(db_url, min_size=1, max_size=3)
    other = WebhookDispatcher(
        pool,
        db_url,
        SecretBox("test-secret-key-for-wagate-tests"),
        None,
        DispatcherConfig(allow_private=True, refresh_seconds=0.1),
    )
    await other.start()
    try:
        user = await me(client, admin_token)
        seqs = await publish(client, user, 5)
        for i in range(3):
            got = await arrived(receiver, f"/h{i}", 5)
            assert [r.json["seq"] for r in got] == seqs
        await asyncio.sleep(0.3)
        assert other.lane_count() == 0
        # The first process goes away: the second one carries on where it stopped.
        await first.stop()
        await wait_for(lambda: asyncio.sleep(0, other.lane_count() == 3), what="a takeover")
        more = await publish(client, user, 3)
        for i in range(3):
            got = await arrived(receiver, f"/h{i}", 8)
            assert [r.json["seq"] for r in got] == seqs + more
        assert all(len(receiver.at(f"/h{i}")) == 8 for i in range(3))
    finally:
        await other.stop()
        await pool.close()
