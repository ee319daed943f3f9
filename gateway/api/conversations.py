"""`/api/v1/conversations`: reading a chat clears its unread count, here and on WhatsApp."""

from __future__ import annotations

import structlog
from aiohttp import web
from pydantic import BaseModel

from db import conversations
from gateway.auth import current_user
from gateway.errors import NotFound
from gateway.keys import POOL, SUPERVISOR
from gateway.routing import ApiRouter, path_int
from sessions import ipc
from sessions.supervisor import CommandFailed, SessionUnavailable

router = ApiRouter("conversations")
log = structlog.get_logger(__name__)

MAX_RECEIPT_IDS = 100


class ReadResult(BaseModel):
    conversation_id: int
    unread_count: int
    receipt_sent: bool


@router.post(
    "/api/v1/conversations/{conversation_id}/read",
    summary="Mark a conversation read (and send the read receipt to WhatsApp)",
    response=ReadResult,
    errors=(404,),
)
async def mark_read(request: web.Request) -> ReadResult:
    user = current_user(request)
    pool = request.app[POOL]
    found = await conversations.with_owner(pool, path_int(request, "conversation_id"))
    if found is None or (found["owner_id"] != user.id and not user.is_admin):
        raise NotFound("conversation")
    unread = int(found["unread_count"])
    pending = await conversations.last_inbound(
        pool, found["id"], min(max(unread, 1), MAX_RECEIPT_IDS)
    )
    await conversations.mark_read(pool, found["id"])
    sent = False
    if unread and pending:
        by_sender: dict[str, list[str]] = {}
        for row in pending:
            by_sender.setdefault(row["sender_jid"] or found["external_id"], []).append(
                row["wa_message_id"]
            )
        try:
            for sender, ids in by_sender.items():
                await request.app[SUPERVISOR].request(
                    found["session_id"],
                    ipc.MarkRead(chat=found["external_id"], sender=sender, message_ids=ids),
                    timeout=15,
                )
            sent = True
        except (SessionUnavailable, CommandFailed, TimeoutError) as exc:
            log.info("read receipt not sent", conversation_id=found["id"], reason=str(exc))
    await request.app[SUPERVISOR].publish_conversation(found["session_id"], found["id"])
    return ReadResult(conversation_id=found["id"], unread_count=0, receipt_sent=sent)
