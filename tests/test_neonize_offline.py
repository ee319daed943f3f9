"""The real neonize driver, as far as it goes without WhatsApp: every connect fails (no DNS),
the session says so honestly, retries with growing delays, and stops on request."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from gateway.app import create_app
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login
from tests.sessions_helpers import create_session, fast_settings, record, supervisor, wait_for

pytestmark = pytest.mark.timeout(120)


async def test_real_neonize_offline_reconnects_with_growing_delays_and_stops(
    aiohttp_client: Any, tmp_path: Path, db_url: str
) -> None:
    settings = fast_settings(
        tmp_path, db_url, driver="neonize", reconnect_base_seconds=0.2, reconnect_max_seconds=1.6
    )
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    events = record(client)
    sid = await create_session(client, token, "real")

    def attempts() -> list[dict[str, Any]]:
        return [
            e.payload
            for e in events.events
            if e.event == "session-state" and e.payload["state"] == "reconnecting"
        ]

    await wait_for(
        lambda: asyncio.sleep(0, result=len(attempts()) >= 5), timeout=30, what="5 retries"
    )
    seen = attempts()
    assert "failed to dial" in seen[0]["error"]
    delays = [
        (datetime.fromisoformat(p["next_attempt_at"]) - e.created_at).total_seconds()
        for p, e in zip(
            seen,
            [
                x
                for x in events.events
                if x.event == "session-state" and x.payload["state"] == "reconnecting"
            ],
            strict=True,
        )
    ]
    # Capped exponential backoff with jitter (±25 %): 0.2, 0.4, 0.8, 1.6, 1.6 ...
    assert delays[0] < delays[2] < delays[3] + 0.5
    assert max(delays) <= 1.6 * 1.01
    # No flapping through "connecting" between attempts.
    states = events.states(sid)
    first_retry = states.index("reconnecting")
    assert set(states[first_retry:]) == {"reconnecting"}

    body = await (await client.get(f"/api/v1/sessions/{sid}", headers=bearer(token))).json()
    assert body["state"] == "reconnecting"
    assert body["worker"]["pss_bytes"] > 0
    assert body["next_attempt_at"] is not None
    pid = supervisor(client).worker_pid(sid)
    assert pid is not None

    started = asyncio.get_running_loop().time()
    resp = await client.post(f"/api/v1/sessions/{sid}/stop", headers=bearer(token))
    assert resp.status == 200
    assert (await resp.json())["state"] == "stopped"
    assert asyncio.get_running_loop().time() - started < 10
    await wait_for(
        lambda: asyncio.sleep(0, result=_gone(pid)), timeout=10, what="the worker to exit"
    )

    # The device store was created in its own schema of the same database, once.
    conn = await asyncpg.connect(db_url)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'whatsmeow'"
        )
    finally:
        await conn.close()
    assert tables >= 10


async def test_a_neonize_worker_is_recycled_after_repeated_failures(
    aiohttp_client: Any, tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """neonize keeps a database connection per failed connect: the worker is replaced before
    they pile up, and the session goes on retrying in the new one."""
    import dataclasses

    from gateway import app as app_module

    real = app_module.supervisor_config
    monkeypatch.setattr(
        app_module,
        "supervisor_config",
        lambda s, url: dataclasses.replace(real(s, url), recycle_after=3),
    )
    settings = fast_settings(
        tmp_path, db_url, driver="neonize", reconnect_base_seconds=0.05, reconnect_max_seconds=0.1
    )
    client = await aiohttp_client(create_app(settings))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    events = record(client)
    sid = await create_session(client, token, "real")
    first = await wait_for(
        lambda: asyncio.sleep(0, result=supervisor(client).worker_pid(sid)), what="a worker"
    )

    def recycled() -> bool:
        return any(
            e.event == "session-state" and "recycled" in (e.payload["error"] or "")
            for e in events.events
        )

    await wait_for(lambda: asyncio.sleep(0, result=recycled()), timeout=30, what="a recycle")
    await wait_for(
        lambda: asyncio.sleep(0, result=supervisor(client).worker_pid(sid) not in (None, first)),
        timeout=30,
        what="a new worker",
    )
    assert _gone(first)
    body = await (await client.get(f"/api/v1/sessions/{sid}", headers=bearer(token))).json()
    assert body["state"] == "reconnecting"


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
