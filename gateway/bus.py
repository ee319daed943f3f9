"""The event bus: every change a user should see, logged durably, then fanned out in-process.

Publishers (the session supervisor, later the Cloud API path and the bridges) call `publish`;
the event gets the user's next `seq` in the durable event log, then every subscriber (Socket.IO,
outgoing webhooks, Jira, AI) is called with it. Ephemeral events (QR codes: secrets that expire
in seconds) are fanned out but never logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from db import event_log

log = structlog.get_logger(__name__)

EPHEMERAL_EVENTS = frozenset({"qr-raw"})


@dataclass(frozen=True)
class BusEvent:
    user_id: int
    seq: int | None  # None for ephemeral events
    event: str
    session_id: int | None
    payload: dict[str, Any]
    created_at: datetime


Subscriber = Callable[[BusEvent], Awaitable[None]]


class EventBus:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    async def publish(
        self, event: str, user_id: int, session_id: int | None, payload: dict[str, Any]
    ) -> BusEvent:
        if event in EPHEMERAL_EVENTS:
            item = BusEvent(user_id, None, event, session_id, payload, datetime.now(UTC))
        else:
            async with self._pool.acquire() as conn, conn.transaction():
                logged = await event_log.append(conn, user_id, event, session_id, payload)
            item = BusEvent(user_id, logged.seq, event, session_id, payload, logged.created_at)
        await self._fan_out([item])
        return item

    async def publish_many(
        self, user_id: int, session_id: int | None, items: list[tuple[str, dict[str, Any]]]
    ) -> list[BusEvent]:
        """Several events of one user in one transaction (a history chunk: thousands)."""
        durable = [(name, payload) for name, payload in items if name not in EPHEMERAL_EVENTS]
        async with self._pool.acquire() as conn, conn.transaction():
            logged = await event_log.append_many(conn, user_id, session_id, durable)
        out = [
            BusEvent(user_id, e.seq, e.event, session_id, e.payload, e.created_at) for e in logged
        ]
        await self._fan_out(out)
        return out

    async def fan_out_logged(self, logged: list[event_log.LoggedEvent]) -> list[BusEvent]:
        """Fan out events its caller appended to the log in a transaction of its own (with the
        change they announce, so a crash can not keep the one without the other)."""
        out = [
            BusEvent(e.user_id, e.seq, e.event, e.session_id, e.payload, e.created_at)
            for e in logged
        ]
        await self._fan_out(out)
        return out

    async def _fan_out(self, items: list[BusEvent]) -> None:
        for item in items:
            for subscriber in list(self._subscribers):
                try:
                    await subscriber(item)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("event subscriber failed", event_name=item.event)
