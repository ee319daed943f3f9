"""Sending from wagate: a message row in `pending` and an outbox item, in one transaction.

Used by the REST API and Socket.IO alike. The `OutboxWorker` (gateway.outbox) hands the item to
the session's worker and moves the message to `sent` (or `failed`), publishing each change.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from db import conversations, messages, outbox
from db import sessions as sessions_db
from db.users import User
from gateway.errors import ApiError, Conflict, NotFound
from gateway.keys import BUS, POOL

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


async def send_text(
    app: web.Application,
    user: User,
    conversation_id: int,
    text: str,
    *,
    reply_to: int | None = None,
    idempotency_key: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Queue a text message; (the message, whether it is new). The same idempotency key gives
    back the same message and sends nothing."""
    conversation = await owned_conversation(app, user, conversation_id)
    session = await sendable_session(app, conversation["session_id"])
    quoted: str | None = None
    if reply_to is not None:
        target = await messages.get_scoped(app[POOL], reply_to)
        if target is None or target["conversation_id"] != conversation_id:
            raise ApiError(400, "reply_to is not a message of this conversation", code="bad_reply")
        if not target["wa_message_id"]:
            raise ApiError(400, "reply_to has not been sent yet", code="bad_reply")
        quoted = target["wa_message_id"]
    async with app[POOL].acquire() as conn, conn.transaction():
        message_id, new = await messages.insert_outbound(
            conn,
            session_id=session.id,
            conversation_id=conversation_id,
            text=text,
            quoted_wa_message_id=quoted,
            idempotency_key=idempotency_key,
            sent_by=user.id,
        )
        if new:
            await outbox.enqueue(
                conn,
                "send_text",
                {"message_id": message_id},
                session_id=session.id,
                dedupe_key=f"send_text:{message_id}",
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
                "message_type": "text",
                "text_content": text,
                "status": "pending",
                "sent_at": message["sent_at"].isoformat(),
                "from_history": False,
            },
        )
    return message, new


async def queue_change(
    app: web.Application, user: User, message_id: int, kind: str, **fields: Any
) -> dict[str, Any]:
    """Queue a reaction, an edit or a revoke of a message."""
    message = await owned_message(app, user, message_id)
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
