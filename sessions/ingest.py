"""Storing one session's durable events: group commits, acknowledgements after the commit, and
history kept off the live path.

Frames arrive in sequence order from the worker. Live frames and history frames go to two
queues with a task each, so a history import of thousands of messages never delays a live
message. The worker may forget an event only when it and every event before it are stored, so
acknowledgements follow the longest stored prefix (`AckTracker`), whichever queue finished first.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import asyncpg

from sessions import events, ipc
from sessions.backoff import Backoff
from sessions.store import Changes, StoreOptions, store_events

log = logging.getLogger(__name__)

MAX_BATCH = 500
# Errors that retrying the same data can never fix (bad values, broken constraints, our bugs);
# anything else (connections, timeouts) is retried as it is.
POISON = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    ValueError,
    TypeError,
    KeyError,
)


class AckTracker:
    """The highest sequence number below which every arrived frame is stored."""

    def __init__(self) -> None:
        self._arrived: deque[int] = deque()
        self._done: set[int] = set()

    def arrived(self, seq: int) -> None:
        self._arrived.append(seq)

    def completed(self, seqs: list[int]) -> int | None:
        """Mark `seqs` stored; return the new watermark if it moved."""
        self._done.update(seqs)
        top = None
        while self._arrived and self._arrived[0] in self._done:
            top = self._arrived.popleft()
        if not self._arrived:
            self._done.clear()
        return top

    @property
    def pending(self) -> int:
        return len(self._arrived)


class IngestObserver(Protocol):
    """Told after every commit (metrics): which queue, each fresh event's seconds from reaching
    Python in the worker to the commit, and what the batch changed. Must not block or raise."""

    def committed(
        self, session_id: int, queue: str, delays: list[float], changes: Changes
    ) -> None: ...


def is_history(frame: ipc.EventFrame) -> bool:
    return any(isinstance(ev, events.HistoryChunk) for ev in frame.events)


class SessionIngest:
    def __init__(
        self,
        session_id: int,
        pool: asyncpg.Pool,
        *,
        options: StoreOptions,
        ack: Callable[[int], None],
        publish: Callable[[Changes], Awaitable[None]],
        history_progress: Callable[[events.HistoryChunk, Changes], Awaitable[None]],
        observer: IngestObserver | None = None,
    ) -> None:
        self.session_id = session_id
        self._pool = pool
        self._options = options
        self._ack = ack
        self._publish = publish
        self._history_progress = history_progress
        self._observer = observer
        self._tracker = AckTracker()
        self._live: asyncio.Queue[ipc.EventFrame] = asyncio.Queue()
        self._history: asyncio.Queue[ipc.EventFrame] = asyncio.Queue()
        context = contextvars.Context()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(self._live, MAX_BATCH, "live"), context=context),
            loop.create_task(self._run(self._history, 1, "history"), context=context),
        ]
        self.stored = 0
        self.dropped = 0

    def put(self, frame: ipc.EventFrame) -> None:
        self._tracker.arrived(frame.seq)
        (self._history if is_history(frame) else self._live).put_nowait(frame)

    @property
    def backlog(self) -> int:
        return self._live.qsize() + self._history.qsize()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _one_by_one(self, batch: list[ipc.EventFrame]) -> Changes:
        changes = Changes()
        for frame in batch:
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    await store_events(conn, self.session_id, frame.events, changes, self._options)
            except POISON as exc:
                self.dropped += 1
                log.error(
                    "session %s: event %s set aside, it can not be stored: %s; events: %s",
                    self.session_id,
                    frame.seq,
                    exc,
                    [ev.model_dump_json()[:500] for ev in frame.events],
                )
        return changes

    def _observe(self, queue: str, batch: list[ipc.EventFrame], changes: Changes) -> None:
        if self._observer is None:
            return
        now = time.time()
        delays = [now - f.arrived_at for f in batch if f.arrived_at is not None and not f.replayed]
        try:
            self._observer.committed(self.session_id, queue, delays, changes)
        except Exception:
            log.exception("session %s: ingest observer failed", self.session_id)

    async def _run(self, queue: asyncio.Queue[ipc.EventFrame], max_batch: int, name: str) -> None:
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < max_batch:
                batch.append(queue.get_nowait())
            while True:
                try:
                    changes = Changes()
                    async with self._pool.acquire() as conn, conn.transaction():
                        await store_events(
                            conn,
                            self.session_id,
                            [ev for frame in batch for ev in frame.events],
                            changes,
                            self._options,
                        )
                    break
                except asyncio.CancelledError:
                    raise
                except POISON as exc:
                    # Something in this batch can never be stored: store the frames one by one
                    # and set aside only the ones that fail, so one bad event can not stop a
                    # session's storage for good.
                    log.error("session %s: a batch can not be stored (%s)", self.session_id, exc)
                    changes = await self._one_by_one(batch)
                    break
                except Exception as exc:
                    # Nothing was acknowledged: the worker keeps these spooled. Retry here.
                    delay = backoff.next_delay()
                    log.warning(
                        "session %s: storing events failed (%s); retry in %.1fs",
                        self.session_id,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
            backoff.reset()
            self._observe(name, batch, changes)
            self.stored += len(batch)
            top = self._tracker.completed([frame.seq for frame in batch])
            if top is not None:
                self._ack(top)
            await self._publish(changes)
            for frame in batch:
                for ev in frame.events:
                    if isinstance(ev, events.HistoryChunk):
                        await self._history_progress(ev, changes)
