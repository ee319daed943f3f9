"""SIGKILL the gateway while a webhook delivery hangs: after a restart every event is delivered,
in order, and each delivery id is answered 2xx exactly once."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.procs import Server, api, free_port, wait
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def gateway(tmp_path: Path, db_url: str) -> Iterator[Server]:
    srv = Server(
        tmp_path / "var",
        free_port(),
        WAGATE_DATABASE_URL=db_url,
        WAGATE_DRIVER="fake",
        WAGATE_ADMIN_PASSWORD="admin-password-1",
        WAGATE_LOG_LEVEL="warning",
        WAGATE_WEBHOOKS_ALLOW_PRIVATE="true",
        WAGATE_WEBHOOKS_TIMEOUT_SECONDS="60",
    )
    yield srv
    srv.kill()


def login(srv: Server) -> str:
    body = {"email": "admin@wagate.local", "password": "admin-password-1"}
    return str(api(srv, "POST", "/api/v1/auth/login", json=body)["access_token"])


async def logged_seqs(db_url: str, after: int) -> list[int]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT seq FROM event_log WHERE user_id = 1 AND seq > $1 ORDER BY seq", after
        )
    finally:
        await conn.close()
    return [r["seq"] for r in rows]


async def test_sigkill_between_an_event_and_its_delivery(
    gateway: Server, receiver: Receiver, db_url: str
) -> None:
    gateway.start()
    token = login(gateway)
    hook = api(gateway, "POST", "/api/v1/webhooks", token, json={"url": receiver.url()})
    start = hook["last_seq"]
    # Events: a new account goes through its states.
    sid = api(gateway, "POST", "/api/v1/sessions", token, json={"name": "a"})["id"]
    wait(lambda: len(receiver.acked("/hook")) >= 2, 30, "first deliveries")
    # Now the endpoint hangs; more events happen; the gateway dies mid-delivery.
    receiver.mode["/hook"] = "hang"
    api(gateway, "POST", f"/api/v1/sessions/{sid}/stop", token)
    wait(lambda: any(r.answered is None for r in receiver.at("/hook")), 30, "a hanging request")
    time.sleep(0.5)
    gateway.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    gateway.proc.wait(10)  # type: ignore[union-attr]
    before_kill = len(receiver.acked("/hook"))
    receiver.mode["/hook"] = 200
    receiver.release.set()  # the hung handler ends without answering
    gateway.start()
    token = login(gateway)
    api(gateway, "POST", f"/api/v1/sessions/{sid}/start", token)

    async def all_delivered() -> list[int] | None:
        wanted = await logged_seqs(db_url, start)
        got = [r.json["seq"] for r in receiver.acked("/hook")]
        return wanted if wanted and set(got) >= set(wanted) else None

    deadline = time.monotonic() + 60
    wanted: list[int] | None = None
    while time.monotonic() < deadline and not (wanted := await all_delivered()):
        time.sleep(0.2)
    assert wanted, "not every event was delivered after the restart"
    acked = receiver.acked("/hook")
    assert len(acked) > before_kill
    counts = Counter(r.delivery for r in acked)
    assert all(n == 1 for n in counts.values()), counts.most_common(3)
    seqs = [r.json["seq"] for r in acked]
    assert seqs == sorted(seqs), "delivered out of order"
    assert set(seqs) == set(wanted)
    # The one that hung before the kill was sent again, under the same delivery id.
    hung = [r for r in receiver.at("/hook") if r.answered is None]
    assert hung
    assert all(counts[r.delivery] == 1 for r in hung)
