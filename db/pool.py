"""The asyncpg connection pool: created with retries, JSON codecs installed on every connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from db import Conn, Executor

log = logging.getLogger(__name__)


class DatabaseUnavailableError(RuntimeError):
    """The database did not answer within the start-up window."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(
    url: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    connect_timeout: float = 30.0,
    **kwargs: Any,
) -> asyncpg.Pool:
    """Open a pool, retrying with backoff while the server is starting or briefly away."""
    deadline = time.monotonic() + connect_timeout
    delay = 0.1
    while True:
        try:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                command_timeout=60,
                **kwargs,
            )
            return pool
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError) as exc:
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailableError(
                    f"database unreachable after {connect_timeout:.0f}s: {exc}"
                ) from exc
            log.warning("database not reachable yet (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def connect(url: str) -> asyncpg.Connection:
    """One connection with the pool's codecs, for CLI commands and migrations."""
    conn: asyncpg.Connection = await asyncpg.connect(url)
    await _init_connection(conn)
    return conn


@contextlib.asynccontextmanager
async def custom_plans(executor: Executor) -> AsyncIterator[Conn]:
    """A connection whose statements are planned for their actual parameters: a text query's
    best plan depends on how common its words are, which a generic plan cannot know."""
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(executor, asyncpg.Pool):
            conn: Conn = await stack.enter_async_context(executor.acquire())
        else:
            conn = executor
        await stack.enter_async_context(conn.transaction())
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        yield conn
