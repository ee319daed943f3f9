"""Housekeeping: finished bookkeeping rows are deleted once they are older than
`WAGATE_HOUSEKEEPING_KEEP_DAYS`, so a gateway left alone for months does not grow its database
without bound.

What goes: outbox jobs that are `done`, Cloud API webhook bodies that were processed (`done`)
or named an unknown number, and the ids of Jira webhook deliveries (kept only to drop Jira's
retries, which stop long before). What stays: messages, conversations, contacts, media, the
event log (clients and webhook replays read it), failed jobs and failed webhook bodies (for
the operator to look at). Each table is emptied in small batches, so nothing waits on a long
delete; several gateway nodes may run it at once (a batch takes rows no one else holds).
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog
from prometheus_client import Counter

log = structlog.get_logger(__name__)

DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
BATCH = 5000
EVERY_SECONDS = 3600.0
FIRST_AFTER_SECONDS = 60.0  # not during start-up, which is busy enough

# Each statement deletes at most $2 rows older than $1 days and answers how many it deleted.
_PRUNE: dict[str, str] = {
    "outbox": """
        WITH gone AS (
            DELETE FROM outbox WHERE id IN (
                SELECT id FROM outbox
                WHERE state = 'done' AND done_at < now() - make_interval(days => $1)
                LIMIT $2 FOR UPDATE SKIP LOCKED)
            RETURNING 1)
        SELECT count(*) FROM gone""",
    "cloud_webhook_events": """
        WITH gone AS (
            DELETE FROM cloud_webhook_events WHERE id IN (
                SELECT id FROM cloud_webhook_events
                WHERE state IN ('done', 'unknown_number')
                  AND received_at < now() - make_interval(days => $1)
                LIMIT $2 FOR UPDATE SKIP LOCKED)
            RETURNING 1)
        SELECT count(*) FROM gone""",
    "jira_webhook_deliveries": """
        WITH gone AS (
            DELETE FROM jira_webhook_deliveries WHERE (user_id, identifier) IN (
                SELECT user_id, identifier FROM jira_webhook_deliveries
                WHERE received_at < now() - make_interval(days => $1)
                LIMIT $2 FOR UPDATE SKIP LOCKED)
            RETURNING 1)
        SELECT count(*) FROM gone""",
}


class Housekeeper:
    def __init__(
        self,
        pool: asyncpg.Pool,
        keep_days: int,
        deleted: Counter | None = None,
        every: float = EVERY_SECONDS,
    ) -> None:
        self.pool = pool
        self.keep_days = keep_days
        self.deleted = deleted
        self.every = every
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> dict[str, int]:
        """One round over every table; how many rows each lost."""
        counts: dict[str, int] = {}
        for table, sql in _PRUNE.items():
            total = 0
            while True:
                n = int(await self.pool.fetchval(sql, self.keep_days, BATCH) or 0)
                total += n
                if n < BATCH:
                    break
                await asyncio.sleep(0)  # let the gateway's own work through between batches
            counts[table] = total
            if self.deleted is not None and total:
                self.deleted.labels(table).inc(total)
        if any(counts.values()):
            log.info("housekeeping", keep_days=self.keep_days, **counts)
        return counts

    async def _loop(self) -> None:
        await asyncio.sleep(FIRST_AFTER_SECONDS)
        while True:
            try:
                await self.run_once()
            except DB_ERRORS as exc:
                log.warning("housekeeping interrupted by the database", error=str(exc))
            except Exception:
                log.exception("housekeeping failed")
            await asyncio.sleep(self.every)

    def start(self) -> None:
        if self.keep_days > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
