"""Outgoing webhooks: the durable event log, POSTed in order to each operator's URLs.

Each enabled webhook is a cursor over its owner's event log (`webhooks.last_seq`). One
`WebhookLane` (an asyncio task) per webhook reads the events after the cursor, sends those its
filter wants one at a time, and moves the cursor only after a 2xx: so delivery is at least once
and in `seq` order, and a later event never overtakes an earlier one that is still failing.
A failure is retried with capped exponential backoff and jitter for `WAGATE_WEBHOOKS_RETRY_HOURS`;
then the webhook is parked as `failing` until the operator replays it or enables it again. A 410
disables it. Each lane has its own kept-alive connection (`gateway.webhook_http`) and shares
nothing else with the others, so a slow or dead endpoint delays only its own webhook.

`WebhookDispatcher` runs the lanes. It holds a PostgreSQL advisory lock per webhook on a
connection of its own, so with several gateway processes exactly one delivers a given webhook,
and a killed process's locks vanish with its connection. Lanes wake on the in-process event bus
and on a one-second check of the event counters (events published by other processes).
Cursor moves and attempt records are written in batches every few tens of milliseconds: a crash
can send again what was delivered in the last batch window (receivers dedupe on
`X-Wagate-Delivery`), never skip anything.

Target addresses are checked when a webhook is saved (the literal host) and at every delivery
(each address the name resolves to; the connection goes only to the addresses checked), so a
DNS name that later points inside the network (DNS rebinding) is refused as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

import asyncpg
import structlog

from db import webhooks as webhooks_db
from db.webhooks import Advance, Attempt, LoggedRaw, Webhook
from gateway import __version__
from gateway.bus import BusEvent, EventBus
from gateway.security import SecretBox
from gateway.settings import Settings
from gateway.targets import GuardedResolver, url_refusal
from gateway.webhook_http import WebhookConnection, WebhookHttpError
from sessions.backoff import Backoff

log = structlog.get_logger(__name__)

# Events a webhook may ask for ("*": all of them). `webhook-test` goes only to the webhook
# whose "send test event" was pressed.
EventName = Literal[
    "*",
    "message-new",
    "message-status",
    "message-updated",
    "session-state",
    "session-ready",
    "session-closed",
    "conversation-updated",
    "conversation-merged",
    "history-progress",
    "error",
]
WEBHOOK_EVENTS = tuple(name for name in get_args(EventName) if name != "*")
TEST_EVENT = "webhook-test"
NOTIFY_CHANNEL = "wagate_webhooks"
# pg_try_advisory_lock(LOCK_SPACE, webhook id): "one process delivers this webhook".
LOCK_SPACE = 0x5748  # "WH"
DELIVERY_NAMESPACE = uuid.UUID("6f1d3c2e-8a4b-5c7d-9e0f-1a2b3c4d5e6f")
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

BATCH = 200  # events read from the log at a time
IDLE_POLL_SECONDS = 5.0  # a lane with nothing to do looks again at least this often
REFRESH_SECONDS = 1.0  # the dispatcher reconciles lanes and checks counters this often
FLUSH_SECONDS = 0.05  # cursor moves and attempt records are written this often
HISTORY = 200  # attempt records kept per webhook
# Per webhook and batch, every failed attempt is recorded but only the latest successes: under
# load a busy webhook would otherwise write a row per event for a history that keeps 200.
SUCCESSES_PER_BATCH = 20
PRUNE_SECONDS = 10.0
MAX_BUFFERED_ATTEMPTS = 20_000  # while the database is away


def delivery_id(webhook_id: int, seq: int) -> str:
    """The id of delivering event `seq` to a webhook: the same on every retry and restart."""
    return str(uuid.uuid5(DELIVERY_NAMESPACE, f"{webhook_id}:{seq}"))


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`X-Wagate-Signature`: HMAC-SHA256 of `timestamp + "." + body` with the secret."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def body_of(
    delivery: str, seq: int | None, event: str, session_id: int | None, created: datetime, data: str
) -> bytes:
    """The JSON body; `data` is the event's payload as stored (JSON text)."""
    head = json.dumps(
        {
            "id": delivery,
            "seq": seq,
            "event": event,
            "session_id": session_id,
            "created_at": created.isoformat(),
        },
        separators=(",", ":"),
    )
    return (head[:-1] + ',"data":' + data + "}").encode()


# -- where a webhook may point ---------------------------------------------------------------


# -- one request -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: int | None
    latency_ms: int
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


async def post(
    conn: WebhookConnection,
    *,
    secret: str,
    event: str,
    delivery: str,
    body: bytes,
    timeout: float,
    refusal: str | None = None,
) -> Outcome:
    """One signed POST (unless `refusal` says why the URL's host may not be reached). Never
    raises for what the endpoint does."""
    started = time.monotonic()
    if refusal is not None:
        return Outcome(None, 0, refusal)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Wagate-Event": event,
        "X-Wagate-Delivery": delivery,
        "X-Wagate-Timestamp": timestamp,
        "X-Wagate-Signature": sign(secret, timestamp, body),
    }
    try:
        status = await conn.post(headers, body, timeout)
    except TimeoutError:
        return Outcome(None, _ms(started), "timed out")
    except WebhookHttpError as exc:
        return Outcome(None, _ms(started), str(exc)[:500])
    except (OSError, ValueError) as exc:
        return Outcome(None, _ms(started), f"{type(exc).__name__}: {exc}"[:500])
    error = None if 200 <= status < 300 else f"HTTP {status}"
    return Outcome(status, _ms(started), error)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def retry_sleep(seconds: float) -> None:
    """The wait before a retry (tests replace it: they never wait out a backoff)."""
    await asyncio.sleep(seconds)


class Parked(Exception):
    """The webhook stopped delivering (failing or disabled); its lane ends."""


# -- the lanes -----------------------------------------------------------------------------------


@dataclass
class DispatcherConfig:
    allow_private: bool = False
    timeout: float = 10.0
    retry_horizon: timedelta = timedelta(hours=24)
    backoff_base: float = 1.0
    backoff_cap: float = 900.0
    flush_seconds: float = FLUSH_SECONDS
    refresh_seconds: float = REFRESH_SECONDS


def webhook_config(settings: Settings) -> DispatcherConfig:
    return DispatcherConfig(
        allow_private=settings.webhooks_allow_private,
        timeout=settings.webhooks_timeout_seconds,
        retry_horizon=timedelta(hours=settings.webhooks_retry_hours),
        backoff_cap=settings.webhooks_backoff_max_seconds,
    )


class WebhookLane:
    """Delivers one webhook's events, in order, one at a time."""

    def __init__(self, dispatcher: WebhookDispatcher, webhook_id: int, user_id: int, gen: int):
        self.dispatcher = dispatcher
        self.webhook_id = webhook_id
        self.user_id = user_id
        self.generation = gen
        self.cursor = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._backoff = Backoff(
            base=dispatcher.config.backoff_base, cap=dispatcher.config.backoff_cap, jitter=0.2
        )

    async def run(self) -> None:
        while True:
            try:
                await self._deliver_all()
                return
            except Parked:
                return
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                log.warning(
                    "webhook lane: database unavailable", webhook_id=self.webhook_id, error=str(exc)
                )
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("webhook lane failed", webhook_id=self.webhook_id)
                await asyncio.sleep(5.0)

    async def _deliver_all(self) -> None:
        d = self.dispatcher
        hook = await webhooks_db.get(d.pool, self.webhook_id)
        if hook is None or hook.generation != self.generation or not hook.enabled:
            return  # changed meanwhile: the dispatcher starts a fresh lane
        secret = d.box.open(hook.secret_encrypted)
        self.cursor = max(self.cursor, hook.last_seq)
        conn = d.connection(hook.url)
        try:
            await self._deliver_from(hook, secret, conn)
        finally:
            conn.close()

    async def _deliver_from(self, hook: Webhook, secret: str, conn: WebhookConnection) -> None:
        d = self.dispatcher
        attempts, failing_since = hook.attempts, hook.failing_since
        if hook.next_attempt_at is not None:
            wait = (hook.next_attempt_at - datetime.now(UTC)).total_seconds()
            if wait > 0:
                await retry_sleep(wait)
        while True:
            self.wake.clear()
            batch = await webhooks_db.events_after(d.pool, hook.user_id, self.cursor, BATCH)
            if not batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), IDLE_POLL_SECONDS)
                continue
            for event in batch:
                if hook.wants(event.event, event.session_id):
                    attempts, failing_since = await self._deliver(
                        hook, secret, conn, event, attempts, failing_since
                    )
                    continue
                self.cursor = event.seq
                d.advance(Advance(hook.id, hook.generation, event.seq, None, None))

    async def _deliver(
        self,
        hook: Webhook,
        secret: str,
        conn: WebhookConnection,
        event: LoggedRaw,
        attempts: int,
        failing_since: datetime | None,
    ) -> tuple[int, datetime | None]:
        """Send one event until it is delivered; returns the (reset) retry state."""
        d = self.dispatcher
        delivery = delivery_id(hook.id, event.seq)
        refusal = url_refusal(hook.url, allow_private=d.config.allow_private)
        body = body_of(
            delivery, event.seq, event.event, event.session_id, event.created_at, event.payload
        )
        while True:
            outcome = await post(
                conn,
                secret=secret,
                event=event.event,
                delivery=delivery,
                body=body,
                timeout=d.config.timeout,
                refusal=refusal,
            )
            attempts += 1
            now = datetime.now(UTC)
            d.record(
                Attempt(
                    hook.id,
                    delivery,
                    event.seq,
                    event.event,
                    attempts,
                    outcome.status,
                    outcome.latency_ms,
                    outcome.delivered,
                    outcome.error,
                    now,
                )
            )
            if outcome.delivered:
                self.cursor = event.seq
                d.delivered += 1
                d.advance(Advance(hook.id, hook.generation, event.seq, now, outcome.status))
                if d.on_delivered is not None:
                    d.on_delivered(hook.id, event.seq, event.created_at)
                return 0, None
            failing_since = failing_since or now
            error = outcome.error or "failed"
            if outcome.status == 410:
                await self._park(hook, "disabled", "the endpoint answered 410 Gone", 410)
            if now - failing_since >= d.config.retry_horizon:
                await self._park(
                    hook,
                    "failing",
                    f"gave up on seq {event.seq} after {attempts} attempts: {error}",
                    outcome.status,
                )
            self._backoff.attempt = min(attempts - 1, 30)
            delay = self._backoff.next_delay()
            await d.flush()
            await webhooks_db.retrying(
                d.pool,
                hook.id,
                hook.generation,
                attempts=attempts,
                next_attempt_at=now + timedelta(seconds=delay),
                failing_since=failing_since,
                error=f"seq {event.seq}: {error}",
                status=outcome.status,
            )
            log.info(
                "webhook delivery failed; retrying",
                webhook_id=hook.id,
                seq=event.seq,
                attempt=attempts,
                delay=round(delay, 2),
                error=error,
            )
            await retry_sleep(delay)

    async def _park(self, hook: Webhook, state: str, error: str, status: int | None) -> None:
        d = self.dispatcher
        await d.flush()
        await webhooks_db.park(d.pool, hook.id, hook.generation, state, error, status)
        log.warning("webhook parked", webhook_id=hook.id, state=state, error=error)
        raise Parked(state)


# -- the dispatcher ------------------------------------------------------------------------------


@dataclass
class _Buffer:
    advances: dict[int, Advance] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)


class WebhookDispatcher:
    """Runs one lane per deliverable webhook this process holds the lock of."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        database_url: str,
        box: SecretBox,
        bus: EventBus | None = None,
        config: DispatcherConfig | None = None,
        *,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.pool = pool
        self._observe = observe
        self.box = box
        self.config = config or DispatcherConfig()
        self._url = database_url
        self._bus = bus
        self._unsubscribe: Callable[[], None] | None = None
        self.resolver = GuardedResolver(allow_private=self.config.allow_private)
        self._tls: ssl.SSLContext | None = None
        self._lock_conn: asyncpg.Connection | None = None
        self._locked: set[int] = set()
        self._lanes: dict[int, WebhookLane] = {}
        self._by_user: dict[int, set[WebhookLane]] = {}
        self._changed = asyncio.Event()
        self._buffer = _Buffer()
        self._flush_lock = asyncio.Lock()
        self._touched: set[int] = set()
        self._last_prune = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._side: set[asyncio.Task[Any]] = set()
        self.delivered = 0
        # Benchmarks hook in here: (webhook id, seq, event created_at) after each 2xx.
        self.on_delivered: Callable[[int, int, datetime], None] | None = None

    # -- life cycle

    async def start(self) -> None:
        self._tls = ssl.create_default_context()
        if self._bus is not None:
            self._unsubscribe = self._bus.subscribe(self._on_event)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._supervise()), loop.create_task(self._flusher())]

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in [*self._tasks, *self._side]:
            task.cancel()
        await self._stop_lanes(list(self._lanes))
        for task in [*self._tasks, *self._side]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(*DB_ERRORS):
            await self.flush()
        await self._drop_lock_conn()
        await self.resolver.close()

    def connection(self, url: str) -> WebhookConnection:
        """A (lazily opened) connection to a webhook's URL."""
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return WebhookConnection(
            url, resolver=self.resolver, tls=self._tls, user_agent=f"wagate-webhooks/{__version__}"
        )

    def changed(self) -> None:
        """A webhook was created, changed or removed here: reconcile now."""
        self._changed.set()

    async def _on_event(self, item: BusEvent) -> None:
        if item.seq is None:
            return
        for lane in self._by_user.get(item.user_id, ()):
            lane.wake.set()

    # -- which lanes run

    async def _supervise(self) -> None:
        while True:
            self._changed.clear()
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                log.warning("webhooks: database unavailable", error=str(exc))
                await self._stop_lanes(list(self._lanes))
                await self._drop_lock_conn()
            except Exception:
                log.exception("webhooks: reconcile failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.config.refresh_seconds)

    async def _lock_connection(self) -> asyncpg.Connection:
        conn = self._lock_conn
        if conn is not None and not conn.is_closed():
            return conn
        await self._drop_lock_conn()
        conn = await asyncpg.connect(self._url, timeout=10)
        try:
            await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        except BaseException:
            conn.terminate()  # cancelled (stopping) or failed before it was kept: not leaked
            raise
        self._lock_conn = conn
        return conn

    def _notified(self, *_args: Any) -> None:
        self._changed.set()

    async def _drop_lock_conn(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        self._locked.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    async def _reconcile(self) -> None:
        conn = await self._lock_connection()
        wanted = {i: (user, gen) for i, user, gen in await webhooks_db.runnable(conn)}
        ended = [i for i, lane in self._lanes.items() if lane.task is None or lane.task.done()]
        stale = [
            i for i, lane in self._lanes.items() if wanted.get(i, (0, -1))[1] != lane.generation
        ]
        await self._stop_lanes(sorted(set(ended) | set(stale)))
        for webhook_id in sorted(self._locked - set(wanted)):
            await conn.execute("SELECT pg_advisory_unlock($1, $2::int)", LOCK_SPACE, webhook_id)
            self._locked.discard(webhook_id)
        for webhook_id, (user_id, gen) in wanted.items():
            if webhook_id in self._lanes:
                continue
            if webhook_id not in self._locked:
                got = await conn.fetchval(
                    "SELECT pg_try_advisory_lock($1, $2::int)", LOCK_SPACE, webhook_id
                )
                if not got:
                    continue  # another gateway process delivers this one
                self._locked.add(webhook_id)
            self._start_lane(webhook_id, user_id, gen)
        users = sorted(self._by_user)
        if users:
            latest = await webhooks_db.latest_seqs(conn, users)
            for lane in self._lanes.values():
                if latest.get(lane.user_id, 0) > lane.cursor:
                    lane.wake.set()

    def _start_lane(self, webhook_id: int, user_id: int, generation: int) -> None:
        lane = WebhookLane(self, webhook_id, user_id, generation)
        lane.task = asyncio.get_running_loop().create_task(lane.run())
        self._lanes[webhook_id] = lane
        self._by_user.setdefault(user_id, set()).add(lane)

    async def _stop_lanes(self, webhook_ids: list[int]) -> None:
        lanes = [self._lanes.pop(i) for i in webhook_ids if i in self._lanes]
        for lane in lanes:
            users = self._by_user.get(lane.user_id)
            if users is not None:
                users.discard(lane)
                if not users:
                    del self._by_user[lane.user_id]
            if lane.task is not None:
                lane.task.cancel()
        for lane in lanes:
            if lane.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await lane.task

    def lane_count(self) -> int:
        return len(self._lanes)

    # -- durable progress, in batches

    def advance(self, item: Advance) -> None:
        prior = self._buffer.advances.get(item.webhook_id)
        if prior is not None and prior.generation == item.generation:
            item = Advance(
                item.webhook_id,
                item.generation,
                max(prior.last_seq, item.last_seq),
                item.delivered_at or prior.delivered_at,
                item.status if item.status is not None else prior.status,
            )
        self._buffer.advances[item.webhook_id] = item

    def record(self, attempt: Attempt) -> None:
        if self._observe is not None:
            outcome = (
                "delivered"
                if attempt.delivered
                else "gone"
                if attempt.status_code == 410
                else "failed"
            )
            self._observe(outcome, (attempt.latency_ms or 0) / 1000)
        self._buffer.attempts.append(attempt)
        if len(self._buffer.attempts) > MAX_BUFFERED_ATTEMPTS:
            del self._buffer.attempts[: len(self._buffer.attempts) - MAX_BUFFERED_ATTEMPTS]

    async def flush(self) -> None:
        """Write the buffered cursor moves and attempts (kept for the next try on failure)."""
        async with self._flush_lock:
            buffer, self._buffer = self._buffer, _Buffer()
            if not buffer.advances and not buffer.attempts:
                return
            advances = list(buffer.advances.values())
            attempts = _thin(buffer.attempts)
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    await webhooks_db.flush(conn, advances, attempts)
            except asyncpg.ForeignKeyViolationError:
                # A webhook was deleted in between: its records go with it.
                async with self.pool.acquire() as conn, conn.transaction():
                    await webhooks_db.flush(conn, advances, [])
            except BaseException:
                for item in advances:
                    newer = self._buffer.advances.get(item.webhook_id)
                    if newer is None:
                        self._buffer.advances[item.webhook_id] = item
                    elif newer.generation == item.generation:
                        self.advance(item)
                self._buffer.attempts[:0] = attempts
                raise
            self._touched.update(a.webhook_id for a in attempts)

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.config.flush_seconds)
            try:
                await self.flush()
                if self._touched and time.monotonic() - self._last_prune > PRUNE_SECONDS:
                    touched, self._touched = sorted(self._touched), set()
                    self._last_prune = time.monotonic()
                    await webhooks_db.prune(self.pool, touched, HISTORY)
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                log.warning("webhooks: progress not saved yet", error=str(exc))
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("webhooks: saving progress failed")
                await asyncio.sleep(1.0)

    # -- test events

    def send_test(self, hook: Webhook) -> str:
        """Send a `webhook-test` event to this webhook alone, now, in the background (outside
        its order and its cursor); the attempt shows in its deliveries. Returns its id."""
        delivery = str(uuid.uuid4())
        task = asyncio.get_running_loop().create_task(self._test(hook, delivery))
        self._side.add(task)
        task.add_done_callback(self._side.discard)
        return delivery

    async def _test(self, hook: Webhook, delivery: str) -> None:
        now = datetime.now(UTC)
        data = {"webhook_id": hook.id, "message": "This is a test event from wagate."}
        body = body_of(delivery, None, TEST_EVENT, None, now, json.dumps(data))
        try:
            conn = self.connection(hook.url)
            try:
                outcome = await post(
                    conn,
                    secret=self.box.open(hook.secret_encrypted),
                    event=TEST_EVENT,
                    delivery=delivery,
                    body=body,
                    timeout=self.config.timeout,
                    refusal=url_refusal(hook.url, allow_private=self.config.allow_private),
                )
            finally:
                conn.close()
            self.record(
                Attempt(
                    hook.id,
                    delivery,
                    None,
                    TEST_EVENT,
                    1,
                    outcome.status,
                    outcome.latency_ms,
                    outcome.delivered,
                    outcome.error,
                    datetime.now(UTC),
                )
            )
            await self.flush()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook test event failed", webhook_id=hook.id)


def _thin(attempts: list[Attempt]) -> list[Attempt]:
    """Every failure, and the last SUCCESSES_PER_BATCH successes of each webhook, in order."""
    seen: dict[int, int] = {}
    kept: list[Attempt] = []
    for attempt in reversed(attempts):
        if attempt.delivered:
            seen[attempt.webhook_id] = seen.get(attempt.webhook_id, 0) + 1
            if seen[attempt.webhook_id] > SUCCESSES_PER_BATCH:
                continue
        kept.append(attempt)
    kept.reverse()
    return kept


async def notify_changed(conn: Any, webhook_id: int) -> None:
    """Tell every gateway process's dispatcher that a webhook changed."""
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(webhook_id))
