"""The AI responder: a durable consumer of each operator's event log that answers customers.

It reads `message-new` events after its per-operator cursor (`ai_cursors`), in order. An inbound
customer message in a chat with the AI on is answered (knowledge base or model), handed to a
person, or skipped with a reason; the decision row (`ai_replies`, keyed by the inbound message),
the reply messages (`sender_type` `ai`, idempotency key `ai:<inbound id>:<part>`), their outbox
items, the chat's `needs_human`, the cursor and the events announcing it all commit in one
transaction. So a restart in the middle neither loses a reply (the cursor had not moved) nor
sends one twice (the decision row and the idempotency keys exist). An operator's own reply
(from wagate or the phone) pauses the AI in that chat.

One gateway process runs the responder at a time (a PostgreSQL advisory lock on a connection of
its own; a dead holder's lock vanishes with it). Within it, one lane (task) per operator walks
that operator's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import structlog

from db import ai as ai_db
from db import conversations, event_log, messages, outbox
from db.ai import Personality
from gateway.ai import text as ai_text
from gateway.ai.config import AiConfig, effective
from gateway.ai.providers import (
    Answer,
    KbProvider,
    ModelConfig,
    OpenAiProvider,
    ProviderError,
    Question,
)
from gateway.bus import BusEvent, EventBus
from gateway.metrics import Metrics
from gateway.security import SecretBox
from gateway.settings import Settings
from sessions import ipc

log = structlog.get_logger(__name__)

LOCK_SPACE = 0x4149  # "AI"
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
BATCH = 200
REFRESH_SECONDS = 1.0
LANE_IDLE_SECONDS = 30.0
TEXT_TYPES = frozenset({"text", "link"})
# Inbound messages repeated this often within the loop window are a loop (two bots).
SAME_TEXT_LOOP = 3

Requester = Callable[[int, Any], Coroutine[Any, Any, dict[str, Any]]]


@dataclass(frozen=True)
class Limits:
    max_age: float
    min_interval: float
    per_hour: int
    loop_replies: int
    loop_window: float
    max_reply_chars: int
    split_chars: int
    articles: int


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_age=settings.ai_max_age_seconds,
        min_interval=settings.ai_min_interval_seconds,
        per_hour=settings.ai_replies_per_hour,
        loop_replies=settings.ai_loop_replies,
        loop_window=settings.ai_loop_window_seconds,
        max_reply_chars=settings.ai_max_reply_chars,
        split_chars=settings.ai_split_chars,
        articles=settings.ai_kb_articles,
    )


@dataclass(frozen=True)
class Decision:
    outcome: str  # answered, handoff, loop (handoff without a message)
    parts: list[str]
    provider: str | None = None
    score: float | None = None
    detail: str | None = None

    @property
    def hands_over(self) -> bool:
        return self.outcome in ("handoff", "loop")


class AiResponder:
    def __init__(
        self,
        pool: asyncpg.Pool,
        database_url: str,
        bus: EventBus,
        settings: Settings,
        box: SecretBox,
        http: aiohttp.ClientSession,
        *,
        guarded_http: aiohttp.ClientSession | None = None,
        request: Requester | None = None,
        metrics: Metrics | None = None,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        self.pool = pool
        self._url = database_url
        self._bus = bus
        self._settings = settings
        self._box = box
        self._request = request
        self._metrics = metrics
        self._refresh = refresh_seconds
        self.limits = limits_of(settings)
        self.kb = KbProvider(pool)
        self.openai = OpenAiProvider(
            http, self.kb, guarded_http=guarded_http, allow_private=settings.ai_allow_private
        )
        self._unsubscribe: Callable[[], None] | None = None
        self._lock_conn: asyncpg.Connection | None = None
        self._holding = False
        self._changed = asyncio.Event()
        self._lanes: dict[int, asyncio.Task[None]] = {}
        self._wake: dict[int, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._side: set[asyncio.Task[Any]] = set()
        # Benchmarks hook in here: (inbound message id, seconds from its event to the commit).
        self.on_replied: Callable[[int, float], None] | None = None
        self.replied = 0

    # -- life cycle

    async def start(self) -> None:
        self._unsubscribe = self._bus.subscribe(self._on_event)
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = [t for t in [self._task, *self._lanes.values(), *self._side] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._lanes.clear()
        await self._drop_lock_conn()

    @property
    def holding(self) -> bool:
        """This process runs the responder (holds its lock)."""
        return self._holding

    async def _on_event(self, item: BusEvent) -> None:
        if item.seq is None or item.event != "message-new":
            return
        wake = self._wake.get(item.user_id)
        if wake is not None and item.user_id in self._lanes:
            wake.set()
        else:
            self._changed.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    # -- which operators have a lane

    async def _supervise(self) -> None:
        while True:
            self._changed.clear()
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                log.warning("ai responder: database unavailable", error=str(exc))
                await self._drop_lock_conn()
            except Exception:
                log.exception("ai responder: reconcile failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._refresh)

    async def _reconcile(self) -> None:
        if not await self._hold_lock():
            return
        for user_id in [u for u, t in self._lanes.items() if t.done()]:
            del self._lanes[user_id]
        behind = await ai_db.behind(self.pool)
        idle = [(u, latest) for u, latest, _ in behind if u not in self._lanes]
        answering = await ai_db.may_answer(self.pool, [u for u, _ in idle]) if idle else set()
        for user_id, latest in idle:
            if user_id in answering:
                self._start_lane(user_id)
            else:
                # Nothing of this operator can be answered: pass what is in the log now (read
                # before the check above, so an event after it is looked at).
                await ai_db.advance(self.pool, user_id, latest)
        for user_id, _, _ in behind:
            wake = self._wake.get(user_id)
            if wake is not None:
                wake.set()

    async def _hold_lock(self) -> bool:
        conn = self._lock_conn
        if conn is None or conn.is_closed():
            await self._drop_lock_conn()
            conn = await asyncpg.connect(self._url, timeout=10)
            self._lock_conn = conn
        if not self._holding:
            self._holding = bool(
                await conn.fetchval("SELECT pg_try_advisory_lock($1, 0)", LOCK_SPACE)
            )
            if self._holding:
                log.info("ai responder: this process answers")
        return self._holding

    async def _drop_lock_conn(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        self._holding = False
        for task in self._lanes.values():
            task.cancel()
        self._lanes.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    def _start_lane(self, user_id: int) -> None:
        self._wake.setdefault(user_id, asyncio.Event())
        self._lanes[user_id] = asyncio.get_running_loop().create_task(self._lane(user_id))

    async def _lane(self, user_id: int) -> None:
        wake = self._wake[user_id]
        while True:
            wake.clear()
            try:
                worked = await self._catch_up(user_id)
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                log.warning("ai lane: database unavailable", user_id=user_id, error=str(exc))
                await asyncio.sleep(1.0)
                continue
            except Exception:
                log.exception("ai lane failed", user_id=user_id)
                await asyncio.sleep(5.0)
                continue
            if worked:
                continue
            try:
                await asyncio.wait_for(wake.wait(), LANE_IDLE_SECONDS)
            except TimeoutError:
                return  # the supervisor starts a new lane when there is work again

    async def _catch_up(self, user_id: int) -> bool:
        """Look at what came since the cursor; True when there was something."""
        cursor = await ai_db.cursor(self.pool, user_id)
        latest = int(
            await self.pool.fetchval(
                "SELECT coalesce(max(last_seq), 0) FROM event_counters WHERE user_id = $1",
                user_id,
            )
        )
        if latest <= cursor:
            return False
        events = await ai_db.message_events(self.pool, user_id, cursor, latest, BATCH)
        upto = events[-1][0] if len(events) == BATCH else latest
        for seq, payload in events:
            await self.handle(user_id, seq, payload)
        await ai_db.advance(self.pool, user_id, upto)
        return True

    # -- one event

    async def handle(self, user_id: int, seq: int, payload: dict[str, Any]) -> None:
        if payload.get("from_history"):
            return
        if payload.get("direction") == "outbound":
            if payload.get("sender_type") in ("agent", "owner"):
                await self._operator_replied(payload)
            return
        if payload.get("direction") != "inbound" or payload.get("sender_type") != "user":
            return
        message_id = payload.get("id")
        if not isinstance(message_id, int):
            return
        ctx = await ai_db.context(self.pool, message_id)
        if ctx is None or ctx["owner_id"] != user_id:
            return
        if ctx["no_ac_ai"] or not ctx["ai_active"] or ctx["kind"] in ("broadcast", "status"):
            return
        started = time.perf_counter()
        skip = await self._skip_reason(ctx, message_id)
        if skip is not None:
            if skip != "decided":
                await ai_db.record(self.pool, message_id, ctx["conversation_id"], skip)
                log.info(
                    "ai: not answering",
                    message_id=message_id,
                    conversation_id=ctx["conversation_id"],
                    reason=skip,
                )
            return
        decision = await self._decide(ctx, message_id)
        await self._commit(user_id, seq, message_id, ctx, decision)
        if self.on_replied is not None:
            self.on_replied(message_id, time.perf_counter() - started)

    async def _operator_replied(self, payload: dict[str, Any]) -> None:
        conversation_id = payload.get("conversation_id")
        if not isinstance(conversation_id, int):
            return
        row = await ai_db.get_settings(
            self.pool,
            int(
                await self.pool.fetchval(
                    "SELECT s.owner_id FROM conversations c JOIN sessions s "
                    "ON s.id = c.session_id WHERE c.id = $1",
                    conversation_id,
                )
                or 0
            ),
        )
        config = effective(row, self._settings, self._box)
        if config.operator_pause_minutes <= 0:
            return
        until = datetime.now(UTC) + timedelta(minutes=config.operator_pause_minutes)
        if await ai_db.pause(self.pool, conversation_id, until):
            log.info("ai: paused after an operator reply", conversation_id=conversation_id)

    async def _skip_reason(self, ctx: dict[str, Any], message_id: int) -> str | None:
        now: datetime = ctx["now"]
        if await ai_db.decided(self.pool, message_id) is not None:
            return "decided"
        if ctx["needs_human"]:
            return "needs_human"
        if ctx["ai_paused_until"] is not None and ctx["ai_paused_until"] > now:
            return "paused"
        if ctx["message_type"] not in TEXT_TYPES or not (ctx["text_content"] or "").strip():
            return "not_text"
        if (now - ctx["sent_at"]).total_seconds() > self.limits.max_age:
            return "stale"
        return None

    async def _decide(self, ctx: dict[str, Any], message_id: int) -> Decision:
        limits = self.limits
        conversation_id = ctx["conversation_id"]
        text: str = ctx["text_content"].strip()
        recent = await ai_db.recent(
            self.pool, conversation_id, limits.min_interval, limits.loop_window
        )
        same = await ai_db.same_text_count(self.pool, conversation_id, text, limits.loop_window)
        if recent["loop_window"] >= limits.loop_replies or same >= SAME_TEXT_LOOP:
            return Decision(
                "loop",
                [],
                detail=f"{recent['loop_window']} replies and {same} identical messages "
                f"within {limits.loop_window:g} s",
            )
        row = await ai_db.get_settings(self.pool, ctx["owner_id"])
        config = effective(row, self._settings, self._box)
        personality = await self._personality(ctx)
        language = (
            personality.language
            if personality is not None and personality.language
            else ai_text.detect_language(text)
        )
        max_chars = min(
            limits.max_reply_chars,
            personality.max_reply_chars
            if personality and personality.max_reply_chars
            else limits.max_reply_chars,
        )
        handoff = ai_text.handoff_message(language, config.handoff_message)

        def hand_over(
            detail: str, provider: str | None = None, score: float | None = None
        ) -> Decision:
            parts = ai_text.format_reply(
                handoff, max_chars=max_chars, split_chars=limits.split_chars
            )
            return Decision("handoff", parts, provider, score, detail)

        phrase = ai_text.asks_for_person(text)
        if phrase is not None:
            return hand_over(f"the customer asked for a person ({phrase!r})")
        # A request for a person is honoured even within the rate limit; nothing else is.
        if recent["last_window"] > 0 or recent["last_hour"] >= limits.per_hour:
            return Decision("rate_limited", [])
        self._typing(ctx, "composing")
        history = []
        if config.provider == "openai" and config.history_messages:
            history = await ai_db.history(
                self.pool, conversation_id, message_id, ctx["sent_at"], config.history_messages
            )
        question = Question(ctx["owner_id"], text, language, personality, history)
        answer = await self._answer(question, config)
        if answer.text is None:
            return hand_over(answer.reason or "no answer", answer.provider, answer.score)
        parts = ai_text.format_reply(
            answer.text, max_chars=max_chars, split_chars=limits.split_chars
        )
        if not parts:
            return hand_over("the answer was empty", answer.provider, answer.score)
        return Decision("answered", parts, answer.provider, answer.score, answer.reason)

    async def _answer(self, question: Question, config: AiConfig) -> Answer:
        """The configured provider, falling back to the knowledge base, then to a handoff."""
        if config.provider == "openai":
            started = time.perf_counter()
            try:
                answer = await self.openai.answer(
                    question,
                    ModelConfig(
                        base_url=config.base_url,
                        model=config.model,
                        api_key=config.api_key,
                        timeout=config.timeout_seconds,
                        articles=self.limits.articles,
                        trusted=config.base_url_trusted,
                    ),
                )
            except ProviderError as exc:
                self._observe("openai", "error", started)
                if self._metrics is not None:
                    self._metrics.ai_errors.labels("openai", exc.kind).inc()
                log.warning("ai: model call failed; the knowledge base answers", kind=exc.kind)
                fallback = await self._kb_answer(question, config)
                reason = f"model {exc.kind}: {exc}; kb: {fallback.reason or 'answered'}"
                return Answer(fallback.text, "kb", fallback.score, reason[:500])
            self._observe("openai", "ok", started)
            return answer
        return await self._kb_answer(question, config)

    async def _kb_answer(self, question: Question, config: AiConfig) -> Answer:
        started = time.perf_counter()
        answer = await self.kb.answer(question, config.kb_threshold)
        self._observe("kb", "ok", started)
        return answer

    def _observe(self, provider: str, outcome: str, started: float) -> None:
        if self._metrics is not None:
            self._metrics.ai_request.labels(provider, outcome).observe(
                time.perf_counter() - started
            )

    async def _personality(self, ctx: dict[str, Any]) -> Personality | None:
        for pid in (ctx["personality_id"], ctx["default_personality_id"]):
            if pid is None:
                continue
            found = await ai_db.get_personality(self.pool, int(pid))
            if found is not None and found.user_id == ctx["owner_id"]:
                return found
        return None

    def _typing(self, ctx: dict[str, Any], state: str) -> None:
        """Show "typing…" in a WhatsApp Web chat (best effort, in the background)."""
        if self._request is None or ctx["channel"] != "web":
            return
        command = ipc.ChatPresence(chat=ctx["external_id"], state=state)
        request = self._request

        async def send() -> None:
            try:
                await request(ctx["session_id"], command)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("ai: typing indicator not shown", error=str(exc))

        self._spawn(send())

    # -- the one transaction

    async def _commit(
        self, user_id: int, seq: int, message_id: int, ctx: dict[str, Any], decision: Decision
    ) -> None:
        session_id, conversation_id = ctx["session_id"], ctx["conversation_id"]
        async with self.pool.acquire() as conn, conn.transaction():
            first = await ai_db.record(
                conn,
                message_id,
                conversation_id,
                decision.outcome,
                provider=decision.provider,
                score=decision.score,
                detail=decision.detail,
            )
            if not first:
                return  # decided meanwhile (another process, before this one took the lock)
            items: list[tuple[str, dict[str, Any]]] = []
            for index, part in enumerate(decision.parts):
                reply_id, new = await messages.insert_outbound(
                    conn,
                    session_id=session_id,
                    conversation_id=conversation_id,
                    text=part,
                    quoted_wa_message_id=None,
                    idempotency_key=f"ai:{message_id}:{index}",
                    sent_by=None,
                    sender_type="ai",
                )
                if not new:
                    continue
                await outbox.enqueue(
                    conn,
                    "send_text",
                    {"message_id": reply_id},
                    session_id=session_id,
                    dedupe_key=f"send_text:{reply_id}",
                )
                sent_at = await conn.fetchval(
                    "SELECT sent_at FROM messages WHERE id = $1", reply_id
                )
                items.append(
                    (
                        "message-new",
                        {
                            "session_id": session_id,
                            "id": reply_id,
                            "conversation_id": conversation_id,
                            "wa_message_id": None,
                            "direction": "outbound",
                            "sender_type": "ai",
                            "message_type": "text",
                            "text_content": part,
                            "status": "pending",
                            "sent_at": sent_at.isoformat(),
                            "from_history": False,
                            "in_reply_to": message_id,
                            "ai_outcome": decision.outcome,
                        },
                    )
                )
            if items:
                await conversations.touch(conn, conversation_id, datetime.now(UTC))
            changed = bool(items)
            if decision.hands_over and await ai_db.set_needs_human(conn, conversation_id, True):
                changed = True
            if changed:
                items.append(
                    (
                        "conversation-updated",
                        {"session_id": session_id, "conversation_id": conversation_id},
                    )
                )
            await ai_db.advance(conn, user_id, seq)
            logged = await event_log.append_many(conn, user_id, session_id, items)
        self.replied += 1
        log.info(
            "ai: decided",
            message_id=message_id,
            conversation_id=conversation_id,
            outcome=decision.outcome,
            provider=decision.provider,
            parts=len(decision.parts),
            detail=decision.detail,
        )
        if decision.outcome == "loop":
            self._typing(ctx, "paused")
        await self._bus.fan_out_logged(logged)
