"""The `outbox` table: work that leaves the process, done exactly once.

Written in the same transaction as its cause; taken by one worker at a time with
`FOR UPDATE SKIP LOCKED` and a lease (`locked_until`), so a crashed taker's items come back;
retried with backoff; marked done once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from db import Executor

CHANNEL = "wagate_outbox"

_ENQUEUE = """
INSERT INTO outbox (kind, session_id, payload, dedupe_key)
VALUES ($1, $2, $3::text::jsonb, $4)
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING id
"""
_NOTIFY = "SELECT pg_notify($1, $2)"
_CLAIM = """
UPDATE outbox SET state = 'running', attempts = attempts + 1,
    locked_until = now() + make_interval(secs => $3), locked_by = $4, updated_at = now()
WHERE id IN (
    SELECT id FROM outbox
    WHERE kind = ANY($1::text[])
      AND ((state = 'pending' AND next_attempt_at <= now())
           OR (state = 'running' AND locked_until < now())
           -- Running on a node that died or left: no need to wait for the item's own lock.
           OR (state = 'running' AND $5::float8 IS NOT NULL AND locked_by IS NOT NULL
               AND locked_by IS DISTINCT FROM $4
               AND NOT EXISTS (
                   SELECT 1 FROM gateway_nodes n WHERE n.node_id = outbox.locked_by
                     AND n.heartbeat_at > now() - make_interval(secs => $5))))
      -- Several gateway nodes: not for a session another node runs (its holder does it).
      AND ($4::text IS NULL OR session_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM session_leases l
          WHERE l.session_id = outbox.session_id AND l.node_id <> $4 AND l.expires_at > now()))
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING id, kind, session_id, payload::text AS payload, attempts
"""
_DONE = """
UPDATE outbox SET state = 'done', done_at = now(), last_error = NULL, locked_until = NULL,
    updated_at = now()
WHERE id = $1 AND state = 'running'
"""
_RETRY = """
UPDATE outbox SET state = 'pending', next_attempt_at = $3, last_error = $2, locked_until = NULL,
    updated_at = now()
WHERE id = $1 AND state = 'running'
"""
_FAIL = """
UPDATE outbox SET state = 'failed', last_error = $2, locked_until = NULL, updated_at = now()
WHERE id = $1 AND state = 'running'
"""
_DEPTH = """
SELECT kind, count(*) AS depth, extract(epoch FROM now() - min(created_at)) AS oldest
FROM outbox WHERE state IN ('pending', 'running') GROUP BY kind
"""


@dataclass(frozen=True)
class OutboxItem:
    id: int
    kind: str
    session_id: int | None
    payload: dict[str, Any]
    attempts: int


async def enqueue(
    conn: Executor,
    kind: str,
    payload: dict[str, Any],
    *,
    session_id: int | None = None,
    dedupe_key: str | None = None,
) -> int | None:
    """Queue one item (call inside the transaction of its cause); None when the dedupe key was
    already used. Wakes the outbox workers when the transaction commits."""
    value = await conn.fetchval(_ENQUEUE, kind, session_id, json.dumps(payload), dedupe_key)
    if value is not None:
        await conn.execute(_NOTIFY, CHANNEL, kind)
    return int(value) if value is not None else None


_DUE_NOW = """
UPDATE outbox SET next_attempt_at = now(), updated_at = now()
WHERE session_id = $1 AND state = 'pending' AND next_attempt_at > now()
RETURNING kind
"""


async def due_now(conn: Executor, session_id: int) -> int:
    """Make a session's waiting items due at once (its token works again) and wake the
    workers; how many there were."""
    kinds = {r["kind"] for r in await conn.fetch(_DUE_NOW, session_id)}
    for kind in sorted(kinds):
        await conn.execute(_NOTIFY, CHANNEL, kind)
    return len(kinds)


async def claim(
    conn: Executor,
    kinds: list[str],
    limit: int,
    lease_seconds: float,
    node_id: str | None = None,
    node_ttl: float | None = None,
) -> list[OutboxItem]:
    """Take due items (with `node_id`, only those of sessions no other node holds; with
    `node_ttl` too, also the running items of nodes not seen for that long)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        _CLAIM, kinds, limit, lease_seconds, node_id, node_ttl
    )
    return [
        OutboxItem(r["id"], r["kind"], r["session_id"], json.loads(r["payload"]), r["attempts"])
        for r in rows
    ]


async def done(conn: Executor, item_id: int) -> None:
    await conn.execute(_DONE, item_id)


async def retry(conn: Executor, item_id: int, error: str, at: datetime) -> None:
    await conn.execute(_RETRY, item_id, error, at)


async def fail(conn: Executor, item_id: int, error: str) -> None:
    await conn.execute(_FAIL, item_id, error)


async def depth(conn: Executor) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(_DEPTH)]
