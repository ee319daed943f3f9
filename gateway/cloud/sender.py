"""CloudSender: outbox items of Cloud API sessions, sent through the Graph API.

The `OutboxWorker` hands over every item whose session has channel `cloud`; the same REST and
Socket.IO calls queue them. Meta's errors become outcomes:

- `131056` (pair rate limit: this recipient, too fast): this item waits, the others go on;
- `130429` (throughput): the whole number pauses, every item of it waits;
- `190` (token expired): the session goes to `auth_failed`; its items wait (a successful
  `POST /sessions/{id}/test` brings it back);
- the Graph API unreachable or answering 5xx: retried with backoff;
- anything else: the message fails with Meta's code and text.

Sends of one number are spaced to its throughput (80/s, 20/s for Coexistence numbers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from db import cloud as cloud_db
from db import messages
from db.outbox import OutboxItem
from gateway.cloud.graph import AUTH_EXPIRED, PAIR_RATE_LIMIT, THROUGHPUT, GraphError
from gateway.metrics import CHANNEL_CLOUD
from sessions.media import media_path

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.cloud.numbers import CloudNumber
    from gateway.cloud.service import CloudService

CLOUD_KINDS = ("send_text", "send_media", "send_location", "send_template", "react", "mark_read")
# The kinds that send a message of their own (it fails when they fail).
SEND_KINDS = ("send_text", "send_media", "send_location", "send_template")
PAIR_RETRY_SECONDS = 6.0
THROUGHPUT_PAUSE_SECONDS = 30.0
AUTH_RETRY_SECONDS = 60.0


class CloudRetry(Exception):
    """Try this item again after `delay` seconds; `waiting` items never run out of attempts."""

    def __init__(self, delay: float, error: str, *, waiting: bool = True) -> None:
        super().__init__(error)
        self.delay = delay
        self.waiting = waiting


class CloudFailed(Exception):
    """This item can never succeed; `code` is Meta's error code when there is one."""

    def __init__(self, error: str, code: int | None = None) -> None:
        super().__init__(error)
        self.code = code


def recipient(external_id: str) -> str:
    return external_id.split("@")[0].split(":")[0]


class CloudSender:
    def __init__(self, service: CloudService, media_dir: Path) -> None:
        self._service = service
        self._media_dir = media_dir
        self._next_slot: dict[int, float] = {}
        self._paused_until: dict[int, float] = {}

    def handles(self, item: OutboxItem) -> bool:
        return item.session_id is not None and self._service.number(item.session_id) is not None

    async def _throttle(self, number: CloudNumber) -> None:
        now = time.monotonic()
        paused = self._paused_until.get(number.session_id, 0.0)
        if paused > now:
            raise CloudRetry(paused - now, "the number is paused after Meta's throughput limit")
        interval = 1.0 / self._service.messages_per_second(number)
        slot = max(now, self._next_slot.get(number.session_id, 0.0))
        self._next_slot[number.session_id] = slot + interval
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _graph(self, number: CloudNumber, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run one Graph call for `number` and translate its errors into outcomes."""
        session_state = await self._service.pool.fetchval(
            "SELECT state FROM sessions WHERE id = $1", number.session_id
        )
        if session_state == "auth_failed":
            raise CloudRetry(AUTH_RETRY_SECONDS, "the access token was refused; test it again")
        await self._throttle(number)
        try:
            return await call()
        except GraphError as exc:
            if exc.code == PAIR_RATE_LIMIT:
                raise CloudRetry(PAIR_RETRY_SECONDS, str(exc)) from exc
            if exc.code == THROUGHPUT:
                self._paused_until[number.session_id] = time.monotonic() + THROUGHPUT_PAUSE_SECONDS
                raise CloudRetry(THROUGHPUT_PAUSE_SECONDS, str(exc)) from exc
            if exc.code == AUTH_EXPIRED:
                # Another node may have taken a new token meanwhile: try that one first.
                await self._service.numbers.load()
                fresh = self._service.number(number.session_id)
                if fresh is not None and fresh.access_token != number.access_token:
                    raise CloudRetry(0.0, "the access token was replaced") from exc
                await self._service.set_state(number.session_id, "auth_failed", str(exc))
                raise CloudRetry(AUTH_RETRY_SECONDS, str(exc)) from exc
            if exc.unreachable or exc.status >= 500 or exc.code in (1, 2):
                raise CloudRetry(5.0, str(exc), waiting=False) from exc
            raise CloudFailed(str(exc), exc.code if exc.code > 0 else None) from exc

    async def process(self, item: OutboxItem) -> None:
        assert item.session_id is not None
        number = self._service.number(item.session_id)
        if number is None:
            raise CloudFailed("the Cloud API number no longer exists")
        if item.kind not in CLOUD_KINDS:
            raise CloudFailed(f"{item.kind} is not possible on a Cloud API number")
        message = await messages.get_scoped(self._service.pool, item.payload["message_id"])
        if message is None:
            raise CloudFailed("the message no longer exists")
        if item.kind == "react":
            await self._react(number, message, str(item.payload.get("emoji", "")))
            return
        if item.kind == "mark_read":
            if message["wa_message_id"]:
                await self._graph(
                    number,
                    lambda: self._service.graph.mark_read(
                        number.phone_number_id, number.access_token, message["wa_message_id"]
                    ),
                )
            return
        if message["status"] != "pending":
            return  # sent already (a retry after the send, before `done`)
        body: dict[str, Any] = {"to": recipient(message["external_id"])}
        if item.kind == "send_template":
            template = item.payload["template"]
            body["type"] = "template"
            body["template"] = {
                "name": template["name"],
                "language": {"code": template["language"]},
                **({"components": template["components"]} if template.get("components") else {}),
            }
        elif item.kind == "send_media":
            body.update(await self._media(number, message))
        elif item.kind == "send_location":
            where = item.payload["location"]
            body["type"] = "location"
            body["location"] = {"latitude": where["latitude"], "longitude": where["longitude"]}
            body["location"].update({k: where[k] for k in ("name", "address") if where.get(k)})
        else:
            text = message["text_content"] or ""
            body["type"] = "text"
            body["text"] = {"body": text, "preview_url": "http://" in text or "https://" in text}
        if message["quoted_wa_message_id"]:
            body["context"] = {"message_id": message["quoted_wa_message_id"]}
        wamid = await self._graph(
            number,
            lambda: self._service.graph.send(number.phone_number_id, number.access_token, body),
        )
        await self._sent(number, message, str(wamid))

    async def _media(self, number: CloudNumber, message: dict[str, Any]) -> dict[str, Any]:
        sha = message["media_sha256"]
        if not sha:
            raise CloudFailed("the attachment is missing")
        path = media_path(self._media_dir, sha)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise CloudFailed(f"the attachment can not be read: {exc}") from exc
        mime = message["media_mime"] or "application/octet-stream"
        filename = message["media_filename"] or f"file.{mime.split('/')[-1]}"
        media_id = await self._graph(
            number,
            lambda: self._service.graph.upload(
                number.phone_number_id, number.access_token, data, mime, filename
            ),
        )
        kind = str(message["message_type"])
        kind = "audio" if kind == "voice" else kind
        if kind not in ("image", "video", "audio", "document", "sticker"):
            kind = "document"
        media: dict[str, Any] = {"id": str(media_id)}
        if message["text_content"] and kind in ("image", "video", "document"):
            media["caption"] = message["text_content"]
        if kind == "document":
            media["filename"] = filename
        return {"type": kind, kind: media}

    async def _sent(self, number: CloudNumber, message: dict[str, Any], wamid: str) -> None:
        pool = self._service.pool
        async with pool.acquire() as conn, conn.transaction():
            changed = await messages.mark_sent(conn, message["id"], wamid, None)
            later = await self._service.apply_known_statuses(conn, number.session_id, wamid)
        metrics = self._service.metrics
        if metrics is not None:
            metrics.message_sent(CHANNEL_CLOUD, str(message["message_type"]))
        for row in [changed, *later]:
            if row is not None:
                await self._service.bus.publish(
                    "message-status",
                    number.owner_id,
                    number.session_id,
                    {"session_id": number.session_id, **row},
                )

    async def _react(self, number: CloudNumber, message: dict[str, Any], emoji: str) -> None:
        if not message["wa_message_id"]:
            raise CloudFailed("the message has no WhatsApp id yet")
        body = {
            "to": recipient(message["external_id"]),
            "type": "reaction",
            "reaction": {"message_id": message["wa_message_id"], "emoji": emoji},
        }
        await self._graph(
            number,
            lambda: self._service.graph.send(number.phone_number_id, number.access_token, body),
        )
        changed = await messages.react(
            self._service.pool, number.session_id, message["wa_message_id"], "me", emoji
        )
        if changed is not None:
            await self._service.bus.publish(
                "message-updated",
                number.owner_id,
                number.session_id,
                {"session_id": number.session_id, **changed, "change": "reaction"},
            )

    async def failed(self, message_id: int, code: int | None) -> None:
        if code is not None:
            await cloud_db.set_error_code(self._service.pool, message_id, code)
