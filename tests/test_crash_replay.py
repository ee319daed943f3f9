"""SIGKILL the whole gateway in the middle of a burst: afterwards every message is there, once."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from sessions.fake_server import FakeWhatsApp, Phone, SimMessage
from tests.procs import Server, api, free_port, wait

pytestmark = pytest.mark.timeout(240)

BURST = 5000


@pytest.fixture
def gateway(tmp_path: Path, db_url: str) -> Iterator[Server]:
    srv = Server(
        tmp_path / "var",
        free_port(),
        WAGATE_DATABASE_URL=db_url,
        WAGATE_DRIVER="fake",
        WAGATE_ADMIN_PASSWORD="admin-password-1",
        WAGATE_WORKER_RESTART_MAX_SECONDS="0.5",
        WAGATE_LOG_LEVEL="warning",
    )
    yield srv
    srv.kill()


async def test_gateway_sigkill_during_a_burst_loses_and_duplicates_nothing(
    gateway: Server, db_url: str
) -> None:
    gateway.start()
    token = api(
        gateway,
        "POST",
        "/api/v1/auth/login",
        json={"email": "admin@wagate.local", "password": "admin-password-1"},
    )["access_token"]
    sid = api(gateway, "POST", "/api/v1/sessions", token, json={"name": "burst"})["id"]
    wait(
        lambda: api(gateway, "GET", f"/api/v1/sessions/{sid}", token)["state"] == "qr_required",
        30,
        "the QR",
    )
    phone = Phone(FakeWhatsApp(gateway.data_dir / "fake-wa"), sid)
    phone.scan()
    wait(
        lambda: api(gateway, "GET", f"/api/v1/sessions/{sid}", token)["state"] == "connected",
        30,
        "connected",
    )

    async def stored() -> tuple[int, int]:
        conn = await asyncpg.connect(db_url)
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, count(DISTINCT wa_message_id) AS d FROM messages "
                "WHERE session_id = $1",
                sid,
            )
            assert row is not None
            return int(row["n"]), int(row["d"])
        finally:
            await conn.close()

    messages = [
        SimMessage.model_validate(
            {
                "type": "text",
                "from": f"+5215{i % 97:09d}",
                "text": f"burst {i}",
                "id": f"3EB0BURST{i:08d}",
            }
        )
        for i in range(BURST)
    ]
    for start in range(0, BURST, 500):
        phone.send(*messages[start : start + 500])
    # Kill the gateway (its workers follow it) while the burst is being stored.
    deadline = time.monotonic() + 30
    while (await stored())[0] < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    before = (await stored())[0]
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGKILL)
    gateway.proc.wait(10)
    assert before < BURST, "the burst was stored before the kill; the test proves nothing"

    gateway.stdout.clear()
    gateway.start()
    deadline = time.monotonic() + 120
    while (await stored())[0] < BURST and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # a duplicate would land by now
    assert await stored() == (BURST, BURST)
    conn = await asyncpg.connect(db_url)
    try:
        unread = await conn.fetchval(
            "SELECT sum(unread_count) FROM conversations WHERE session_id = $1", sid
        )
    finally:
        await conn.close()
    assert unread == BURST
