"""The Jira bridge's tables: `jira_connections`, `jira_tickets`, `jira_comments`,
`jira_auto_bridged`, `jira_webhook_deliveries`; and the lane-ordered claim of `jira_*` outbox
items (one chat's jobs run one at a time, oldest first)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from db.outbox import OutboxItem

if TYPE_CHECKING:
    from db import Executor

_CONN_COLUMNS = (
    "user_id, base_url, auth_kind, email, token_sealed, project_key, issue_type, "
    "webhook_secret_sealed, webhook_token_hash, webhook_token_sealed, enabled, "
    "auto_bridge_sessions, auto_bridge_since, reopen_resolved, status_notices, "
    "status_notice_text, language, state, last_error, failing_since, account_id, account_name, "
    "server_title, last_seq, created_at, updated_at"
)


@dataclass(frozen=True)
class Connection:
    user_id: int
    base_url: str
    auth_kind: str
    email: str | None
    token_sealed: str
    project_key: str
    issue_type: str
    webhook_secret_sealed: str | None
    webhook_token_hash: str
    webhook_token_sealed: str
    enabled: bool
    auto_bridge_sessions: list[int]
    auto_bridge_since: datetime
    reopen_resolved: bool
    status_notices: bool
    status_notice_text: str | None
    language: str
    state: str
    last_error: str | None
    failing_since: datetime | None
    account_id: str | None
    account_name: str | None
    server_title: str | None
    last_seq: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Connection:
        values = dict(row)
        values["auto_bridge_sessions"] = list(values["auto_bridge_sessions"] or [])
        return cls(**values)


_GET = f"SELECT {_CONN_COLUMNS} FROM jira_connections WHERE user_id = $1"
_BY_TOKEN = f"SELECT {_CONN_COLUMNS} FROM jira_connections WHERE webhook_token_hash = $1"
# A new connection starts at the owner's current end of the log: it bridges what comes next.
_UPSERT = f"""
INSERT INTO jira_connections (user_id, base_url, auth_kind, email, token_sealed, project_key,
    issue_type, webhook_secret_sealed, webhook_token_hash, webhook_token_sealed, enabled,
    auto_bridge_sessions, reopen_resolved, status_notices, status_notice_text, language,
    last_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
        coalesce((SELECT last_seq FROM event_counters WHERE user_id = $1), 0))
ON CONFLICT (user_id) DO UPDATE SET
    base_url = EXCLUDED.base_url, auth_kind = EXCLUDED.auth_kind, email = EXCLUDED.email,
    token_sealed = EXCLUDED.token_sealed, project_key = EXCLUDED.project_key,
    issue_type = EXCLUDED.issue_type, webhook_secret_sealed = EXCLUDED.webhook_secret_sealed,
    enabled = EXCLUDED.enabled,
    auto_bridge_since = CASE
        WHEN EXCLUDED.auto_bridge_sessions = jira_connections.auto_bridge_sessions
        THEN jira_connections.auto_bridge_since ELSE now() END,
    auto_bridge_sessions = EXCLUDED.auto_bridge_sessions,
    reopen_resolved = EXCLUDED.reopen_resolved, status_notices = EXCLUDED.status_notices,
    status_notice_text = EXCLUDED.status_notice_text, language = EXCLUDED.language,
    -- New credentials deserve a new try.
    state = 'active', last_error = NULL, failing_since = NULL,
    updated_at = now()
RETURNING {_CONN_COLUMNS}
"""
_DELETE = "DELETE FROM jira_connections WHERE user_id = $1"
_ENABLED = "SELECT user_id, last_seq FROM jira_connections WHERE enabled ORDER BY user_id"
_SET_STATE = """
UPDATE jira_connections SET state = $2, last_error = $3,
    failing_since = CASE WHEN $2 = 'active' THEN NULL ELSE coalesce(failing_since, now()) END,
    updated_at = now()
WHERE user_id = $1
"""
_SET_ERROR = "UPDATE jira_connections SET last_error = $2 WHERE user_id = $1"
_SET_ACCOUNT = """
UPDATE jira_connections SET account_id = $2, account_name = $3, server_title = $4,
    state = 'active', last_error = NULL, failing_since = NULL, updated_at = now()
WHERE user_id = $1
"""
_REMEMBER_ACCOUNT = """
UPDATE jira_connections SET account_id = $2, account_name = coalesce($3, account_name)
WHERE user_id = $1
"""
_ADVANCE = "UPDATE jira_connections SET last_seq = greatest(last_seq, $2) WHERE user_id = $1"
_LOCK_CURSOR = "SELECT last_seq FROM jira_connections WHERE user_id = $1 AND enabled FOR UPDATE"


async def get(conn: Executor, user_id: int) -> Connection | None:
    row = await conn.fetchrow(_GET, user_id)
    return Connection.from_row(row) if row else None


async def by_token_hash(conn: Executor, token_hash: str) -> Connection | None:
    row = await conn.fetchrow(_BY_TOKEN, token_hash)
    return Connection.from_row(row) if row else None


async def upsert(conn: Executor, user_id: int, **values: Any) -> Connection:
    row = await conn.fetchrow(
        _UPSERT,
        user_id,
        values["base_url"],
        values["auth_kind"],
        values.get("email"),
        values["token_sealed"],
        values["project_key"],
        values["issue_type"],
        values.get("webhook_secret_sealed"),
        values["webhook_token_hash"],
        values["webhook_token_sealed"],
        values.get("enabled", True),
        values.get("auto_bridge_sessions", []),
        values.get("reopen_resolved", False),
        values.get("status_notices", True),
        values.get("status_notice_text"),
        values.get("language", "en"),
    )
    assert row is not None
    return Connection.from_row(row)


async def delete(conn: Executor, user_id: int) -> bool:
    return str(await conn.execute(_DELETE, user_id)) != "DELETE 0"


async def enabled(conn: Executor) -> list[tuple[int, int]]:
    return [(int(r["user_id"]), int(r["last_seq"])) for r in await conn.fetch(_ENABLED)]


async def set_state(conn: Executor, user_id: int, state: str, error: str | None) -> None:
    await conn.execute(_SET_STATE, user_id, state, error)


async def set_error(conn: Executor, user_id: int, error: str | None) -> None:
    await conn.execute(_SET_ERROR, user_id, error)


async def set_account(
    conn: Executor, user_id: int, account_id: str, name: str | None, title: str | None
) -> None:
    await conn.execute(_SET_ACCOUNT, user_id, account_id, name, title)


async def remember_account(conn: Executor, user_id: int, account_id: str, name: str | None) -> None:
    """The integration account learned while working (state and updated_at untouched)."""
    await conn.execute(_REMEMBER_ACCOUNT, user_id, account_id, name)


async def lock_cursor(conn: Executor, user_id: int) -> int | None:
    """The cursor, row-locked until the transaction ends (one feeder per operator)."""
    value = await conn.fetchval(_LOCK_CURSOR, user_id)
    return int(value) if value is not None else None


async def advance(conn: Executor, user_id: int, seq: int) -> None:
    await conn.execute(_ADVANCE, user_id, seq)


# -- what the feeder needs to know about a batch of messages -----------------------------------

_MESSAGES = """
SELECT m.id, m.conversation_id, m.direction, m.sender_type, m.idempotency_key, m.from_history,
       m.message_type, m.text_content, c.jira_bridge, c.kind, c.created_at AS conversation_created
FROM messages m JOIN conversations c ON c.id = m.conversation_id
WHERE m.id = ANY($1::bigint[])
"""
_AUTO = """
WITH won AS (
    INSERT INTO jira_auto_bridged (conversation_id) VALUES ($1) ON CONFLICT DO NOTHING
    RETURNING conversation_id
)
UPDATE conversations SET jira_bridge = true, updated_at = now()
WHERE id IN (SELECT conversation_id FROM won) AND NOT jira_bridge
RETURNING id
"""
_WAS_AUTO = "SELECT 1 FROM jira_auto_bridged WHERE conversation_id = $1"


async def messages_of(conn: Executor, ids: list[int]) -> dict[int, dict[str, Any]]:
    return {int(r["id"]): dict(r) for r in await conn.fetch(_MESSAGES, ids)}


async def auto_bridge(conn: Executor, conversation_id: int) -> bool:
    """Switch the bridge on for a chat the rule covers, once ever; True when it is now on."""
    return await conn.fetchval(_AUTO, conversation_id) is not None


async def was_auto_bridged(conn: Executor, conversation_id: int) -> bool:
    return await conn.fetchval(_WAS_AUTO, conversation_id) is not None


# -- tickets ------------------------------------------------------------------------------------

_TICKET_COLUMNS = (
    "id, user_id, session_id, conversation_id, phone, project_key, issue_key, issue_id, marker, "
    "state, status, status_category, language, create_attempts, created_at, updated_at, closed_at"
)


@dataclass(frozen=True)
class Ticket:
    id: int
    user_id: int
    session_id: int
    conversation_id: int
    phone: str | None
    project_key: str
    issue_key: str | None
    issue_id: str | None
    marker: str
    state: str
    status: str | None
    status_category: str | None
    language: str | None
    create_attempts: int
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Ticket:
        return cls(**dict(row))


_CURRENT = f"""
SELECT {_TICKET_COLUMNS} FROM jira_tickets
WHERE conversation_id = $1 AND state IN ('pending', 'open')
"""
_LATEST = f"""
SELECT {_TICKET_COLUMNS} FROM jira_tickets WHERE conversation_id = $1 ORDER BY id DESC LIMIT 1
"""
_INSERT_TICKET = f"""
INSERT INTO jira_tickets (user_id, session_id, conversation_id, phone, project_key, marker,
                          language)
VALUES ($1, $2, $3, $4, $5, 'wagate-pending-' || gen_random_uuid(), $6)
ON CONFLICT (conversation_id) WHERE state IN ('pending', 'open') DO NOTHING
RETURNING {_TICKET_COLUMNS}
"""
_SET_MARKER = f"""
UPDATE jira_tickets SET marker = $2 WHERE id = $1 RETURNING {_TICKET_COLUMNS}
"""
_CREATE_ATTEMPT = """
UPDATE jira_tickets SET create_attempts = create_attempts + 1, updated_at = now()
WHERE id = $1 RETURNING create_attempts
"""
_CREATED = f"""
UPDATE jira_tickets SET issue_key = $2, issue_id = $3, state = 'open', status = $4,
    status_category = $5, updated_at = now()
WHERE id = $1 RETURNING {_TICKET_COLUMNS}
"""
_CLOSE = """
UPDATE jira_tickets SET state = 'closed', closed_at = now(), updated_at = now()
WHERE id = $1 AND state <> 'closed'
"""
_BY_ISSUE = f"""
SELECT {_TICKET_COLUMNS} FROM jira_tickets WHERE user_id = $1 AND issue_key = $2
ORDER BY id DESC LIMIT 1
"""
_SET_STATUS = """
UPDATE jira_tickets SET status = $2, status_category = coalesce($3, status_category),
    updated_at = now()
WHERE id = $1
"""
_SET_LANGUAGE = "UPDATE jira_tickets SET language = $2 WHERE id = $1"
_LIST_TICKETS = f"""
SELECT {_TICKET_COLUMNS} FROM jira_tickets
WHERE user_id = $1 AND ($2::bigint IS NULL OR session_id = $2)
  AND ($3::bigint IS NULL OR conversation_id = $3) AND ($4::text IS NULL OR state = $4)
ORDER BY id DESC LIMIT $5
"""
_COUNT_TICKETS = """
SELECT state, count(*) AS n FROM jira_tickets WHERE user_id = $1 GROUP BY state
"""


async def current_ticket(conn: Executor, conversation_id: int) -> Ticket | None:
    row = await conn.fetchrow(_CURRENT, conversation_id)
    return Ticket.from_row(row) if row else None


_TICKET_KEYS = """
SELECT DISTINCT ON (conversation_id) conversation_id, issue_key FROM jira_tickets
WHERE conversation_id = ANY($1::bigint[]) AND issue_key IS NOT NULL
ORDER BY conversation_id, (state = 'closed'), id DESC
"""


async def ticket_keys(conn: Executor, conversation_ids: list[int]) -> dict[int, str]:
    """The issue key of each conversation's ticket (the open one, else the newest), in one
    query for a whole inbox page."""
    if not conversation_ids:
        return {}
    rows = await conn.fetch(_TICKET_KEYS, conversation_ids)
    return {int(r["conversation_id"]): str(r["issue_key"]) for r in rows}


async def latest_ticket(conn: Executor, conversation_id: int) -> Ticket | None:
    row = await conn.fetchrow(_LATEST, conversation_id)
    return Ticket.from_row(row) if row else None


async def open_ticket(
    conn: Executor,
    *,
    user_id: int,
    session_id: int,
    conversation_id: int,
    phone: str | None,
    project_key: str,
    language: str | None,
) -> Ticket:
    """The chat's pending or open ticket, a new pending one when it has none."""
    row = await conn.fetchrow(
        _INSERT_TICKET, user_id, session_id, conversation_id, phone, project_key, language
    )
    if row is None:
        found = await current_ticket(conn, conversation_id)
        assert found is not None
        return found
    ticket = Ticket.from_row(row)
    row = await conn.fetchrow(_SET_MARKER, ticket.id, f"wagate-t{ticket.id}")
    assert row is not None
    return Ticket.from_row(row)


async def create_attempt(conn: Executor, ticket_id: int) -> int:
    return int(await conn.fetchval(_CREATE_ATTEMPT, ticket_id))


async def created(
    conn: Executor,
    ticket_id: int,
    issue_key: str,
    issue_id: str | None,
    status: str | None,
    category: str | None,
) -> Ticket:
    row = await conn.fetchrow(_CREATED, ticket_id, issue_key, issue_id, status, category)
    assert row is not None
    return Ticket.from_row(row)


async def close(conn: Executor, ticket_id: int) -> None:
    await conn.execute(_CLOSE, ticket_id)


async def by_issue(conn: Executor, user_id: int, issue_key: str) -> Ticket | None:
    row = await conn.fetchrow(_BY_ISSUE, user_id, issue_key)
    return Ticket.from_row(row) if row else None


async def set_status(conn: Executor, ticket_id: int, status: str, category: str | None) -> None:
    await conn.execute(_SET_STATUS, ticket_id, status, category)


async def set_language(conn: Executor, ticket_id: int, language: str) -> None:
    await conn.execute(_SET_LANGUAGE, ticket_id, language)


async def list_tickets(
    conn: Executor,
    user_id: int,
    *,
    session_id: int | None = None,
    conversation_id: int | None = None,
    state: str | None = None,
    limit: int = 100,
) -> list[Ticket]:
    rows = await conn.fetch(_LIST_TICKETS, user_id, session_id, conversation_id, state, limit)
    return [Ticket.from_row(r) for r in rows]


async def ticket_counts(conn: Executor, user_id: int) -> dict[str, int]:
    return {str(r["state"]): int(r["n"]) for r in await conn.fetch(_COUNT_TICKETS, user_id)}


# -- comments -----------------------------------------------------------------------------------

_COMMENT = "SELECT comment_id FROM jira_comments WHERE message_id = $1 AND origin = $2"
_RECORD_COMMENT = """
INSERT INTO jira_comments (ticket_id, message_id, comment_id, origin) VALUES ($1, $2, $3, $4)
ON CONFLICT (message_id, origin) DO NOTHING
"""
_OURS = """
SELECT 1 FROM jira_comments c JOIN jira_tickets t ON t.id = c.ticket_id
WHERE t.user_id = $1 AND c.comment_id = $2 AND c.origin = 'whatsapp'
"""
_COMMENTS_OF = """
SELECT c.message_id, c.comment_id, c.origin FROM jira_comments c WHERE c.ticket_id = $1
ORDER BY c.created_at, c.message_id
"""


async def comment_of(conn: Executor, message_id: int, origin: str) -> tuple[bool, str | None]:
    """(whether the message was bridged, the comment's id)."""
    row = await conn.fetchrow(_COMMENT, message_id, origin)
    return (row is not None, row["comment_id"] if row else None)


async def record_comment(
    conn: Executor, ticket_id: int, message_id: int, comment_id: str | None, origin: str
) -> None:
    await conn.execute(_RECORD_COMMENT, ticket_id, message_id, comment_id, origin)


async def is_our_comment(conn: Executor, user_id: int, comment_id: str) -> bool:
    return await conn.fetchval(_OURS, user_id, comment_id) is not None


async def comments_of(conn: Executor, ticket_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(_COMMENTS_OF, ticket_id)]


# -- webhook deliveries ---------------------------------------------------------------------------

_TAKE_DELIVERY = """
INSERT INTO jira_webhook_deliveries (user_id, identifier, event) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING RETURNING 1
"""


async def take_delivery(conn: Executor, user_id: int, identifier: str, event: str) -> bool:
    """True the first time a delivery is seen, False for Jira's retries of it."""
    return await conn.fetchval(_TAKE_DELIVERY, user_id, identifier, event) is not None


# -- the lane-ordered outbox claim ----------------------------------------------------------------

KIND_PREFIX = "jira_"
# Each lane's head (its oldest waiting or running job) is found by a loose index scan over
# `outbox_jira_lane_idx` (one probe per lane), not by checking every waiting job against its
# lane: with thousands of jobs queued (Jira slow or down) the older form cost O(backlog) per
# claim, and as a claim follows every finished job the bridge slowed down as its backlog grew.
_CLAIM = """
WITH RECURSIVE heads AS (
    (SELECT payload->>'lane' AS lane, id FROM outbox
     WHERE kind LIKE 'jira\\_%' AND state IN ('pending', 'running')
     ORDER BY payload->>'lane', id LIMIT 1)
    UNION ALL
    SELECT next.lane, next.id FROM heads h CROSS JOIN LATERAL (
        SELECT payload->>'lane' AS lane, id FROM outbox
        WHERE kind LIKE 'jira\\_%' AND state IN ('pending', 'running')
          AND payload->>'lane' > h.lane
        ORDER BY payload->>'lane', id LIMIT 1) next
)
UPDATE outbox SET state = 'running', attempts = attempts + 1,
    locked_until = now() + make_interval(secs => $2), updated_at = now()
WHERE id IN (
    SELECT o.id FROM heads JOIN outbox o ON o.id = heads.id
    WHERE ((o.state = 'pending' AND o.next_attempt_at <= now())
           OR (o.state = 'running' AND o.locked_until < now()))
      AND NOT EXISTS (
          SELECT 1 FROM jira_connections j
          WHERE j.user_id = (o.payload->>'user')::bigint AND j.state = 'rejected')
    ORDER BY o.id
    LIMIT $1
    FOR UPDATE OF o SKIP LOCKED
)
RETURNING id, kind, session_id, payload::text AS payload, attempts
"""
# The lane's next job, right after its previous one finished (no scan of the other lanes). A
# concurrent claim of the same row makes this one re-check `state` after the row lock and take
# nothing.
_CLAIM_NEXT = """
UPDATE outbox SET state = 'running', attempts = attempts + 1,
    locked_until = now() + make_interval(secs => $2), updated_at = now()
WHERE id = (
    SELECT id FROM outbox
    WHERE kind LIKE 'jira\\_%' AND state IN ('pending', 'running') AND payload->>'lane' = $1
    ORDER BY payload->>'lane', id LIMIT 1)
  AND state = 'pending' AND next_attempt_at <= now()
  AND NOT EXISTS (
      SELECT 1 FROM jira_connections j
      WHERE j.user_id = (outbox.payload->>'user')::bigint AND j.state = 'rejected')
RETURNING id, kind, session_id, payload::text AS payload, attempts
"""
_PENDING = """
SELECT count(*) FROM outbox
WHERE kind LIKE 'jira\\_%' AND state IN ('pending', 'running') AND payload->>'user' = $1
"""
_FAILED = """
SELECT count(*) FROM outbox WHERE kind LIKE 'jira\\_%' AND state = 'failed'
  AND payload->>'user' = $1
"""
_DEFER = """
UPDATE outbox SET state = 'pending', next_attempt_at = $3, last_error = $2, locked_until = NULL,
    attempts = greatest(attempts - 1, 0), updated_at = now()
WHERE id = $1 AND state = 'running'
"""


async def claim(conn: Executor, limit: int, lease_seconds: float) -> list[OutboxItem]:
    rows = sorted(await conn.fetch(_CLAIM, limit, lease_seconds), key=lambda r: r["id"])
    return [
        OutboxItem(r["id"], r["kind"], r["session_id"], json.loads(r["payload"]), r["attempts"])
        for r in rows
    ]


async def claim_next(conn: Executor, lane: str, lease_seconds: float) -> OutboxItem | None:
    """The lane's next job when it is due and nobody holds it (else None)."""
    r = await conn.fetchrow(_CLAIM_NEXT, lane, lease_seconds)
    if r is None:
        return None
    return OutboxItem(r["id"], r["kind"], r["session_id"], json.loads(r["payload"]), r["attempts"])


_RELEASE = """
UPDATE outbox SET state = 'pending', locked_until = NULL, next_attempt_at = now(),
    updated_at = now()
WHERE id = ANY($1::bigint[]) AND state = 'running'
"""


async def release(conn: Executor, item_ids: list[int]) -> None:
    """Jobs this process claimed and stopped before finishing: due again now. Their attempt
    still counts, so their retry looks for a comment the interrupted one may have made."""
    await conn.execute(_RELEASE, item_ids)


async def defer(conn: Executor, item_id: int, reason: str, at: datetime) -> None:
    """Try again at `at` without counting this as a failed attempt (waiting for media)."""
    await conn.execute(_DEFER, item_id, reason, at)


async def pending_jobs(conn: Executor, user_id: int) -> tuple[int, int]:
    """(jobs waiting or running, jobs failed for good) of an operator."""
    waiting = int(await conn.fetchval(_PENDING, str(user_id)))
    failed = int(await conn.fetchval(_FAILED, str(user_id)))
    return waiting, failed
