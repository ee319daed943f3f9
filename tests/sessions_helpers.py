"""Helpers for tests that drive sessions through real worker processes and the fake WhatsApp."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.bus import BusEvent
from gateway.keys import BUS, SUPERVISOR
from gateway.settings import Settings
from sessions.fake_server import FakeWhatsApp, Phone, SimMessage
from sessions.supervisor import SessionSupervisor
from tests.conftest import bearer, make_settings

Client = TestClient  # type: ignore[type-arg]

FAST = {
    "qr_first_seconds": 4.0,
    "qr_next_seconds": 2.0,
    "qr_codes": 3,
    "reconnect_base_seconds": 0.05,
    "reconnect_max_seconds": 0.5,
    "worker_restart_max_seconds": 0.5,
    "worker_heartbeat_timeout": 3.0,
    "spool_sync": "flush",
}


def fast_settings(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    return make_settings(tmp_path, db_url, **{**FAST, **overrides})


async def wait_for(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 20.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Recorder:
    """Every bus event, as a subscriber (Socket.IO, webhooks) would see it."""

    def __init__(self) -> None:
        self.events: list[BusEvent] = []

    async def __call__(self, event: BusEvent) -> None:
        self.events.append(event)

    def states(self, session_id: int) -> list[str]:
        return [
            e.payload["state"]
            for e in self.events
            if e.event == "session-state" and e.session_id == session_id
        ]


def record(client: Client) -> Recorder:
    recorder = Recorder()
    client.app[BUS].subscribe(recorder)
    return recorder


def supervisor(client: Client) -> SessionSupervisor:
    return client.app[SUPERVISOR]


async def session_json(client: Client, token: str, sid: int) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/sessions/{sid}", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def wait_state(
    client: Client, token: str, sid: int, state: str, timeout: float = 20.0
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        body = await session_json(client, token, sid)
        return body if body["state"] == state else None

    return dict(await wait_for(check, timeout=timeout, what=f"session {sid} {state}"))


async def create_session(client: Client, token: str, name: str = "support") -> int:
    resp = await client.post("/api/v1/sessions", json={"name": name}, headers=bearer(token))
    assert resp.status == 201, await resp.text()
    return int((await resp.json())["id"])


def phone(settings: Settings, sid: int) -> Phone:
    return Phone(FakeWhatsApp(settings.data_dir / "fake-wa"), sid)


async def link(client: Client, token: str, settings: Settings, name: str = "support") -> int:
    """Add a session and link it by QR, as an operator and their phone would."""
    sid = await create_session(client, token, name)
    await wait_state(client, token, sid, "qr_required")
    phone(settings, sid).scan()
    await wait_state(client, token, sid, "connected")
    return sid


def text(sender: str, body: str, **extra: Any) -> SimMessage:
    return SimMessage.model_validate({"type": "text", "from": sender, "text": body, **extra})
