"""Sending from wagate: a message row in `pending` and an outbox item, in one transaction.

Used by the REST API and Socket.IO alike. The `OutboxWorker` (gateway.outbox) hands the item to
the session's worker and moves the message to `sent` (or `failed`), publishing each change.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from db import cloud as cloud_db
from db import conversations, messages, outbox
from db import sessions as sessions_db
from db.users import User
from gateway.errors import ApiError, Conflict, NotFound
from gateway.keys import BUS, POOL
from sessions.media import StoredMedia

# Cloud API: the customer service window opened by the customer's last message.
SERVICE_WINDOW = timedelta(hours=24)

# A message can be queued while the account is up or on its way back up; anything else would
# sit in the outbox for nobody.
SENDABLE_STATES = frozenset({"connected", "connecting", "reconnecting", "starting", "pairing"})


async def owned_conversation(
    app: web.Application, user: User, conversation_id: int
) -> dict[str, Any]:
    found = await conversations.get(app[POOL], conversation_id)
    if found is None or (found["owner_id"] != user.id and not user.is_admin):
        raise NotFound("conversation")
    return found


async def owned_message(app: web.Application, user: User, message_id: int) -> dict[str, Any]:
    found = await messages.get_scoped(app[POOL], message_id)
    if found is None or (found["owner_id"] != user.id and not user.is_admin):
        raise NotFound("message")
    return found


async def sendable_session(app: web.Application, session_id: int) -> sessions_db.Session:
    session = await sessions_db.get(app[POOL], session_id)
    if session is None:
        raise NotFound("session")
    if session.channel == "web" and session.state not in SENDABLE_STATES:
        raise Conflict(
            f"the WhatsApp account of this conversation is {session.state.replace('_', ' ')}"
            "; nothing was queued (link it again or start it first)",
            code="session_unavailable",
        )
    return session


# What may be sent as an attachment, by the type sniffed from its bytes.
ALLOWED_MEDIA = (
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "video/mp4",
    "video/3gpp",
    "audio/ogg",
    "audio/mpeg",
    "audio/mp4",
    "audio/aac",
    "audio/amr",
    "application/pdf",
    "application/zip",
    "text/plain",
    "text/csv",
    "application/msword",
    "application/vnd.openxmlformats-officedocument",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/vnd.oasis.opendocument",
)


def media_kind(mime: str, *, voice: bool = False) -> str:
    if mime == "image/webp":
        return "sticker"
    if mime.startswith("image/"):
        return "image"
    if mime.startswith("video/"):
        return "video"
    if mime.startswith("audio/"):
        return "voice" if voice or mime == "audio/ogg" else "audio"
    return "document"


def allowed(mime: str) -> bool:
    return mime.startswith(ALLOWED_MEDIA)


async def send_text(
    app: web.Application,
    user: User,
    conversation_id: int,
    text: str,
    *,
    reply_to: int | None = None,
    idempotency_key: str | None = None,
    attachment: StoredMedia | None = None,
    filename: str | None = None,
    location: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Queue a message (text, an attachment with `text` as its caption, or a location with
    `text` as its name); (the message, whether it is new). The same idempotency key gives back
    the same message and sends nothing."""
    conversation = await owned_conversation(app, user, conversation_id)
    session = await sendable_session(app, conversation["session_id"])
    if location is not None and session.channel != "cloud":
        raise ApiError(
            422,
            "locations are sent from Cloud API numbers only (the WhatsApp Web worker does not "
            "send them); nothing was queued",
            code="location_unsupported",
        )
    if session.channel == "cloud":
        await require_service_window(app, conversation_id)
    quoted: str | None = None
    if reply_to is not None:
        target = await messages.get_scoped(app[POOL], reply_to)
        if target is None or target["conversation_id"] != conversation_id:
            raise ApiError(400, "reply_to is not a message of this conversation", code="bad_reply")
        if not target["wa_message_id"]:
            raise ApiError(400, "reply_to has not been sent yet", code="bad_reply")
        quoted = target["wa_message_id"]
    async with app[POOL].acquire() as conn, conn.transaction():
        kind = "text"
        media = None
        if attachment is not None:
            assert attachment.sha256 is not None
            assert attachment.mime is not None
            kind = media_kind(attachment.mime)
            media = (attachment.sha256, attachment.mime, attachment.size or 0, filename)
        if location is not None:
            kind = "location"
        message_id, new = await messages.insert_outbound(
            conn,
            session_id=session.id,
            conversation_id=conversation_id,
            text=text,
            quoted_wa_message_id=quoted,
            idempotency_key=idempotency_key,
            sent_by=user.id,
            message_type=kind,
            media=media,
        )
        if new:
            await conversations.touch(conn, conversation_id, datetime.now(UTC))
            job = "send_text" if attachment is None else "send_media"
            payload: dict[str, Any] = {"message_id": message_id}
            if location is not None:
                job = "send_location"
                payload["location"] = location
                await cloud_db.set_location(conn, message_id, location)
            await outbox.enqueue(
                conn,
                job,
                payload,
                session_id=session.id,
                dedupe_key=f"{job}:{message_id}",
            )
    message = await messages.get_scoped(app[POOL], message_id)
    assert message is not None
    if new:
        await app[BUS].publish(
            "message-new",
            conversation["owner_id"],
            session.id,
            {
                "session_id": session.id,
                "id": message_id,
                "conversation_id": conversation_id,
                "wa_message_id": None,
                "direction": "outbound",
                "sender_type": "agent",
                "message_type": message["message_type"],
                "text_content": text or None,
                "status": "pending",
                "sent_at": message["sent_at"].isoformat(),
                "from_history": False,
            },
        )
        await app[BUS].publish(
            "conversation-updated",
            conversation["owner_id"],
            session.id,
            {"session_id": session.id, "conversation_id": conversation_id},
        )
    return message, new


async def require_service_window(app: web.Application, conversation_id: int) -> None:
    """Cloud API: free-form messages only within 24 hours of the customer's last message."""
    last = await cloud_db.last_inbound_at(app[POOL], conversation_id)
    if last is None or datetime.now(UTC) - last > SERVICE_WINDOW:
        raise ApiError(
            422,
            "the 24-hour customer service window of this conversation is closed"
            + (" (the customer has never written)" if last is None else "")
            + ": only a template message can be sent now",
            code="window_closed",
        )


async def send_template(
    app: web.Application,
    user: User,
    conversation_id: int,
    template: dict[str, Any],
    *,
    idempotency_key: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Queue a template message (Cloud API numbers; allowed outside the service window)."""
    conversation = await owned_conversation(app, user, conversation_id)
    session = await sendable_session(app, conversation["session_id"])
    if session.channel != "cloud":
        raise Conflict("templates are sent from Cloud API numbers only", code="not_cloud")
    text = f"[template {template['name']} ({template['language']})]"
    async with app[POOL].acquire() as conn, conn.transaction():
        message_id, new = await messages.insert_outbound(
            conn,
            session_id=session.id,
            conversation_id=conversation_id,
            text=text,
            quoted_wa_message_id=None,
            idempotency_key=idempotency_key,
            sent_by=user.id,
            message_type="template",
        )
        if new:
            await conversations.touch(conn, conversation_id, datetime.now(UTC))
            await outbox.enqueue(
                conn,
                "send_template",
                {"message_id": message_id, "template": template},
                session_id=session.id,
                dedupe_key=f"send_template:{message_id}",
            )
    message = await messages.get_scoped(app[POOL], message_id)
    assert message is not None
    if new:
        base = {"session_id": session.id}
        await app[BUS].publish(
            "message-new",
            conversation["owner_id"],
            session.id,
            {
                **base,
                "id": message_id,
                "conversation_id": conversation_id,
                "wa_message_id": None,
                "direction": "outbound",
                "sender_type": "agent",
                "message_type": "template",
                "text_content": text,
                "status": "pending",
                "sent_at": message["sent_at"].isoformat(),
                "from_history": False,
            },
        )
        await app[BUS].publish(
            "conversation-updated",
            conversation["owner_id"],
            session.id,
            {**base, "conversation_id": conversation_id},
        )
    return message, new


async def queue_change(
    app: web.Application, user: User, message_id: int, kind: str, **fields: Any
) -> dict[str, Any]:
    """Queue a reaction, an edit or a revoke of a message."""
    message = await owned_message(app, user, message_id)
    if kind in ("edit", "revoke"):
        session = await sessions_db.get(app[POOL], message["session_id"])
        if session is not None and session.channel == "cloud":
            what = "edited" if kind == "edit" else "deleted for everyone"
            raise Conflict(
                f"a message sent through the Cloud API can not be {what} (Meta's API has no "
                "such call); nothing was queued",
                code="not_possible_on_cloud",
            )
    if not message["wa_message_id"]:
        raise Conflict("this message has not been sent to WhatsApp yet", code="not_sent")
    if kind in ("edit", "revoke") and message["direction"] != "outbound":
        raise Conflict(f"only messages sent from this account can be {kind}ed", code="not_own")
    if kind == "edit" and message["message_type"] != "text":
        raise Conflict("only text messages can be edited", code="not_text")
    await sendable_session(app, message["session_id"])
    async with app[POOL].acquire() as conn, conn.transaction():
        await outbox.enqueue(
            conn, kind, {"message_id": message_id, **fields}, session_id=message["session_id"]
        )
    return message


async def queue_cloud_read(app: web.Application, session_id: int, wa_message_id: str) -> bool:
    """Cloud API: queue the read receipt of a chat's newest inbound message (Meta marks the
    earlier ones read with it); False when that message is unknown or already queued."""
    async with app[POOL].acquire() as conn, conn.transaction():
        message_id = await cloud_db.message_id_of(conn, session_id, wa_message_id)
        if message_id is None:
            return False
        queued = await outbox.enqueue(
            conn,
            "mark_read",
            {"message_id": message_id},
            session_id=session_id,
            dedupe_key=f"mark_read:{message_id}",
        )
    return queued is not None
