"""The `webhooks` and `webhook_deliveries` tables: outgoing webhooks as cursors over the event log.

A webhook's `last_seq` is the last event of its owner's log it is done with. The dispatcher
moves it forward only after a 2xx (or past events its filter does not want), always under the
webhook's `generation`: the operator changing the webhook (URL, filter, replay) bumps the
generation, and a dispatcher write for an older one changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from db import Executor

STATES = ("active", "failing", "disabled")

_COLUMNS = (
    "id, user_id, url, events, session_id, description, secret_encrypted, enabled, state, "
    "last_seq, generation, attempts, next_attempt_at, failing_since, last_error, last_status, "
    "last_delivered_at, created_at, updated_at"
)

# A new webhook starts at its owner's current end of the log: it receives what happens next.
_INSERT = f"""
INSERT INTO webhooks (user_id, url, events, session_id, description, secret_encrypted, enabled,
                      state, last_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $7 THEN 'active' ELSE 'disabled' END,
        coalesce((SELECT last_seq FROM event_counters WHERE user_id = $1), 0))
RETURNING {_COLUMNS}
"""
_BY_ID = f"SELECT {_COLUMNS} FROM webhooks WHERE id = $1"
_BY_USER = f"SELECT {_COLUMNS} FROM webhooks WHERE user_id = $1 ORDER BY id"
_ALL = f"SELECT {_COLUMNS} FROM webhooks ORDER BY id"
_DELETE = "DELETE FROM webhooks WHERE id = $1"
# What the operator may change; each change is a new generation. Enabling (again) clears the
# retry state; disabling parks the webhook.
_UPDATE = f"""
UPDATE webhooks SET
    url = coalesce($2, url),
    events = coalesce($3, events),
    session_id = CASE WHEN $4 THEN $5 ELSE session_id END,
    description = CASE WHEN $6 THEN $7 ELSE description END,
    secret_encrypted = coalesce($8, secret_encrypted),
    enabled = coalesce($9, enabled),
    state = CASE WHEN $9 IS NULL THEN state WHEN $9 THEN 'active' ELSE 'disabled' END,
    attempts = CASE WHEN $9 THEN 0 ELSE attempts END,
    next_attempt_at = CASE WHEN $9 THEN NULL ELSE next_attempt_at END,
    failing_since = CASE WHEN $9 THEN NULL ELSE failing_since END,
    generation = generation + 1,
    updated_at = now()
WHERE id = $1
RETURNING {_COLUMNS}
"""
_REPLAY = f"""
UPDATE webhooks SET
    last_seq = $2, enabled = true, state = 'active', attempts = 0, next_attempt_at = NULL,
    failing_since = NULL, generation = generation + 1, updated_at = now()
WHERE id = $1
RETURNING {_COLUMNS}
"""
# Webhooks that need a delivery lane: enabled and not parked.
_RUNNABLE = "SELECT id, user_id, generation FROM webhooks WHERE enabled AND state = 'active'"
_COUNTERS = "SELECT user_id, last_seq FROM event_counters WHERE user_id = ANY($1::bigint[])"
_EVENTS_AFTER = """
SELECT seq, event, session_id, payload::text AS payload, created_at FROM event_log
WHERE user_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3
"""
# Cursor moves of many webhooks at once (a dispatcher flushes every few tens of ms).
_ADVANCE = """
UPDATE webhooks AS w SET
    last_seq = greatest(w.last_seq, c.last_seq),
    last_delivered_at = coalesce(c.delivered_at, w.last_delivered_at),
    last_status = coalesce(c.status, w.last_status),
    attempts = 0, next_attempt_at = NULL, failing_since = NULL,
    last_error = CASE WHEN c.status IS NULL THEN w.last_error ELSE NULL END,
    updated_at = now()
FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::timestamptz[], $5::int[])
    AS c(id, generation, last_seq, delivered_at, status)
WHERE w.id = c.id AND w.generation = c.generation
"""
_RECORD = """
INSERT INTO webhook_deliveries (webhook_id, delivery_id, seq, event, attempt, status_code,
                                latency_ms, delivered, error, created_at)
SELECT a.webhook_id, a.delivery_id, a.seq, a.event, a.attempt, a.status_code, a.latency_ms,
       a.delivered, a.error, a.created_at
FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::int[], $7::int[],
            $8::boolean[], $9::text[], $10::timestamptz[])
    WITH ORDINALITY AS a(webhook_id, delivery_id, seq, event, attempt, status_code, latency_ms,
                         delivered, error, created_at, n)
WHERE EXISTS (SELECT 1 FROM webhooks AS w WHERE w.id = a.webhook_id)
ORDER BY a.n
"""
_RETRYING = """
UPDATE webhooks SET attempts = $3, next_attempt_at = $4, failing_since = $5, last_error = $6,
    last_status = $7, updated_at = now()
WHERE id = $1 AND generation = $2
"""
_PARK = """
UPDATE webhooks SET state = $3, enabled = (CASE WHEN $3 = 'disabled' THEN false ELSE enabled END),
    last_error = $4, last_status = $5, next_attempt_at = NULL, updated_at = now()
WHERE id = $1 AND generation = $2
"""
_DELIVERIES = """
SELECT id, webhook_id, delivery_id, seq, event, attempt, status_code, latency_ms, delivered,
       error, created_at
FROM webhook_deliveries WHERE webhook_id = $1
ORDER BY id DESC
LIMIT $2
"""
_PRUNE = """
DELETE FROM webhook_deliveries AS d
USING unnest($1::bigint[]) AS w(id)
WHERE d.webhook_id = w.id AND d.id < (
    SELECT min(k.id) FROM (
        SELECT id FROM webhook_deliveries WHERE webhook_id = w.id ORDER BY id DESC LIMIT $2
    ) AS k
)
"""


@dataclass(frozen=True)
class Webhook:
    id: int
    user_id: int
    url: str
    events: list[str]
    session_id: int | None
    description: str | None
    secret_encrypted: str
    enabled: bool
    state: str
    last_seq: int
    generation: int
    attempts: int
    next_attempt_at: datetime | None
    failing_since: datetime | None
    last_error: str | None
    last_status: int | None
    last_delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Webhook:
        values = dict(row)
        values["events"] = list(values["events"])
        return cls(**values)

    def wants(self, event: str, session_id: int | None) -> bool:
        """Whether this webhook's filter takes an event."""
        if self.session_id is not None and session_id != self.session_id:
            return False
        return "*" in self.events or event in self.events


@dataclass(frozen=True)
class LoggedRaw:
    """An event of the log with its payload as the JSON text PostgreSQL holds."""

    seq: int
    event: str
    session_id: int | None
    payload: str
    created_at: datetime


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt, as kept in the recent history."""

    webhook_id: int
    delivery_id: str
    seq: int | None
    event: str
    attempt: int
    status_code: int | None
    latency_ms: int | None
    delivered: bool
    error: str | None
    created_at: datetime


@dataclass(frozen=True)
class Advance:
    """Move a webhook's cursor (only within `generation`)."""

    webhook_id: int
    generation: int
    last_seq: int
    delivered_at: datetime | None
    status: int | None


async def create(
    conn: Executor,
    *,
    user_id: int,
    url: str,
    events: list[str],
    session_id: int | None,
    description: str | None,
    secret_encrypted: str,
    enabled: bool,
) -> Webhook:
    row = await conn.fetchrow(
        _INSERT, user_id, url, events, session_id, description, secret_encrypted, enabled
    )
    assert row is not None
    return Webhook.from_row(row)


async def get(conn: Executor, webhook_id: int) -> Webhook | None:
    row = await conn.fetchrow(_BY_ID, webhook_id)
    return Webhook.from_row(row) if row is not None else None


async def list_for(conn: Executor, user_id: int | None) -> list[Webhook]:
    """A user's webhooks, or everyone's (None)."""
    rows = await (conn.fetch(_BY_USER, user_id) if user_id is not None else conn.fetch(_ALL))
    return [Webhook.from_row(r) for r in rows]


async def delete(conn: Executor, webhook_id: int) -> None:
    await conn.execute(_DELETE, webhook_id)


_UNSET: Any = object()


async def update(
    conn: Executor,
    webhook_id: int,
    *,
    url: str | None = None,
    events: list[str] | None = None,
    session_id: int | None = _UNSET,
    description: str | None = _UNSET,
    secret_encrypted: str | None = None,
    enabled: bool | None = None,
) -> Webhook | None:
    """Change what is given (`session_id` and `description` may be set to None)."""
    row = await conn.fetchrow(
        _UPDATE,
        webhook_id,
        url,
        events,
        session_id is not _UNSET,
        None if session_id is _UNSET else session_id,
        description is not _UNSET,
        None if description is _UNSET else description,
        secret_encrypted,
        enabled,
    )
    return Webhook.from_row(row) if row is not None else None


async def replay(conn: Executor, webhook_id: int, after_seq: int) -> Webhook | None:
    """Send everything after `after_seq` again (and resume a parked webhook)."""
    row = await conn.fetchrow(_REPLAY, webhook_id, after_seq)
    return Webhook.from_row(row) if row is not None else None


async def runnable(conn: Executor) -> list[tuple[int, int, int]]:
    """(id, user id, generation) of every webhook that should be delivering."""
    return [(r["id"], r["user_id"], r["generation"]) for r in await conn.fetch(_RUNNABLE)]


async def latest_seqs(conn: Executor, user_ids: list[int]) -> dict[int, int]:
    return {r["user_id"]: r["last_seq"] for r in await conn.fetch(_COUNTERS, user_ids)}


async def events_after(conn: Executor, user_id: int, seq: int, limit: int) -> list[LoggedRaw]:
    rows = await conn.fetch(_EVENTS_AFTER, user_id, seq, limit)
    return [LoggedRaw(**dict(r)) for r in rows]


async def flush(conn: Executor, advances: list[Advance], attempts: list[Attempt]) -> None:
    """Cursor moves and attempt records of many webhooks (call inside one transaction)."""
    if advances:
        await conn.execute(
            _ADVANCE,
            [a.webhook_id for a in advances],
            [a.generation for a in advances],
            [a.last_seq for a in advances],
            [a.delivered_at for a in advances],
            [a.status for a in advances],
        )
    if attempts:
        await conn.execute(
            _RECORD,
            [a.webhook_id for a in attempts],
            [a.delivery_id for a in attempts],
            [a.seq for a in attempts],
            [a.event for a in attempts],
            [a.attempt for a in attempts],
            [a.status_code for a in attempts],
            [a.latency_ms for a in attempts],
            [a.delivered for a in attempts],
            [a.error for a in attempts],
            [a.created_at for a in attempts],
        )


async def retrying(
    conn: Executor,
    webhook_id: int,
    generation: int,
    *,
    attempts: int,
    next_attempt_at: datetime,
    failing_since: datetime,
    error: str,
    status: int | None,
) -> None:
    await conn.execute(
        _RETRYING, webhook_id, generation, attempts, next_attempt_at, failing_since, error, status
    )


async def park(
    conn: Executor,
    webhook_id: int,
    generation: int,
    state: str,
    error: str,
    status: int | None,
) -> None:
    """Stop delivering: `failing` (retries ran out) or `disabled` (the endpoint said 410)."""
    await conn.execute(_PARK, webhook_id, generation, state, error, status)


async def deliveries(conn: Executor, webhook_id: int, limit: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(_DELIVERIES, webhook_id, limit)]


async def prune(conn: Executor, webhook_ids: list[int], keep: int) -> None:
    if webhook_ids:
        await conn.execute(_PRUNE, webhook_ids, keep)
