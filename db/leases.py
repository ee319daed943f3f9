"""Gateway nodes and session leases: which node runs which WhatsApp Web session.

A lease is a row `session_leases(session_id, node_id, expires_at)`; the primary key makes two
holders impossible, and a holder only ever extends a lease it still holds. Taking a session
over is an upsert that only replaces an expired lease, so two nodes racing for one session
cannot both win.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from db import Executor

_HEARTBEAT = """
INSERT INTO gateway_nodes (node_id, hostname, pid) VALUES ($1, $2, $3)
ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now()
RETURNING stopping
"""
_LEAVE = "DELETE FROM gateway_nodes WHERE node_id = $1"
_SET_STOPPING = "UPDATE gateway_nodes SET stopping = true WHERE node_id = $1"
# Nodes seen within the lease time and not shutting down, and nodes long gone (cleaned up).
_LIVE_NODES = """
SELECT count(*) FROM gateway_nodes
WHERE NOT stopping AND heartbeat_at > now() - make_interval(secs => $1)
"""
_FORGET_DEAD = """
DELETE FROM gateway_nodes WHERE heartbeat_at < now() - make_interval(secs => $1 * 20)
"""
_RENEW = """
UPDATE session_leases SET expires_at = now() + make_interval(secs => $2)
WHERE node_id = $1 AND expires_at > now()
RETURNING session_id
"""
# Sessions that should run on some node (WhatsApp Web only: Cloud API numbers need no node).
_WANTED = """
SELECT count(*) FROM sessions WHERE desired_state = 'running' AND channel = 'web'
"""
_CLAIM = """
INSERT INTO session_leases AS l (session_id, node_id, expires_at)
SELECT s.id, $1, now() + make_interval(secs => $2)
FROM sessions s
LEFT JOIN session_leases cur ON cur.session_id = s.id
WHERE s.desired_state = 'running' AND s.channel = 'web'
  AND (cur.session_id IS NULL OR cur.expires_at <= now())
  AND ($4::bigint IS NULL OR s.id = $4)
ORDER BY s.id
LIMIT $3
ON CONFLICT (session_id) DO UPDATE
    SET node_id = excluded.node_id, expires_at = excluded.expires_at, acquired_at = now()
    WHERE l.expires_at <= now()
RETURNING l.session_id
"""
_RELEASE = "DELETE FROM session_leases WHERE node_id = $1 AND session_id = ANY($2::bigint[])"
_RELEASE_ALL = "DELETE FROM session_leases WHERE node_id = $1"
_HOLDER = """
SELECT node_id FROM session_leases WHERE session_id = $1 AND expires_at > now()
"""
_OWNED_STOPPED = """
SELECT l.session_id FROM session_leases l JOIN sessions s ON s.id = l.session_id
WHERE l.node_id = $1 AND (s.desired_state <> 'running' OR s.channel <> 'web')
"""


@dataclass(frozen=True)
class Cluster:
    live_nodes: int
    wanted: int

    def fair_share(self) -> int:
        """Sessions one node should hold so that every live node holds about as many."""
        nodes = max(self.live_nodes, 1)
        return -(-self.wanted // nodes)


async def heartbeat(conn: Executor, node_id: str, hostname: str, pid: int) -> None:
    await conn.execute(_HEARTBEAT, node_id, hostname, pid)


async def set_stopping(conn: Executor, node_id: str) -> None:
    await conn.execute(_SET_STOPPING, node_id)


async def leave(conn: Executor, node_id: str) -> None:
    await conn.execute(_RELEASE_ALL, node_id)
    await conn.execute(_LEAVE, node_id)


async def cluster(conn: Executor, ttl: float) -> Cluster:
    await conn.execute(_FORGET_DEAD, ttl)
    return Cluster(int(await conn.fetchval(_LIVE_NODES, ttl)), int(await conn.fetchval(_WANTED)))


async def renew(conn: Executor, node_id: str, ttl: float) -> set[int]:
    """Extend this node's unexpired leases; the sessions it still holds."""
    return {int(r["session_id"]) for r in await conn.fetch(_RENEW, node_id, ttl)}


async def claim(
    conn: Executor, node_id: str, ttl: float, limit: int, session_id: int | None = None
) -> list[int]:
    """Take up to `limit` sessions that should run and have no live holder."""
    if limit <= 0:
        return []
    rows = await conn.fetch(_CLAIM, node_id, ttl, limit, session_id)
    return [int(r["session_id"]) for r in rows]


async def release(conn: Executor, node_id: str, session_ids: list[int]) -> None:
    if session_ids:
        await conn.execute(_RELEASE, node_id, session_ids)


async def holder(conn: Executor, session_id: int) -> str | None:
    value = await conn.fetchval(_HOLDER, session_id)
    return str(value) if value is not None else None


_NODES = """
SELECT n.node_id, n.hostname, n.pid, n.started_at, n.heartbeat_at, n.stopping,
       coalesce(array_agg(l.session_id ORDER BY l.session_id)
                FILTER (WHERE l.session_id IS NOT NULL), '{}') AS sessions
FROM gateway_nodes n
LEFT JOIN session_leases l ON l.node_id = n.node_id AND l.expires_at > now()
GROUP BY n.node_id
ORDER BY n.started_at, n.node_id
"""


async def nodes(conn: Executor) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(_NODES)]


async def held_but_not_wanted(conn: Executor, node_id: str) -> list[int]:
    return [int(r["session_id"]) for r in await conn.fetch(_OWNED_STOPPED, node_id)]
