"""A gateway node that freezes (SIGSTOP: alive, holding its sockets, running nothing) cannot
stop its own sessions. Its workers fence themselves: they stop before another node may take
the sessions over, so WhatsApp never sees one account connected from two nodes."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import requests

from sessions.fake_server import FakeWhatsApp, Phone
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.procs import Server, api, free_port, wait

LEASE = 3.0


def gateway(tmp_path: Path, name: str, db_url: str) -> Server:
    return Server(
        tmp_path / name,
        free_port(),
        WAGATE_DATABASE_URL=db_url,
        WAGATE_SHARED_DIR=str(tmp_path / "shared"),
        WAGATE_LEASE_SECONDS=str(LEASE),
        WAGATE_DRIVER="fake",
        WAGATE_SECRET_KEY="one-secret-key-for-every-node",
        WAGATE_ADMIN_EMAIL=ADMIN_EMAIL,
        WAGATE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        WAGATE_LOG_LEVEL="warning",
        WAGATE_SPOOL_SYNC="flush",
        WAGATE_QR_FIRST_SECONDS="120",
    )


def session(srv: Server, token: str, sid: int) -> dict[str, Any]:
    return dict(api(srv, "GET", f"/api/v1/sessions/{sid}", token))


def runs_on(srv: Server, token: str, sid: int) -> bool:
    return session(srv, token, sid)["worker"] is not None


async def lease_holders(db_url: str, sid: int) -> list[str]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT node_id FROM session_leases WHERE session_id = $1", sid)
    finally:
        await conn.close()
    return [str(r["node_id"]) for r in rows]


def process_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(240)
def test_a_frozen_node_has_its_workers_stop_before_another_node_takes_its_sessions(
    tmp_path: Path, db_url: str
) -> None:
    a = gateway(tmp_path, "a", db_url)
    b = gateway(tmp_path, "b", db_url)
    frozen = False
    try:
        a.start()
        token = requests.post(
            a.base + "/api/v1/auth/login",
            json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
            timeout=30,
        ).json()["access_token"]
        sid = int(api(a, "POST", "/api/v1/sessions", token, json={"name": "on a"})["id"])
        wait(lambda: session(a, token, sid)["state"] == "qr_required", 60, "a QR on a")
        Phone(FakeWhatsApp(tmp_path / "shared" / "fake-wa"), sid).scan()
        wait(lambda: session(a, token, sid)["state"] == "connected", 60, "connected on a")
        b.start()
        assert not runs_on(b, token, sid)
        (a_node,) = asyncio.run(lease_holders(db_url, sid))
        worker = int(session(a, token, sid)["worker"]["pid"])
        assert process_running(worker)

        assert a.proc is not None
        a.proc.send_signal(signal.SIGSTOP)
        frozen = True
        frozen_at = time.monotonic()
        stopped_after: float | None = None
        taken_after: float | None = None
        while time.monotonic() - frozen_at < 30:
            on_a = process_running(worker)
            on_b = runs_on(b, token, sid)
            assert not (on_a and on_b), "the session ran on two nodes at once"
            now = time.monotonic() - frozen_at
            if not on_a and stopped_after is None:
                stopped_after = now
            if on_b and taken_after is None:
                taken_after = now
            if taken_after is not None and session(b, token, sid)["state"] == "connected":
                break
            time.sleep(0.05)
        print(f"a frozen: worker stopped after {stopped_after} s, b ran it after {taken_after} s")
        assert stopped_after is not None, "a's worker kept the session with a frozen gateway"
        assert taken_after is not None, "b never took the session over"
        assert stopped_after < taken_after
        assert stopped_after <= LEASE
        assert session(b, token, sid)["state"] == "connected"
        (b_node,) = asyncio.run(lease_holders(db_url, sid))
        assert b_node != a_node

        # a wakes up, learns the lease is b's, and leaves the session there.
        a.proc.send_signal(signal.SIGCONT)
        frozen = False
        deadline = time.monotonic() + 2 * LEASE
        while time.monotonic() < deadline:
            assert not runs_on(a, token, sid), "a took the session back while b runs it"
            assert runs_on(b, token, sid)
            time.sleep(0.1)
        assert session(a, token, sid)["state"] == "connected"
        assert asyncio.run(lease_holders(db_url, sid)) == [b_node]
    finally:
        if frozen and a.proc is not None:
            a.proc.send_signal(signal.SIGCONT)
        a.kill()
        b.kill()


@pytest.mark.timeout(60)
async def test_a_worker_slow_to_load_starts_with_the_fence_of_when_it_is_ready(
    tmp_path: Path, db_url: str, aiohttp_client: Any
) -> None:
    """A worker takes seconds to load neonize on a busy machine. Its session must start with
    the fence as it is once the worker is ready, not the one from when it was launched: that
    one may already be past, and the worker would stop the session the moment it began."""
    from gateway.app import create_app
    from gateway.keys import SESSIONS
    from tests.conftest import bearer, login
    from tests.sessions_helpers import fast_settings, wait_for

    lease = 1.5  # rounds every 0.5 s, each fencing 1.05 s ahead
    load = 2.5  # longer than a fence
    slow_python = tmp_path / "slow-python"
    slow_python.write_text(f'#!/bin/sh\nsleep {load}\nexec "{sys.executable}" "$@"\n')
    slow_python.chmod(0o755)
    app = create_app(fast_settings(tmp_path / "node", db_url, lease_seconds=lease))
    client = await aiohttp_client(app)
    supervisor = app[SESSIONS].supervisor
    supervisor.config = dataclasses.replace(supervisor.config, python=str(slow_python))
    fenced: list[list[int]] = []
    tell_directory = supervisor.on_fenced
    assert tell_directory is not None

    async def heard(session_ids: list[int]) -> None:
        fenced.append(session_ids)
        await tell_directory(session_ids)

    supervisor.on_fenced = heard
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    resp = await client.post("/api/v1/sessions", json={"name": "slow"}, headers=bearer(token))
    assert resp.status == 201
    sid = int((await resp.json())["id"])

    async def state() -> str:
        resp = await client.get(f"/api/v1/sessions/{sid}", headers=bearer(token))
        return str((await resp.json())["state"])

    await wait_for(
        lambda: _is(state(), "qr_required"), timeout=load + 10, what="the QR of the session"
    )
    pid = supervisor.worker_pid(sid)
    # Several fences later it still runs in the same worker: the rounds keep it alive.
    await asyncio.sleep(lease * 2)
    assert fenced == []
    assert supervisor.worker_pid(sid) == pid
    assert await state() == "qr_required"


async def _is(value: Any, wanted: str) -> bool:
    return bool(await value == wanted)
