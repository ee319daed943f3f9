"""The two-way Jira bridge: a bridged chat is a ticket, its messages are comments, agents'
Jira comments and status changes go back to the customer on WhatsApp.

WhatsApp -> Jira. The feeder is a durable cursor per operator over their event log
(`jira_connections.last_seq`): it reads `message-new` events after the cursor, and for each
message of a bridged chat enqueues a `jira_message` outbox job in the same transaction that
moves the cursor (the dedupe key is the message id, so a replay enqueues nothing twice). Jobs
carry their chat as `lane`: a job runs only when no older job of its lane waits, so each
ticket's comments land in order while other chats run in parallel. Every Jira call runs from
a job; a job is retried with capped backoff (429: after `Retry-After`; 401/403: the operator's
bridge is parked as `rejected` until the credentials change) and is exactly once in effect:
- a ticket is a `pending` row with a unique marker before Jira is called; the marker is a
  label on the issue, so a retry after a timeout finds the issue instead of making another;
- a comment carries an invisible `{anchor:wagate-m<id>}`; a retried job looks for it on the
  issue before posting, and `jira_comments` remembers which message became which comment.

Jira -> WhatsApp. `POST /api/v1/jira/webhook/{token}` checks the signature, takes the
delivery once (`X-Atlassian-Webhook-Identifier`) and enqueues a `jira_inbound` job in the same
transaction, in the chat's lane. The job drops comments of the integration account, comments
we made, and internal ones, and sends the rest with `send_text` (sender_type `agent`), with the
comment id as the idempotency key; a status change becomes a short localized notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from db import event_log, messages, outbox
from db import jira as jira_db
from db import users as users_db
from db.jira import Connection, Ticket
from db.outbox import OutboxItem
from gateway.ai.text import detect_language
from gateway.bus import BusEvent, EventBus
from gateway.errors import ApiError
from gateway.jira_client import (
    CreatedIssue,
    JiraClient,
    JiraCredentials,
    JiraFailure,
    JiraThreads,
)
from gateway.metrics import Metrics
from gateway.security import SecretBox
from gateway.settings import Settings
from sessions.backoff import Backoff
from sessions.media import media_path

log = structlog.get_logger(__name__)

KINDS = ("jira_message", "jira_inbound")
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
FEED_BATCH = 500
REFRESH_SECONDS = 1.0
LEASE_SECONDS = 120.0
STOP_GRACE_SECONDS = 3.0
MAX_INVALID_ATTEMPTS = 3
# A task that finished a job takes its chat's next one straight away, up to this many in a row
# before it lets the claim (all lanes, oldest first) choose again: busy chats flow without a
# claim per job, and a chat never holds a slot for long while others wait.
LANE_RUN = 16
MEDIA_TYPES = frozenset({"image", "video", "audio", "voice", "document", "sticker"})
MARKER = "{{anchor:wagate-m{id}}}"
MARKER_RE = re.compile(r"\{anchor:wagate-m\d+\}")
# Idempotency keys of messages the bridge itself sends: never bridged back as comments.
OWN_KEY_PREFIXES = ("jira:", "jira-")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """`X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256=").strip())


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# -- what the customer reads ---------------------------------------------------------------------

COMMANDS: dict[str, tuple[str, str | None]] = {
    "/ajuda": ("help", "pt"),
    "/ayuda": ("help", "es"),
    "/help": ("help", "en"),
    "/status": ("status", None),
    "/estado": ("status", "es"),
    "/novo": ("new", "pt"),
    "/nuevo": ("new", "es"),
    "/new": ("new", "en"),
    "/cancelar": ("cancel", None),
    "/cancel": ("cancel", "en"),
}

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "help": "Commands:\n/help - this list\n/status - your ticket and its status\n"
        "/new - close this ticket; your next message opens a new one\n"
        "/cancel - cancel your ticket",
        "status": "Your ticket {key} is {status}.",
        "no_ticket": "You have no open ticket. Write to us and we will open one.",
        "new": "Done: your next message opens a new ticket.",
        "cancelled": "Your ticket {key} was cancelled.",
        "notice": "Your ticket {key} is now {status}.",
    },
    "es": {
        "help": "Comandos:\n/ayuda - esta lista\n/status - tu ticket y su estado\n"
        "/nuevo - cierra este ticket; tu próximo mensaje abre uno nuevo\n"
        "/cancelar - cancela tu ticket",
        "status": "Tu ticket {key} está en {status}.",
        "no_ticket": "No tienes ningún ticket abierto. Escríbenos y abriremos uno.",
        "new": "Listo: tu próximo mensaje abrirá un ticket nuevo.",
        "cancelled": "Tu ticket {key} fue cancelado.",
        "notice": "Tu ticket {key} ahora está en {status}.",
    },
    "pt": {
        "help": "Comandos:\n/ajuda - esta lista\n/status - seu ticket e o status dele\n"
        "/novo - fecha este ticket; sua próxima mensagem abre um novo\n"
        "/cancelar - cancela seu ticket",
        "status": "Seu ticket {key} está em {status}.",
        "no_ticket": "Você não tem nenhum ticket aberto. Escreva para nós e abriremos um.",
        "new": "Pronto: sua próxima mensagem abre um novo ticket.",
        "cancelled": "Seu ticket {key} foi cancelado.",
        "notice": "Seu ticket {key} agora está em {status}.",
    },
}


def say(language: str | None, what: str, **values: str) -> str:
    texts = TEXTS.get(language or "en", TEXTS["en"])
    return texts[what].format(**values)


def parse_command(text: str | None) -> tuple[str, str | None] | None:
    if not text:
        return None
    words = text.strip().split()
    if not words:
        return None
    return COMMANDS.get(words[0].lower())


def phone_of(external_id: str | None) -> str | None:
    if not external_id or not external_id.endswith("@s.whatsapp.net"):
        return None
    digits = external_id.split("@")[0].split(":")[0]
    return "+" + digits if digits.isdigit() else None


def first_words(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return flat[:limit].rsplit(" ", 1)[0] + "…"


def comment_text(body: Any) -> str:
    """A webhook comment body: REST v2 text, or an ADF document (v3) flattened to text."""
    if isinstance(body, str):
        return body
    if isinstance(body, dict):
        parts: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if node.get("type") == "text":
                    parts.append(str(node.get("text", "")))
                for child in node.get("content") or []:
                    walk(child)
                if node.get("type") in ("paragraph", "heading"):
                    parts.append("\n")
            elif isinstance(node, list):
                for child in node:
                    walk(child)

        walk(body)
        return "".join(parts).strip()
    return ""


class Retry(Exception):
    """Try this job again at a later time (not a failure: waiting for something)."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.delay = delay


@dataclass
class BridgeConfig:
    # 200 messages/s with Jira answering in 50 ms keeps ~16 calls in flight on average: 16
    # threads were saturated in bursts and fell behind (bench/RESULTS.md, Jira bridge).
    concurrency: int = 64
    threads: int = 32
    timeout: float = 20.0
    backoff_cap: float = 300.0
    media_wait: float = 600.0
    refresh_seconds: float = REFRESH_SECONDS
    # How long a claimed job is ours; after a crash, how long its chat waits. A job makes a few
    # Jira calls, each within `timeout`.
    lease_seconds: float = LEASE_SECONDS
    stop_grace: float = STOP_GRACE_SECONDS


def bridge_config(settings: Settings) -> BridgeConfig:
    return BridgeConfig(
        concurrency=settings.jira_concurrency,
        threads=settings.jira_threads,
        timeout=settings.jira_timeout_seconds,
        backoff_cap=settings.jira_backoff_max_seconds,
        media_wait=settings.jira_media_wait_seconds,
        lease_seconds=max(10.0, 6 * settings.jira_timeout_seconds),
    )


async def retry_sleep(seconds: float) -> None:
    """Waits of the job loop (tests replace it)."""
    await asyncio.sleep(seconds)


class JiraBridge:
    def __init__(
        self,
        app: web.Application,
        pool: asyncpg.Pool,
        bus: EventBus,
        box: SecretBox,
        *,
        media_dir: Any,
        config: BridgeConfig | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.pool = pool
        self.bus = bus
        self.box = box
        self.media_dir = media_dir
        self.config = config or BridgeConfig()
        self.metrics = metrics
        self.threads = JiraThreads(self.config.threads)
        self._clients: dict[int, tuple[tuple[str, str, str | None, str], JiraClient]] = {}
        self._wake_feed = asyncio.Event()
        self._wake_jobs = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._held: set[int] = set()  # ids of the jobs claimed and not finished
        # Jira's rate limit is per account: after a 429 every job of that operator waits.
        self._rate_paused: dict[int, datetime] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._listener: asyncpg.Connection | None = None
        self._backoff = Backoff(base=1.0, cap=self.config.backoff_cap, jitter=0.2)
        self.done = 0
        # Benchmarks hook in here: (message id, seconds from the event to its comment).
        self.on_commented: Callable[[int, str, int], None] | None = None

    # -- life cycle

    async def start(self, database_url: str | None = None) -> None:
        self._unsubscribe = self.bus.subscribe(self._on_event)
        if database_url is not None:
            try:
                self._listener = await asyncpg.connect(database_url)
                await self._listener.add_listener(outbox.CHANNEL, self._notified)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("jira: outbox notifications unavailable", error=str(exc))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._feeder()), loop.create_task(self._worker())]

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        # Claim nothing more; the jobs under way get a moment to finish, the rest go back to
        # the queue at once (not after their lease: the chat would wait that long).
        for task in self._tasks:
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running), timeout=self.config.stop_grace)
        for task in [*self._tasks, *self._running]:
            task.cancel()
        for task in [*self._tasks, *self._running]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._held:
            try:
                await asyncio.wait_for(jira_db.release(self.pool, sorted(self._held)), 5)
            except (TimeoutError, *DB_ERRORS) as exc:
                log.warning("jira: jobs not released (their lease expires)", error=str(exc))
            self._held.clear()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), 2)
        for _, client in self._clients.values():
            client.close()
        self.threads.shutdown()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if str(payload).startswith("jira_"):
            self._wake_jobs.set()

    async def _on_event(self, item: BusEvent) -> None:
        if item.seq is not None and item.event == "message-new":
            self._wake_feed.set()

    def changed(self) -> None:
        """A connection was saved or its state changed: look again now."""
        self._wake_feed.set()
        self._wake_jobs.set()

    # -- clients

    def client_for(self, connection: Connection) -> JiraClient:
        # Keyed on the credentials, not on updated_at: state and error bookkeeping touch the
        # row on every failed call, and a client (its HTTP pool) must outlive those.
        key = (
            connection.base_url,
            connection.auth_kind,
            connection.email,
            connection.token_sealed,
        )
        cached = self._clients.get(connection.user_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        if cached is not None:
            cached[1].close()
        client = self.make_client(connection)
        self._clients[connection.user_id] = (key, client)
        return client

    def make_client(self, connection: Connection) -> JiraClient:
        return JiraClient(
            JiraCredentials(
                connection.base_url,
                connection.auth_kind,
                connection.email,
                self.box.open(connection.token_sealed),
            ),
            self.threads,
            timeout=self.config.timeout,
            metrics=self.metrics,
        )

    async def check(self, connection: Connection) -> dict[str, Any]:
        """`POST /api/v1/jira/test`: server info and the integration account; remembers the
        account (its comments are never sent to customers) and clears a `rejected` state."""
        client = self.client_for(connection)
        try:
            info = await client.server_info()
            me = await client.myself()
        except JiraFailure as exc:
            if exc.kind == "rejected":
                await jira_db.set_state(self.pool, connection.user_id, "rejected", str(exc))
            raise
        account = str(me.get("accountId") or me.get("key") or me.get("name") or "")
        name = me.get("displayName") or me.get("emailAddress") or me.get("name")
        await jira_db.set_account(
            self.pool, connection.user_id, account, name, info.get("serverTitle")
        )
        self.changed()
        return {"server": info, "account": me}

    async def _learn_account(self, connection: Connection) -> str | None:
        """Ask Jira who the integration account is and remember it. A failure here is raised
        (the job is retried like any other Jira call): an unknown account must not let its
        comments through to customers."""
        me = await self.client_for(connection).myself()
        account = str(me.get("accountId") or me.get("key") or me.get("name") or "")
        if not account:
            return None
        name = me.get("displayName") or me.get("emailAddress") or me.get("name")
        await jira_db.remember_account(self.pool, connection.user_id, account, name)
        return account

    # -- the feeder: event log -> jobs

    async def _feeder(self) -> None:
        while True:
            self._wake_feed.clear()
            try:
                for user_id, _ in await jira_db.enabled(self.pool):
                    while await self.feed(user_id) >= FEED_BATCH:
                        pass
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                log.warning("jira: database unavailable", error=str(exc))
            except Exception:
                log.exception("jira: feeding failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_feed.wait(), self.config.refresh_seconds)

    async def feed(self, user_id: int) -> int:
        """Turn the operator's next events into jobs; returns how many events were read."""
        async with self.pool.acquire() as conn, conn.transaction():
            cursor = await jira_db.lock_cursor(conn, user_id)
            if cursor is None:
                return 0
            events = await event_log.after(conn, user_id, cursor, FEED_BATCH)
            if not events:
                return 0
            connection = await jira_db.get(conn, user_id)
            assert connection is not None
            wanted = [
                int(e.payload["id"])
                for e in events
                if e.event == "message-new" and isinstance(e.payload.get("id"), int)
            ]
            found = await jira_db.messages_of(conn, wanted) if wanted else {}
            enqueued = 0
            for message_id in wanted:
                row = found.get(message_id)
                if row is None or not await self._bridged(conn, connection, row):
                    continue
                lane = f"c{row['conversation_id']}"
                new = await outbox.enqueue(
                    conn,
                    "jira_message",
                    {"user": user_id, "lane": lane, "message_id": message_id},
                    dedupe_key=f"jira_message:{message_id}",
                )
                enqueued += new is not None
            await jira_db.advance(conn, user_id, events[-1].seq)
        if enqueued:
            self._wake_jobs.set()
        return len(events)

    async def _bridged(self, conn: Any, connection: Connection, row: dict[str, Any]) -> bool:
        if row["from_history"] or row["message_type"] in ("reaction", "edit", "revoke"):
            return False
        key = row["idempotency_key"] or ""
        if key.startswith(OWN_KEY_PREFIXES):
            return False
        if row["jira_bridge"]:
            return True
        sessions = connection.auto_bridge_sessions
        if (
            row["kind"] == "direct"
            and row["direction"] == "inbound"
            and sessions
            and row["conversation_created"] >= connection.auto_bridge_since
        ):
            session_id = await conn.fetchval(
                "SELECT session_id FROM conversations WHERE id = $1", row["conversation_id"]
            )
            if session_id in sessions and await jira_db.auto_bridge(
                conn, int(row["conversation_id"])
            ):
                return True
        # Switched on by the rule or by hand since the batch was read.
        return bool(
            await conn.fetchval(
                "SELECT jira_bridge FROM conversations WHERE id = $1", row["conversation_id"]
            )
        )

    # -- the worker: jobs -> Jira / WhatsApp

    async def _worker(self) -> None:
        while True:
            free = self.config.concurrency - len(self._running)
            items: list[OutboxItem] = []
            if free > 0:
                try:
                    items = await jira_db.claim(self.pool, free, self.config.lease_seconds)
                    self._held.update(item.id for item in items)
                except asyncio.CancelledError:
                    raise
                except DB_ERRORS as exc:
                    log.warning("jira: database unavailable", error=str(exc))
                except Exception:
                    log.exception("jira: claiming jobs failed")
            for item in items:
                task = asyncio.get_running_loop().create_task(self._lane(item))
                self._running.add(task)
                task.add_done_callback(self._finished)
            if not items:
                self._wake_jobs.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_jobs.wait(), 0.5)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake_jobs.set()  # the lane's next job may be due now

    async def _lane(self, item: OutboxItem) -> None:
        """Run `item`, then its lane's next jobs while they are due (at most LANE_RUN)."""
        lane = str(item.payload.get("lane") or "")
        for run in range(1, LANE_RUN + 1):
            if not await self._do(item) or not lane or run == LANE_RUN:
                return
            try:
                following = await jira_db.claim_next(self.pool, lane, self.config.lease_seconds)
            except DB_ERRORS as exc:
                log.warning("jira: database unavailable", error=str(exc))
                return
            if following is None:
                return
            self._held.add(following.id)
            item = following

    async def _do(self, item: OutboxItem) -> bool:
        """Run one job; True when it is done (its lane's next job may follow)."""
        try:
            return await self._do_job(item)
        finally:
            if not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                self._held.discard(item.id)

    async def _do_job(self, item: OutboxItem) -> bool:
        user_id = int(item.payload["user"])
        try:
            connection = await jira_db.get(self.pool, user_id)
            if connection is None or not connection.enabled:
                await outbox.done(self.pool, item.id)  # the operator turned the bridge off
                return False
            paused = self._rate_paused.get(user_id)
            if paused is not None and paused > datetime.now(UTC):
                await jira_db.defer(self.pool, item.id, "waiting out Jira's rate limit", paused)
                return False
            if item.kind == "jira_message":
                await self._message(connection, item)
            else:
                await self._inbound(connection, item)
        except asyncio.CancelledError:
            raise
        except Retry as exc:
            await jira_db.defer(
                self.pool, item.id, str(exc), datetime.now(UTC) + timedelta(seconds=exc.delay)
            )
            return False
        except JiraFailure as exc:
            await self._failed(user_id, item, exc)
            return False
        except DB_ERRORS as exc:
            log.warning("jira: job interrupted by the database", item_id=item.id, error=str(exc))
            return False  # the lease runs out and the job comes back
        except Exception as exc:
            log.exception("jira job failed", item_id=item.id, kind=item.kind)
            await self._failed(
                user_id, item, JiraFailure("invalid", f"{type(exc).__name__}: {exc}")
            )
            return False
        await outbox.done(self.pool, item.id)
        self.done += 1
        self._count(item, "done")
        return True

    def _count(self, item: OutboxItem, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.outbox_items.labels(item.kind, outcome).inc()

    async def _failed(self, user_id: int, item: OutboxItem, exc: JiraFailure) -> None:
        now = datetime.now(UTC)
        if exc.kind == "rejected":
            log.warning("jira: credentials rejected; bridge parked", user_id=user_id)
            await jira_db.set_state(self.pool, user_id, "rejected", str(exc))
            await outbox.retry(self.pool, item.id, str(exc), now + timedelta(seconds=5))
            self._count(item, "retry")
            return
        if exc.kind == "invalid" and item.attempts >= MAX_INVALID_ATTEMPTS:
            log.warning("jira job failed for good", item_id=item.id, error=str(exc))
            await outbox.fail(self.pool, item.id, str(exc))
            await jira_db.set_error(self.pool, user_id, str(exc))
            self._count(item, "failed")
            return
        if exc.kind == "rate_limited":
            delay = max(exc.retry_after, 1.0)
            self._rate_paused[user_id] = now + timedelta(seconds=delay)
        else:
            self._backoff.attempt = min(item.attempts - 1, 30)
            delay = self._backoff.next_delay()
        await jira_db.set_error(self.pool, user_id, str(exc))
        await outbox.retry(self.pool, item.id, str(exc), now + timedelta(seconds=delay))
        self._count(item, "retry")
        log.info("jira job retrying", item_id=item.id, delay=round(delay, 2), error=str(exc))

    # -- WhatsApp -> Jira

    async def _message(self, connection: Connection, item: OutboxItem) -> None:
        message = await messages.get_scoped(self.pool, int(item.payload["message_id"]))
        if message is None:
            return
        conversation = await self.pool.fetchrow(
            "SELECT id, session_id, external_id, contact_name, kind FROM conversations "
            "WHERE id = $1",
            message["conversation_id"],
        )
        if conversation is None:
            return
        inbound = message["direction"] == "inbound"
        command = parse_command(message["text_content"]) if inbound else None
        if command is not None and message["message_type"] == "text":
            await self._command(connection, message, dict(conversation), *command)
            return
        ticket = await jira_db.current_ticket(self.pool, message["conversation_id"])
        if ticket is None and not inbound:
            return  # an outbound message opens no ticket; the customer's first one does
        client = self.client_for(connection)
        if ticket is not None and ticket.state == "open" and inbound:
            ticket = await self._resolved(connection, client, ticket)
        if ticket is None or ticket.state == "pending":
            ticket, described = await self._ensure_issue(
                connection, client, message, dict(conversation), ticket
            )
            if described:
                return
        await self._comment(client, ticket, message, dict(conversation), item.attempts)

    async def _resolved(
        self, connection: Connection, client: JiraClient, ticket: Ticket
    ) -> Ticket | None:
        """A message to a resolved or closed ticket: reopen it, or close the mapping (the
        message then opens a new ticket)."""
        if ticket.status_category != "done" or ticket.issue_key is None:
            return ticket
        if connection.reopen_resolved:
            found = await client.transitions(ticket.issue_key)
            order = {"new": 0, "indeterminate": 1}
            found.sort(
                key=lambda t: (
                    "reopen" not in str(t.get("name", "")).lower(),
                    order.get(str(((t.get("to") or {}).get("statusCategory") or {}).get("key")), 9),
                )
            )
            for transition in found:
                to = transition.get("to") or {}
                if (to.get("statusCategory") or {}).get("key") not in ("done", None):
                    await client.transition(ticket.issue_key, str(transition["id"]))
                    await jira_db.set_status(
                        self.pool,
                        ticket.id,
                        str(to.get("name") or transition.get("name")),
                        (to.get("statusCategory") or {}).get("key"),
                    )
                    return await jira_db.current_ticket(self.pool, ticket.conversation_id)
            log.info("jira: no transition reopens the ticket", issue=ticket.issue_key)
        await jira_db.close(self.pool, ticket.id)
        return None

    async def _ensure_issue(
        self,
        connection: Connection,
        client: JiraClient,
        message: dict[str, Any],
        conversation: dict[str, Any],
        ticket: Ticket | None,
    ) -> tuple[Ticket, bool]:
        """The chat's open ticket, created from `message` when there is none: (the ticket,
        whether `message` is its description)."""
        if ticket is None:
            ticket = await jira_db.open_ticket(
                self.pool,
                user_id=connection.user_id,
                session_id=int(conversation["session_id"]),
                conversation_id=int(conversation["id"]),
                phone=phone_of(conversation["external_id"]),
                project_key=connection.project_key,
                language=None,
            )
        if ticket.state == "open":
            return ticket, False
        attempts = await jira_db.create_attempt(self.pool, ticket.id)
        issue: CreatedIssue | None = None
        if attempts > 1:
            # An earlier try may have created it and lost the answer: look for our label.
            issue = await client.find_by_label(ticket.project_key, ticket.marker)
        if issue is None:
            issue = await client.create_issue(
                self._fields(connection, ticket, message, conversation)
            )
        described = message["message_type"] not in MEDIA_TYPES
        async with self.pool.acquire() as conn, conn.transaction():
            ticket = await jira_db.created(
                conn, ticket.id, issue.key, issue.id, issue.status, issue.status_category
            )
            if described:
                await jira_db.record_comment(conn, ticket.id, int(message["id"]), None, "whatsapp")
        log.info("jira ticket created", issue=issue.key, conversation_id=conversation["id"])
        await self.bus.publish(
            "conversation-updated",
            connection.user_id,
            int(conversation["session_id"]),
            {
                "session_id": int(conversation["session_id"]),
                "conversation_id": int(conversation["id"]),
                "jira_issue_key": issue.key,
            },
        )
        return ticket, described

    def _fields(
        self,
        connection: Connection,
        ticket: Ticket,
        message: dict[str, Any],
        conversation: dict[str, Any],
    ) -> dict[str, Any]:
        name = self._name(message, conversation)
        group = conversation.get("kind") == "group"
        phone = phone_of(message.get("sender_jid") if group else conversation["external_id"])
        first = self._plain(message) or f"[{message['message_type']}]"
        who = f"{name} ({phone})" if phone else name
        description = "\n".join(
            [
                "Customer on WhatsApp",
                f"* Name: {name}",
                f"* Phone: {phone or '-'}",
                *([f"* Group: {conversation['contact_name'] or '-'}"] if group else []),
                f"* Chat: {conversation['external_id']}",
                f"* wagate session: {conversation['session_id']}, "
                f"conversation: {conversation['id']}",
                "",
                "First message:",
                "{quote}",
                first,
                "{quote}",
                MARKER.format(id=message["id"]),
            ]
        )
        return {
            "project": {"key": connection.project_key},
            "issuetype": {"name": connection.issue_type},
            "summary": f"[WhatsApp] {who}: {first_words(first)}"[:250],
            "description": description,
            "labels": [ticket.marker, "whatsapp"],
        }

    @staticmethod
    def _name(message: dict[str, Any], conversation: dict[str, Any]) -> str:
        if conversation.get("kind") == "group":
            # The chat's name is the group's: the person is whoever wrote this message.
            sender = message.get("sender_jid")
            return str(
                message.get("sender_name")
                or (phone_of(sender) if sender else None)
                or sender
                or conversation["contact_name"]
                or conversation["external_id"]
            )
        return str(
            conversation["contact_name"]
            or message.get("sender_name")
            or phone_of(conversation["external_id"])
            or conversation["external_id"]
        )

    @staticmethod
    def _plain(message: dict[str, Any]) -> str:
        return str(message.get("text_content") or "").strip()

    def _label(self, message: dict[str, Any], conversation: dict[str, Any]) -> str:
        sender = message["sender_type"]
        if message["direction"] == "inbound":
            return f"[WhatsApp] {self._name(message, conversation)}"
        if sender == "ai":
            return "[WhatsApp · AI reply]"
        if sender == "owner":
            return "[WhatsApp · sent from the phone]"
        return "[WhatsApp · operator]"

    async def _comment(
        self,
        client: JiraClient,
        ticket: Ticket,
        message: dict[str, Any],
        conversation: dict[str, Any],
        attempts: int,
    ) -> None:
        message_id = int(message["id"])
        bridged, _ = await jira_db.comment_of(self.pool, message_id, "whatsapp")
        if bridged:
            return
        key = ticket.issue_key
        assert key is not None
        marker = MARKER.format(id=message_id)
        label = self._label(message, conversation)
        text = self._plain(message)
        media_note = ""
        if message["message_type"] in MEDIA_TYPES:
            media_note = await self._attach(client, key, message, attempts)
        if attempts > 1:
            for comment_id, body in await client.comments(key):
                if marker in body:
                    await jira_db.record_comment(
                        self.pool, ticket.id, message_id, comment_id, "whatsapp"
                    )
                    return
        if media_note:
            body = f"{label}: {media_note}" + (f"\n{text}" if text else "")
        elif message["message_type"] == "text":
            body = f"{label}: {text}"
        else:
            body = f"{label}: [{message['message_type']}] {text}".rstrip()
        comment_id = await client.add_comment(key, f"{body}\n{marker}")
        await jira_db.record_comment(self.pool, ticket.id, message_id, comment_id, "whatsapp")
        if self.on_commented is not None:
            self.on_commented(message_id, key, ticket.conversation_id)

    async def _attach(
        self, client: JiraClient, key: str, message: dict[str, Any], attempts: int
    ) -> str:
        """Upload the message's file (once); what the comment says about it."""
        kind = str(message["message_type"])
        status = message["media_status"]
        if status == "pending":
            age = datetime.now(UTC) - message["created_at"]
            if age.total_seconds() < self.config.media_wait:
                raise Retry("the attachment is still downloading", 1.0)
            status = "failed"
        if status != "stored" or not message["media_sha256"]:
            return f"sent a {kind} that could not be downloaded ({status})"
        name = str(message["media_filename"] or f"{kind}-{message['id']}{_extension(message)}")
        filename = f"wa{message['id']}-{name}"
        path = media_path(self.media_dir, str(message["media_sha256"]))
        if attempts <= 1 or filename not in await client.attachment_names(key):
            if not path.exists():
                return f"sent a {kind} whose file is no longer stored"
            await client.add_attachment(key, path, filename)
        return f"sent a {kind}: [^{filename}]"

    async def _command(
        self,
        connection: Connection,
        message: dict[str, Any],
        conversation: dict[str, Any],
        command: str,
        language: str | None,
    ) -> None:
        ticket = await jira_db.current_ticket(self.pool, int(conversation["id"]))
        if language is None:
            language = (ticket.language if ticket else None) or await self._customer_language(
                message
            )
            if language is None:
                language = await self._spoken_language(
                    int(message["conversation_id"]), int(message["id"]), connection.language
                )
                if message["text_content"].strip().lower().startswith("/cancelar"):
                    language = "pt" if language == "en" else language
        if ticket is not None and ticket.language != language:
            await jira_db.set_language(self.pool, ticket.id, language)
        key = ticket.issue_key if ticket is not None else None
        if command == "help":
            answer = say(language, "help")
        elif command == "status":
            if ticket is None or key is None:
                answer = say(language, "no_ticket")
            else:
                status, category = await self.client_for(connection).issue_status(key)
                await jira_db.set_status(self.pool, ticket.id, status or "?", category)
                answer = say(language, "status", key=key, status=status or "?")
        elif ticket is None or key is None:
            answer = say(language, "no_ticket" if command == "cancel" else "new")
        else:
            client = self.client_for(connection)
            what = "cancelled the ticket" if command == "cancel" else "asked for a new ticket"
            name = self._name(message, conversation)
            await self._note(client, ticket, message, f"[WhatsApp] {name} {what} ({command}).")
            if command == "cancel":
                await self._cancel_issue(client, key)
            await jira_db.close(self.pool, ticket.id)
            answer = say(language, "cancelled" if command == "cancel" else "new", key=key)
        await self.reply(
            connection.user_id, int(conversation["id"]), answer, f"jira-cmd:{message['id']}"
        )

    async def _spoken_language(self, conversation_id: int, up_to: int | None, default: str) -> str:
        """The language the customer writes in (their latest texts), or `default` when that is
        not clear (a few words, numbers only)."""
        found = await self.pool.fetch(
            "SELECT text_content FROM messages WHERE conversation_id = $1 "
            "AND direction = 'inbound' AND text_content IS NOT NULL "
            "AND text_content NOT LIKE '/%' AND ($2::bigint IS NULL OR id <= $2) "
            "ORDER BY id DESC LIMIT 10",
            conversation_id,
            up_to,
        )
        text = " ".join(str(r["text_content"]) for r in found)
        return detect_language(text, default) if text.strip() else default

    async def _customer_language(self, message: dict[str, Any]) -> str | None:
        """The language of the customer's latest command that tells one."""
        found = await self.pool.fetch(
            "SELECT text_content FROM messages WHERE conversation_id = $1 AND id < $2 "
            "AND direction = 'inbound' AND text_content LIKE '/%' ORDER BY id DESC LIMIT 20",
            message["conversation_id"],
            message["id"],
        )
        for row in found:
            command = parse_command(row["text_content"])
            if command is not None and command[1] is not None:
                return command[1]
        return None

    async def _note(
        self, client: JiraClient, ticket: Ticket, message: dict[str, Any], text: str
    ) -> None:
        assert ticket.issue_key is not None
        message_id = int(message["id"])
        bridged, _ = await jira_db.comment_of(self.pool, message_id, "whatsapp")
        if bridged:
            return
        marker = MARKER.format(id=message_id)
        for comment_id, body in await client.comments(ticket.issue_key):
            if marker in body:
                await jira_db.record_comment(
                    self.pool, ticket.id, message_id, comment_id, "whatsapp"
                )
                return
        comment_id = await client.add_comment(ticket.issue_key, f"{text}\n{marker}")
        await jira_db.record_comment(self.pool, ticket.id, message_id, comment_id, "whatsapp")

    async def _cancel_issue(self, client: JiraClient, key: str) -> None:
        """Best effort: a transition named like cancel, else one into a done status."""
        found = await client.transitions(key)
        ranked = sorted(
            found,
            key=lambda t: (
                "cancel" not in str(t.get("name", "")).lower(),
                ((t.get("to") or {}).get("statusCategory") or {}).get("key") != "done",
            ),
        )
        if not ranked:
            return
        best = ranked[0]
        to = best.get("to") or {}
        if "cancel" in str(best.get("name", "")).lower() or (
            (to.get("statusCategory") or {}).get("key") == "done"
        ):
            try:
                await client.transition(key, str(best["id"]))
            except JiraFailure as exc:
                if exc.kind != "invalid":
                    raise
                log.info("jira: cancel transition refused", issue=key, error=str(exc))

    async def reply(self, user_id: int, conversation_id: int, text: str, key: str) -> int | None:
        """Send a WhatsApp message as the bridge (idempotent on `key`); its message id."""
        from gateway.messaging import send_text

        user = await users_db.get(self.pool, user_id)
        if user is None:
            return None
        try:
            message, _ = await send_text(self.app, user, conversation_id, text, idempotency_key=key)
        except ApiError as exc:
            if exc.status == 409:  # the account is down: wait for it
                raise Retry(exc.message, 30.0) from exc
            if exc.status == 404:
                return None
            raise JiraFailure("invalid", f"WhatsApp: {exc.message}") from exc
        return int(message["id"])

    # -- Jira -> WhatsApp

    async def _inbound(self, connection: Connection, item: OutboxItem) -> None:
        p = item.payload
        ticket = await jira_db.by_issue(self.pool, connection.user_id, str(p["issue_key"]))
        if ticket is None:
            return
        if p["event"] == "comment":
            comment_id = str(p["comment_id"])
            if await jira_db.is_our_comment(self.pool, connection.user_id, comment_id):
                return
            # The integration account may not be known yet (no `POST /jira/test` was run,
            # e.g. a bootstrapped connection): learn it before sending anything on.
            account = connection.account_id or await self._learn_account(connection)
            if account and account in set(p.get("author_ids") or ()):
                return
            text = MARKER_RE.sub("", comment_text(p.get("body"))).strip()
            if not text:
                return
            message_id = await self.reply(
                connection.user_id,
                ticket.conversation_id,
                text,
                f"jira:{connection.user_id}:{comment_id}",
            )
            if message_id is not None:
                await jira_db.record_comment(self.pool, ticket.id, message_id, comment_id, "jira")
            return
        status = str(p["status"])
        await jira_db.set_status(self.pool, ticket.id, status, p.get("category"))
        if not connection.status_notices or ticket.state == "closed":
            return
        language = ticket.language or await self._spoken_language(
            ticket.conversation_id, None, connection.language
        )
        key = str(ticket.issue_key)
        if connection.status_notice_text:
            text = connection.status_notice_text.replace("{key}", key).replace("{status}", status)
        else:
            text = say(language, "notice", key=key, status=status)
        await self.reply(
            connection.user_id, ticket.conversation_id, text, f"jira-status:{p['identifier']}"
        )

    async def take_webhook(
        self, connection: Connection, identifier: str, body: dict[str, Any]
    ) -> str:
        """A verified webhook delivery: taken once, turned into a job in the same
        transaction. Returns what happened (for the answer and the logs)."""
        event = str(body.get("webhookEvent") or "")
        issue = body.get("issue") or {}
        key = issue.get("key")
        job: dict[str, Any] | None = None
        if event == "comment_created":
            comment = body.get("comment") or {}
            author = comment.get("author") or {}
            who = {str(author.get(k)) for k in ("accountId", "key", "name") if author.get(k)}
            if connection.account_id and connection.account_id in who:
                job = None
                outcome = "ignored: the integration account's comment"
            elif comment.get("jsdPublic") is False:
                outcome = "ignored: an internal comment"
            elif MARKER_RE.search(comment_text(comment.get("body"))):
                outcome = "ignored: a comment the bridge made"
            else:
                job = {
                    "event": "comment",
                    "comment_id": str(comment.get("id")),
                    "body": comment.get("body"),
                    "author": author.get("displayName"),
                    "author_ids": sorted(who),
                }
                outcome = "queued"
        elif event == "jira:issue_updated":
            items = (body.get("changelog") or {}).get("items") or []
            change = next((i for i in items if i.get("field") == "status"), None)
            if change is None:
                outcome = "ignored: no status change"
            else:
                status = ((issue.get("fields") or {}).get("status")) or {}
                category = (status.get("statusCategory") or {}).get("key")
                job = {
                    "event": "status",
                    "status": str(change.get("toString") or status.get("name") or ""),
                    "category": category,
                }
                outcome = "queued"
        else:
            outcome = f"ignored: {event or 'no webhookEvent'}"
        async with self.pool.acquire() as conn, conn.transaction():
            if not await jira_db.take_delivery(conn, connection.user_id, identifier, event):
                return "duplicate"
            if job is None or not key:
                return outcome
            ticket = await jira_db.by_issue(conn, connection.user_id, str(key))
            if ticket is None:
                return "ignored: not a bridged ticket"
            await outbox.enqueue(
                conn,
                "jira_inbound",
                {
                    "user": connection.user_id,
                    "lane": f"c{ticket.conversation_id}",
                    "issue_key": str(key),
                    "identifier": identifier,
                    **job,
                },
                dedupe_key=f"jira_inbound:{connection.user_id}:{identifier}",
            )
        self._wake_jobs.set()
        return outcome


def _extension(message: dict[str, Any]) -> str:
    mime = str(message.get("media_mime") or "")
    known = {
        "image/jpeg": ".jpg",
        "image/png": ".png",
        "image/webp": ".webp",
        "video/mp4": ".mp4",
        "audio/ogg": ".ogg",
        "audio/mpeg": ".mp3",
        "application/pdf": ".pdf",
    }
    return known.get(mime.split(";")[0], "")


async def bootstrap_jira(pool: asyncpg.Pool, box: SecretBox, settings: Settings) -> bool:
    """Create the admin's connection from `WAGATE_JIRA_*` when it has none yet."""
    if not settings.jira_url or not settings.jira_project_key:
        return False
    token = settings.jira_api_token or settings.jira_pat
    if token is None:
        log.warning("WAGATE_JIRA_URL is set without WAGATE_JIRA_API_TOKEN or WAGATE_JIRA_PAT")
        return False
    admin = await users_db.get_by_email(pool, settings.admin_email)
    if admin is None or await jira_db.get(pool, admin.id) is not None:
        return False
    hook = secrets.token_urlsafe(24)
    secret = settings.jira_webhook_secret
    await jira_db.upsert(
        pool,
        admin.id,
        base_url=settings.jira_url.rstrip("/"),
        auth_kind="cloud" if settings.jira_api_token is not None else "pat",
        email=settings.jira_email,
        token_sealed=box.seal(token.get_secret_value()),
        project_key=settings.jira_project_key.upper(),
        issue_type=settings.jira_issue_type,
        webhook_secret_sealed=box.seal(secret.get_secret_value()) if secret else None,
        webhook_token_hash=token_hash(hook),
        webhook_token_sealed=box.seal(hook),
    )
    log.info("jira connection created for the admin from WAGATE_JIRA_*")
    return True
