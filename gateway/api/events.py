"""`GET /api/v1/events?after=SEQ`: the durable event log, to catch up after being offline."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from db import event_log
from gateway.auth import current_user
from gateway.keys import POOL
from gateway.routing import ApiRouter

router = ApiRouter("events")


class EventQuery(BaseModel):
    after: int = Field(default=0, ge=0, description="The last `seq` you saw")
    limit: int = Field(default=100, ge=1, le=1000)


class EventOut(BaseModel):
    seq: int
    event: str
    session_id: int | None
    created_at: datetime
    data: dict[str, Any]


class EventPage(BaseModel):
    items: list[EventOut] = Field(description="In `seq` order, exactly what you missed")
    last_seq: int = Field(description="Pass as `after` next time")


@router.get(
    "/api/v1/events",
    summary="Your events after a sequence number (Socket.IO payloads carry `seq`)",
    query=EventQuery,
    response=EventPage,
)
async def list_events(request: web.Request, query: EventQuery) -> EventPage:
    user = current_user(request)
    found = await event_log.after(request.app[POOL], user.id, query.after, query.limit)
    return EventPage(
        items=[
            EventOut(
                seq=e.seq,
                event=e.event,
                session_id=e.session_id,
                created_at=e.created_at,
                data=e.payload,
            )
            for e in found
        ],
        last_seq=found[-1].seq if found else query.after,
    )
