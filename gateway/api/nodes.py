"""`/api/v1/nodes`: the gateway nodes sharing this database and the sessions each runs."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from db import leases
from gateway.keys import POOL, SESSIONS
from gateway.routing import ApiRouter

router = ApiRouter("nodes")


class NodeOut(BaseModel):
    node_id: str
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stopping: bool
    sessions: list[int] = Field(description="Sessions whose lease this node holds")
    this: bool = Field(description="The node that answered this request")


class NodeList(BaseModel):
    node_id: str = Field(description="The node that answered this request")
    items: list[NodeOut]


@router.get(
    "/api/v1/nodes",
    summary="Gateway nodes and the sessions each runs (admin only)",
    response=NodeList,
    auth="admin",
    errors=(401, 403),
)
async def list_nodes(request: web.Request) -> NodeList:
    me = request.app[SESSIONS].node_id
    rows = await leases.nodes(request.app[POOL])
    return NodeList(
        node_id=me,
        items=[NodeOut(**row, this=row["node_id"] == me) for row in rows],
    )
