"""OutboxWorker: takes outbox items and does them exactly once (sending, reactions, edits,
revokes), with retries and backoff; wakes on LISTEN/NOTIFY and polls as a fallback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from db import messages, outbox
from db import sessions as sessions_db
from db.outbox import OutboxItem
from gateway.bus import EventBus
from gateway.cloud.sender import SEND_KINDS, CloudFailed, CloudRetry, CloudSender
from gateway.metrics import CHANNEL_WEB, Metrics
from sessions import ipc
from sessions.backoff import Backoff
from sessions.media import media_path
from sessions.supervisor import CommandFailed, SessionSupervisor, SessionUnavailable

log = structlog.get_logger(__name__)

KINDS = [
    "send_text",
    "send_media",
    "send_location",
    "react",
    "edit",
    "revoke",
    "send_template",
    "mark_read",
]
LEASE_SECONDS = 60.0
POLL_SECONDS = 1.0
# A session that is down is waited for (the message stays pending) this long, then the
# message fails visibly.
GIVE_UP_AFTER = timedelta(hours=24)
MAX_FAILED_ATTEMPTS = 5


class PermanentError(Exception):
    """This item can never succeed (the target is gone, WhatsApp refused it)."""


class OutboxWorker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        database_url: str,
        supervisor: SessionSupervisor,
        bus: EventBus,
        *,
        media_dir: Path,
        keep_revoked: bool = True,
        retry_base: float = 1.0,
        metrics: Metrics | None = None,
        node_id: str | None = None,
        node_ttl: float | None = None,
    ) -> None:
        self._node_id = node_id
        self._node_ttl = node_ttl
        self._metrics = metrics
        self._media_dir = media_dir
        self._pool = pool
        self._url = database_url
        self._supervisor = supervisor
        self._bus = bus
        self._keep_revoked = keep_revoked
        self._retry = Backoff(base=retry_base, cap=300.0, jitter=0.2)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None
        self._handlers: dict[str, Callable[[OutboxItem], Awaitable[None]]] = {
            "send_text": self._send_text,
            "send_media": self._send_media,
            "react": self._react,
            "edit": self._edit,
            "revoke": self._revoke,
            "send_location": self._not_on_web,
            "send_template": self._not_on_web,
            "mark_read": self._not_on_web,
        }
        self.done = 0
        self._cloud: CloudSender | None = None

    def use_cloud(self, sender: CloudSender) -> None:
        """Items of Cloud API sessions go to the Graph API through `sender`."""
        self._cloud = sender

    async def start(self) -> None:
        try:
            self._listener = await asyncpg.connect(self._url)
            await self._listener.add_listener(outbox.CHANNEL, self._notified)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("outbox notifications unavailable; polling only", error=str(exc))
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _notified(self, *_args: Any) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

    async def _run(self) -> None:
        while True:
            try:
                items = await outbox.claim(
                    self._pool,
                    KINDS,
                    20,
                    LEASE_SECONDS,
                    node_id=self._node_id,
                    node_ttl=self._node_ttl,
                )
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("outbox: database unavailable", error=str(exc))
                items = []
            for item in items:
                await self._do(item)
            if not items:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    def _count(self, item: OutboxItem, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.outbox_items.labels(item.kind, outcome).inc()

    async def _do(self, item: OutboxItem) -> None:
        if self._cloud is not None and self._cloud.handles(item):
            await self._do_cloud(self._cloud, item)
            return
        try:
            await self._handlers[item.kind](item)
        except asyncio.CancelledError:
            raise
        except PermanentError as exc:
            await self._give_up(item, str(exc))
            return
        except (SessionUnavailable, CommandFailed, TimeoutError) as exc:
            permanent = isinstance(exc, CommandFailed) and exc.kind == "invalid"
            waiting = isinstance(exc, SessionUnavailable) or (
                isinstance(exc, CommandFailed) and exc.kind == "not_connected"
            )
            if permanent or (not waiting and item.attempts >= MAX_FAILED_ATTEMPTS):
                await self._give_up(item, str(exc) or type(exc).__name__)
                return
            if waiting and await self._too_old(item):
                await self._give_up(item, f"the account stayed unavailable: {exc}")
                return
            self._retry.attempt = min(item.attempts - 1, 12)
            delay = self._retry.next_delay()
            await outbox.retry(
                self._pool, item.id, str(exc), datetime.now(UTC) + timedelta(seconds=delay)
            )
            self._count(item, "retry")
            return
        except Exception as exc:
            log.exception("outbox item failed", item_id=item.id, kind=item.kind)
            if item.attempts >= MAX_FAILED_ATTEMPTS:
                await self._give_up(item, f"{type(exc).__name__}: {exc}")
            else:
                await outbox.retry(
                    self._pool, item.id, str(exc), datetime.now(UTC) + timedelta(seconds=5)
                )
                self._count(item, "retry")
            return
        await outbox.done(self._pool, item.id)
        self._count(item, "done")
        self.done += 1

    async def _do_cloud(self, sender: CloudSender, item: OutboxItem) -> None:
        """A Cloud API session's item: the channel decides, the outcomes are the same."""
        try:
            await sender.process(item)
        except asyncio.CancelledError:
            raise
        except CloudFailed as exc:
            if item.kind in SEND_KINDS:
                await sender.failed(int(item.payload["message_id"]), exc.code)
            await self._give_up(item, str(exc))
            return
        except CloudRetry as exc:
            if not exc.waiting and item.attempts >= MAX_FAILED_ATTEMPTS:
                await self._give_up(item, str(exc))
                return
            if exc.waiting and await self._too_old(item):
                await self._give_up(item, f"the number stayed unavailable: {exc}")
                return
            await outbox.retry(
                self._pool, item.id, str(exc), datetime.now(UTC) + timedelta(seconds=exc.delay)
            )
            self._count(item, "retry")
            return
        except Exception as exc:
            log.exception("cloud outbox item failed", item_id=item.id, kind=item.kind)
            if item.attempts >= MAX_FAILED_ATTEMPTS:
                await self._give_up(item, f"{type(exc).__name__}: {exc}")
            else:
                await outbox.retry(
                    self._pool, item.id, str(exc), datetime.now(UTC) + timedelta(seconds=5)
                )
                self._count(item, "retry")
            return
        await outbox.done(self._pool, item.id)
        self._count(item, "done")
        self.done += 1

    async def _too_old(self, item: OutboxItem) -> bool:
        created = await self._pool.fetchval("SELECT created_at FROM outbox WHERE id = $1", item.id)
        return created is not None and datetime.now(UTC) - created > GIVE_UP_AFTER

    async def _give_up(self, item: OutboxItem, error: str) -> None:
        log.warning("outbox item failed for good", item_id=item.id, kind=item.kind, error=error)
        await outbox.fail(self._pool, item.id, error)
        self._count(item, "failed")
        if item.kind in SEND_KINDS:
            changed = await messages.mark_failed(self._pool, item.payload["message_id"], error)
            if changed is not None:
                await self._status(item.session_id, {**changed, "error": error})
        elif item.session_id is not None:
            message = await messages.get_scoped(self._pool, item.payload["message_id"])
            if message is not None:
                await self._bus.publish(
                    "error",
                    message["owner_id"],
                    item.session_id,
                    {
                        "session_id": item.session_id,
                        "message_id": message["id"],
                        "action": item.kind,
                        "error": error,
                    },
                )

    async def _status(self, session_id: int | None, row: dict[str, Any]) -> None:
        message = await messages.get_scoped(self._pool, row["id"])
        if message is None:
            return
        await self._bus.publish(
            "message-status",
            message["owner_id"],
            session_id,
            {"session_id": session_id, **row},
        )

    async def _target(self, item: OutboxItem) -> dict[str, Any]:
        message = await messages.get_scoped(self._pool, item.payload["message_id"])
        if message is None:
            raise PermanentError("the message no longer exists")
        return message

    async def _own_jid(self, session_id: int) -> str:
        session = await sessions_db.get(self._pool, session_id)
        if session is None or not session.jid:
            raise SessionUnavailable("the account is not linked")
        return session.jid.split(":")[0].split("@")[0] + "@s.whatsapp.net"

    # -- the kinds ---------------------------------------------------------------------------

    async def _send_text(self, item: OutboxItem) -> None:
        message = await self._target(item)
        if message["status"] != "pending":
            return  # already sent (a retry after the send succeeded but before `done`)
        quoted_sender = None
        if message["quoted_wa_message_id"]:
            quoted = await self._pool.fetchrow(
                "SELECT direction, sender_jid FROM messages WHERE session_id = $1 "
                "AND wa_message_id = $2",
                message["session_id"],
                message["quoted_wa_message_id"],
            )
            if quoted is not None:
                quoted_sender = (
                    await self._own_jid(message["session_id"])
                    if quoted["direction"] == "outbound"
                    else quoted["sender_jid"]
                )
        result = await self._supervisor.request(
            message["session_id"],
            ipc.SendText(
                to=message["external_id"],
                text=message["text_content"] or "",
                reply_to=message["quoted_wa_message_id"],
                reply_to_sender=quoted_sender,
            ),
        )
        await self._mark_sent(message, result)

    async def _send_media(self, item: OutboxItem) -> None:
        message = await self._target(item)
        if message["status"] != "pending":
            return
        result = await self._supervisor.request(
            message["session_id"],
            ipc.SendMedia(
                to=message["external_id"],
                kind=message["message_type"],
                path=str(media_path(self._media_dir, message["media_sha256"])),
                mime_type=message["media_mime"] or "application/octet-stream",
                filename=message["media_filename"],
                caption=message["text_content"],
            ),
            timeout=120,
        )
        await self._mark_sent(message, result)

    async def _not_on_web(self, item: OutboxItem) -> None:
        raise PermanentError(f"{item.kind} is possible on Cloud API numbers only")

    async def _mark_sent(self, message: dict[str, Any], result: dict[str, Any]) -> None:
        """WhatsApp took it: the id and time it gave the message, and `sent` for the owner."""
        stamp = result.get("timestamp")
        changed = await messages.mark_sent(
            self._pool,
            message["id"],
            str(result["id"]),
            datetime.fromisoformat(stamp) if stamp else None,
        )
        if changed is not None:
            if self._metrics is not None:
                self._metrics.message_sent(CHANNEL_WEB, str(message["message_type"]))
            await self._status(message["session_id"], changed)

    async def _sender_of(self, message: dict[str, Any]) -> str:
        if message["direction"] == "outbound":
            return await self._own_jid(message["session_id"])
        return str(message["sender_jid"] or message["external_id"])

    async def _react(self, item: OutboxItem) -> None:
        message = await self._target(item)
        emoji = str(item.payload.get("emoji", ""))
        await self._supervisor.request(
            message["session_id"],
            ipc.React(
                chat=message["external_id"],
                sender=await self._sender_of(message),
                message_id=message["wa_message_id"],
                emoji=emoji,
            ),
        )
        changed = await messages.react(
            self._pool, message["session_id"], message["wa_message_id"], "me", emoji
        )
        await self._updated(message, changed, "reaction")

    async def _edit(self, item: OutboxItem) -> None:
        message = await self._target(item)
        text = str(item.payload["text"])
        await self._supervisor.request(
            message["session_id"],
            ipc.Edit(chat=message["external_id"], message_id=message["wa_message_id"], text=text),
        )
        changed = await messages.edit(
            self._pool, message["session_id"], message["wa_message_id"], text, datetime.now(UTC)
        )
        await self._updated(message, changed, "edit")

    async def _revoke(self, item: OutboxItem) -> None:
        message = await self._target(item)
        if message["revoked_at"] is not None:
            return
        await self._supervisor.request(
            message["session_id"],
            ipc.Revoke(
                chat=message["external_id"],
                sender=await self._own_jid(message["session_id"]),
                message_id=message["wa_message_id"],
            ),
        )
        changed = await messages.revoke(
            self._pool,
            message["session_id"],
            message["wa_message_id"],
            datetime.now(UTC),
            self._keep_revoked,
        )
        await self._updated(message, changed, "revoke")

    async def _updated(
        self, message: dict[str, Any], changed: dict[str, Any] | None, change: str
    ) -> None:
        if changed is None:
            return
        await self._bus.publish(
            "message-updated",
            message["owner_id"],
            message["session_id"],
            {"session_id": message["session_id"], **changed, "change": change},
        )
