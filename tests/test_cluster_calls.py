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
from tests.sessions_helpers import Client, fast_settings, text, wait_for


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


class _StalledDatabase:
    """The pool a node's lease rounds use, able to stop answering (a database host that hangs
    without closing the connection) and to come back."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.answering = asyncio.Event()
        self.answering.set()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._pool, name)
        if name not in {"execute", "fetch", "fetchval", "fetchrow"}:
            return real

        async def call(*args: Any, **kwargs: Any) -> Any:
            await self.answering.wait()
            return await real(*args, **kwargs)

        return call


@pytest.mark.timeout(120)
async def test_a_node_whose_lease_rounds_hang_stops_its_sessions_before_another_takes_them(
    tmp_path: Path, db_url: str, aiohttp_client: Any
) -> None:
    shared = tmp_path / "shared"
    lease = 3.0
    common = {"shared_dir": shared, "lease_seconds": lease, "qr_first_seconds": 60.0}
    a = await aiohttp_client(create_app(fast_settings(tmp_path / "a", db_url, **common)))
    b = await aiohttp_client(create_app(fast_settings(tmp_path / "b", db_url, **common)))
    token = await login(a, "admin@example.com", "admin-password-1")
    resp = await a.post("/api/v1/sessions", json={"name": "on a"}, headers=bearer(token))
    assert resp.status == 201
    sid = int((await resp.json())["id"])
    directory_a = a.server.app[SESSIONS]
    directory_b = b.server.app[SESSIONS]
    assert sid in directory_a.held

    async def state() -> str:
        return str((await body(b, token, "GET", f"/api/v1/sessions/{sid}"))["state"])

    await wait_for(lambda: _is(state(), "qr_required"), what="a QR on a")
    Phone(FakeWhatsApp(shared / "fake-wa"), sid).scan()
    await wait_for(lambda: _is(state(), "connected"), what="connected on a")

    stalled = _StalledDatabase(directory_a.pool)
    directory_a.pool = stalled  # type: ignore[assignment]
    stalled.answering.clear()
    hung_at = asyncio.get_running_loop().time()
    stopped_after: float | None = None
    taken_after: float | None = None
    try:
        # Watch both nodes the whole time: the session never runs on both.
        while asyncio.get_running_loop().time() - hung_at < 20.0:
            on_a = directory_a.supervisor.worker_pid(sid) is not None
            on_b = directory_b.supervisor.worker_pid(sid) is not None
            assert not (on_a and on_b), "the session ran on two nodes at once"
            now = asyncio.get_running_loop().time() - hung_at
            if not on_a and stopped_after is None:
                stopped_after = now
            if on_b and taken_after is None:
                taken_after = now
            if taken_after is not None and await state() == "connected":
                break
            await asyncio.sleep(0.05)
        assert stopped_after is not None, "a kept running the session with its leases unrenewed"
        assert taken_after is not None, "b never took the session over"
        print(f"stopped on a after {stopped_after:.2f} s, running on b after {taken_after:.2f} s")
        assert stopped_after < taken_after
        # a stops well inside the lease it last renewed; b waits for it to expire.
        assert stopped_after <= lease
        assert await state() == "connected"
    finally:
        stalled.answering.set()  # the database answers again: a's stalled round goes on

    # a learns it lost the lease and leaves the session with b.
    for _ in range(int(lease * 2 / 0.05)):
        assert directory_a.supervisor.worker_pid(sid) is None
        assert directory_b.supervisor.worker_pid(sid) is not None
        await asyncio.sleep(0.05)
    assert sid not in directory_a.held
    assert sid in directory_b.held
    conn = await asyncpg.connect(db_url)
    try:
        holders = await conn.fetch("SELECT node_id FROM session_leases WHERE session_id = $1", sid)
    finally:
        await conn.close()
    assert [r["node_id"] for r in holders] == [directory_b.node_id]


@pytest.mark.timeout(120)
async def test_a_node_that_joins_gets_its_share_without_a_session_running_twice(
    tmp_path: Path, db_url: str, aiohttp_client: Any
) -> None:
    shared = tmp_path / "shared"
    common = {
        "shared_dir": shared,
        "lease_seconds": 3.0,
        "qr_first_seconds": 60.0,
        "max_sessions_per_user": 10,
    }
    a = await aiohttp_client(create_app(fast_settings(tmp_path / "a", db_url, **common)))
    token = await login(a, "admin@example.com", "admin-password-1")
    sids = []
    for i in range(6):
        resp = await a.post("/api/v1/sessions", json={"name": f"s{i}"}, headers=bearer(token))
        assert resp.status == 201
        sids.append(int((await resp.json())["id"]))
    fake = FakeWhatsApp(shared / "fake-wa")

    async def states() -> dict[int, str]:
        items = (await body(a, token, "GET", "/api/v1/sessions"))["items"]
        return {int(s["id"]): str(s["state"]) for s in items}

    async def all_in(state: str) -> bool:
        now = await states()
        return all(now.get(sid) == state for sid in sids)

    await wait_for(lambda: all_in("qr_required"), what="six QR codes on a")
    for sid in sids:
        Phone(fake, sid).scan()
    await wait_for(lambda: all_in("connected"), what="six accounts connected on a")
    directory_a = a.server.app[SESSIONS]
    assert directory_a.held == frozenset(sids)

    b = await aiohttp_client(create_app(fast_settings(tmp_path / "b", db_url, **common)))
    directory_b = b.server.app[SESSIONS]
    loop = asyncio.get_running_loop()
    joined = loop.time()
    spread_after: float | None = None
    while loop.time() - joined < 30:
        for sid in sids:
            on_a = directory_a.supervisor.worker_pid(sid) is not None
            on_b = directory_b.supervisor.worker_pid(sid) is not None
            assert not (on_a and on_b), f"session {sid} ran on both nodes"
        if (
            len(directory_b.held) >= 2
            and directory_a.held | directory_b.held == frozenset(sids)
            and await all_in("connected")
        ):
            spread_after = loop.time() - joined
            break
        await asyncio.sleep(0.05)
    assert spread_after is not None, (directory_a.held, directory_b.held)
    print(f"b took {len(directory_b.held)} of 6 after {spread_after:.2f} s")
    assert not directory_a.held & directory_b.held
    assert len(directory_a.held) <= 4

    # A moved account goes on where it was: no QR, its next message stored once.
    moved = min(directory_b.held)
    Phone(fake, moved).send(text("+5215512345678", "after the move"))
    conn = await asyncpg.connect(db_url)
    try:

        async def stored() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE session_id = $1 AND text_content = $2",
                moved,
                "after the move",
            )
            return bool(n == 1)

        await wait_for(stored, what="the message of a moved account")
        await asyncio.sleep(0.5)
        assert await stored()
    finally:
        await conn.close()
