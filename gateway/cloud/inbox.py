"""The durable webhook inbox: group commit before the 200, processing from the table after it.

`GroupCommitter`: each webhook request hands its raw body over and waits; whatever requests
arrived meanwhile are written by ONE multi-row INSERT (one commit, one WAL flush) and all of them
are answered together. At most `max_inflight` batches are being committed at once, so under load
the batches grow instead of the commits queueing: the throughput of durable-before-200 is many
requests per fsync, not one.

`InboxProcessor`: reads unprocessed events in the order their events happened, stores what they
say and marks them done in the same transaction, so a crash after the 200 and before the
processing replays them, and a crash after processing never processes them twice.

Both keep their pool connections while they are busy (a connection given back to asyncpg's pool
is reset with one more round trip) and give them back after a second without work. While
webhooks keep arriving the processor waits a moment between batches, so it stores larger batches
less often and leaves the event loop to the requests waiting for their commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from db import cloud as cloud_db
from db.cloud import InboxRow, PendingEvent
from sessions.backoff import Backoff

log = structlog.get_logger(__name__)


class GroupCommitter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 200,
        max_inflight: int = 2,
        committed: Callable[[int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._committed = committed
        self._waiting: list[tuple[InboxRow, asyncio.Future[None]]] = []
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = IdleConnections(pool)
        self.batches = 0
        self.rows = 0

    async def commit(self, row: InboxRow) -> None:
        """Return once `row` is committed (raises if the database refused the batch)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((row, future))
        self._kick()
        await future

    def _kick(self) -> None:
        while self._waiting and self._inflight < self._max_inflight:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(
                self._flush(batch), context=contextvars.Context()
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[InboxRow, asyncio.Future[None]]]) -> None:
        try:
            conn = await self._idle.take()
            try:
                await cloud_db.insert_events(conn, [row for row, _ in batch])
            except BaseException:
                await self._idle.discard(conn)  # broken, or in an unknown state
                raise
            self._idle.give_back(conn)
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        exc if isinstance(exc, Exception) else RuntimeError("cancelled")
                    )
            if not isinstance(exc, Exception):
                raise
        else:
            self.batches += 1
            self.rows += len(batch)
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
            if self._committed is not None:
                self._committed(len(batch))
        finally:
            self._inflight -= 1
            self._kick()

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._idle.release_all()


class IdleConnections:
    """Pool connections kept between batches while there is work, given back to the pool after
    `IDLE_SECONDS` without any."""

    IDLE_SECONDS = 1.0

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._idle: list[Any] = []
        self._used_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    async def take(self) -> Any:
        if self._idle:
            return self._idle.pop()
        return await self._pool.acquire()

    def give_back(self, conn: Any) -> None:
        loop = asyncio.get_running_loop()
        self._idle.append(conn)
        self._used_at = loop.time()
        if self._timer is None:
            self._timer = loop.call_later(self.IDLE_SECONDS, self._expire)

    async def discard(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            await self._pool.release(conn)

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        left = self._used_at + self.IDLE_SECONDS - loop.time()
        if left > 0.01:
            self._timer = loop.call_later(left, self._expire)
            return
        idle, self._idle = self._idle, []
        for conn in idle:
            task = loop.create_task(self.discard(conn), context=contextvars.Context())
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def release_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        idle, self._idle = self._idle, []
        for conn in idle:
            await self.discard(conn)
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)


# (connection inside the transaction, the claimed events) -> something to do after the commit
Process = Callable[[Any, list[PendingEvent]], Awaitable[Callable[[], Awaitable[None]]]]


class InboxProcessor:
    """One task that drains the inbox; woken by the committer, polling as a fallback."""

    POLL_SECONDS = 1.0
    # While webhooks keep being committed, the processor pauses after each batch for as long as
    # the batch took (at least this long): fewer, larger transactions, and at least half of the
    # event loop left to the requests waiting for their commit. Processing falls behind only
    # while the webhook load exceeds what the other half can process, and catches up after.
    GATHER_SECONDS = 0.05
    # "Webhooks keep being committed": at least HOT_ROWS in the current or the previous window
    # of HOT_SECONDS (500 a second); a few webhooks now and then are processed at once.
    HOT_SECONDS = 0.1
    HOT_ROWS = 50

    def __init__(self, pool: asyncpg.Pool, process: Process, *, batch: int = 200) -> None:
        self._pool = pool
        self._process = process
        self._batch = batch
        self._window_at = 0.0
        self._window_rows = 0
        self._previous_rows = 0
        self._idle = IdleConnections(pool)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.processed = 0

    def wake(self, rows: int = 1) -> None:
        """`rows` new events were committed (or, with the default, something else is due)."""
        now = time.monotonic()
        if now - self._window_at >= self.HOT_SECONDS:
            recent = now - self._window_at < 2 * self.HOT_SECONDS
            self._previous_rows = self._window_rows if recent else 0
            self._window_at = now
            self._window_rows = 0
        self._window_rows += rows
        self._wake.set()

    @property
    def _hot(self) -> bool:
        if time.monotonic() - self._window_at >= 2 * self.HOT_SECONDS:
            return False
        return max(self._window_rows, self._previous_rows) >= self.HOT_ROWS

    def start(self) -> None:
        self._stopping = False
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), context=contextvars.Context()
            )

    async def stop(self, timeout: float = 2.0) -> None:
        """Let the current batch finish (a cancel in the middle of a connection's set-up would
        leak it), then end; cancel only after `timeout`."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def drain_once(self) -> int:
        """Process one batch; how many events it held."""
        after: Callable[[], Awaitable[None]] | None = None
        conn = await self._idle.take()
        try:
            async with conn.transaction():
                pending = await cloud_db.claim_pending(conn, self._batch)
                if pending:
                    after = await self._process(conn, pending)
        except BaseException:
            await self._idle.discard(conn)
            raise
        self._idle.give_back(conn)
        if after is None:
            return 0
        self.processed += len(pending)
        await after()
        return len(pending)

    async def _run(self) -> None:
        backoff = Backoff(base=0.2, cap=10.0)
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    while not self._stopping:
                        started = time.monotonic()
                        if not await self.drain_once():
                            break
                        backoff.reset()
                        if self._hot and not self._stopping:
                            # Requests are waiting for their commits: at most half of the loop
                            # goes to processing, in batches that grow meanwhile.
                            took = time.monotonic() - started
                            await asyncio.sleep(max(self.GATHER_SECONDS, took))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    delay = backoff.next_delay()
                    log.exception("cloud inbox processing failed; retrying", retry_in=delay)
                    await asyncio.sleep(delay)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.POLL_SECONDS)
        finally:
            await self._idle.release_all()
