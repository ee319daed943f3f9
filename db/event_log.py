"""The durable per-user event log: what a client missed while offline, in order.

`seq` counts per user without gaps; it comes from `event_counters` under that user's row lock,
so events commit in `seq` order and `after=seq` can never skip one that commits late.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from db import Conn, Executor

_NEXT_SEQ = """
INSERT INTO event_counters (user_id, last_seq) VALUES ($1, 1)
ON CONFLICT (user_id) DO UPDATE SET last_seq = event_counters.last_seq + 1
RETURNING last_seq
"""
_APPEND = """
INSERT INTO event_log (user_id, seq, event, session_id, payload)
VALUES ($1, $2, $3, $4, $5)
RETURNING created_at
"""
_AFTER = """
SELECT user_id, seq, event, session_id, payload, created_at FROM event_log
WHERE user_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3
"""


@dataclass(frozen=True)
class LoggedEvent:
    user_id: int
    seq: int
    event: str
    session_id: int | None
    payload: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> LoggedEvent:
        return cls(**dict(row))


async def append(
    conn: Conn, user_id: int, event: str, session_id: int | None, payload: dict[str, Any]
) -> LoggedEvent:
    """Append one event (call inside a transaction: the counter row stays locked until the
    commit, which is what keeps `seq` in commit order)."""
    seq = int(await conn.fetchval(_NEXT_SEQ, user_id))
    created = await conn.fetchval(_APPEND, user_id, seq, event, session_id, payload)
    return LoggedEvent(user_id, seq, event, session_id, payload, created)


_RESERVE = """
INSERT INTO event_counters (user_id, last_seq) VALUES ($1, $2)
ON CONFLICT (user_id) DO UPDATE SET last_seq = event_counters.last_seq + $2
RETURNING last_seq
"""
_APPEND_MANY = """
INSERT INTO event_log (user_id, seq, event, session_id, payload)
SELECT $1, s, e, $4, p::jsonb
FROM unnest($2::bigint[], $3::text[], $5::text[]) AS t(s, e, p)
RETURNING seq, created_at
"""


async def append_many(
    conn: Conn, user_id: int, session_id: int | None, items: list[tuple[str, dict[str, Any]]]
) -> list[LoggedEvent]:
    """Append several events of one user and session with one counter bump and one insert
    (same transaction rule as `append`)."""
    if not items:
        return []
    last = int(await conn.fetchval(_RESERVE, user_id, len(items)))
    seqs = list(range(last - len(items) + 1, last + 1))
    rows = await conn.fetch(
        _APPEND_MANY,
        user_id,
        seqs,
        [name for name, _ in items],
        session_id,
        [json.dumps(payload) for _, payload in items],
    )
    created = {int(r["seq"]): r["created_at"] for r in rows}
    return [
        LoggedEvent(user_id, seq, name, session_id, payload, created[seq])
        for seq, (name, payload) in zip(seqs, items, strict=True)
    ]


async def after(conn: Executor, user_id: int, seq: int, limit: int) -> list[LoggedEvent]:
    return [LoggedEvent.from_row(r) for r in await conn.fetch(_AFTER, user_id, seq, limit)]
