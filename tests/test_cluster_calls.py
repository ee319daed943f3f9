"""Two gateway nodes in one process: what an operator asks of the node that does not run the
session reaches the one that does, also after their listening connections were cut."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.app import create_app
from gateway.keys import SESSIONS
from sessions.fake_server import FakeWhatsApp, Phone
from tests.conftest import bearer, login
from tests.sessions_helpers import Client, fast_settings, wait_for


async def body(client: Client, token: str, method: str, path: str, status: int = 200) -> Any:
    resp = await client.request(method, path, headers=bearer(token))
    assert resp.status == status, await resp.text()
    return await resp.json()


@pytest.mark.timeout(120)
async def test_calls_reach_the_holder_and_survive_cut_listeners(
    tmp_path: Path, db_url: str, aiohttp_client: Any
) -> None:
    shared = tmp_path / "shared"
    common = {"shared_dir": shared, "lease_seconds": 3.0, "qr_first_seconds": 60.0}
    a = await aiohttp_client(create_app(fast_settings(tmp_path / "a", db_url, **common)))
    b = await aiohttp_client(create_app(fast_settings(tmp_path / "b", db_url, **common)))
    token = await login(a, "admin@example.com", "admin-password-1")

    resp = await a.post("/api/v1/sessions", json={"name": "on a"}, headers=bearer(token))
    assert resp.status == 201
    sid = int((await resp.json())["id"])
    directory_a = a.server.app[SESSIONS]
    directory_b = b.server.app[SESSIONS]
    assert sid in directory_a.held
    assert sid not in directory_b.held

    async def state(client: Client) -> str:
        return str((await body(client, token, "GET", f"/api/v1/sessions/{sid}"))["state"])

    await wait_for(lambda: _is(state(b), "qr_required"), what="a QR on a")
    # b does not run the session; its QR comes from a.
    qr = await body(b, token, "GET", f"/api/v1/sessions/{sid}/qr")
    assert qr["qr"].startswith("data:image/png;base64,")
    nodes = await body(b, token, "GET", "/api/v1/nodes")
    held = {n["node_id"]: n["sessions"] for n in nodes["items"]}
    assert held[directory_a.node_id] == [sid]
    assert held[directory_b.node_id] == []

    # Cut both listening connections: the next lease round opens them again.
    conn = await asyncpg.connect(db_url)
    try:
        for directory in (directory_a, directory_b):
            listener = directory._listener
            assert listener is not None
            await conn.execute("SELECT pg_terminate_backend($1)", listener.get_server_pid())
    finally:
        await conn.close()

    await asyncio.sleep(2.0)  # a lease round (every second here) opens them again
    qr = await body(b, token, "GET", f"/api/v1/sessions/{sid}/qr")
    assert qr["qr"].startswith("data:image/png;base64,")

    Phone(FakeWhatsApp(shared / "fake-wa"), sid).scan()
    await wait_for(lambda: _is(state(b), "connected"), what="connected")

    # Logout through b: a unlinks the device and lets the session go.
    out = await body(b, token, "POST", f"/api/v1/sessions/{sid}/logout")
    assert out["state"] == "logged_out"
    assert sid not in directory_a.held

    # Started again through b: nobody holds it, so b runs it.
    await body(b, token, "POST", f"/api/v1/sessions/{sid}/start")
    assert sid in directory_b.held
    await wait_for(lambda: _is(state(a), "qr_required"), what="a new QR, on b")
    worker_on_b = (await body(b, token, "GET", f"/api/v1/sessions/{sid}"))["worker"]
    worker_on_a = (await body(a, token, "GET", f"/api/v1/sessions/{sid}"))["worker"]
    assert worker_on_b is not None
    assert worker_on_a is None


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)
