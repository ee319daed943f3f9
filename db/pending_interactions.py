"""The `pending_interactions` table: changes to messages we do not have yet."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from db import Executor

_PARK = """
INSERT INTO pending_interactions (session_id, wa_message_id, target_wa_id, payload)
VALUES ($1, $2, $3, $4::text::jsonb)
ON CONFLICT (session_id, wa_message_id) DO NOTHING
"""
_TAKE = """
DELETE FROM pending_interactions
WHERE session_id = $1 AND target_wa_id = ANY($2::text[])
RETURNING payload::text AS payload
"""


async def park(
    conn: Executor, session_id: int, wa_message_id: str, target: str, payload: dict[str, Any]
) -> None:
    await conn.execute(_PARK, session_id, wa_message_id, target, json.dumps(payload))


async def take(conn: Executor, session_id: int, targets: list[str]) -> list[dict[str, Any]]:
    """Remove and return what was waiting for any of `targets`, oldest first."""
    if not targets:
        return []
    rows = await conn.fetch(_TAKE, session_id, targets)
    return [json.loads(r["payload"]) for r in rows]
