"""`/api/v1/conversations`: the inbox (keyset-paginated, owner-scoped), one chat, its messages,
sending, and reading a chat (clears its unread count here and on WhatsApp)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import structlog
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, Field, model_validator

from db import ai as ai_db
from db import conversations, messages
from db import jira as jira_db
from db import sessions as sessions_db
from gateway.api.models import ConversationOut, MessageOut
from gateway.auth import compat_user, current_user
from gateway.cursor import decode_cursor, encode_cursor
from gateway.errors import ApiError, NotFound
from gateway.keys import POOL, SESSIONS, SETTINGS
from gateway.messaging import allowed, owned_conversation, queue_cloud_read, send_text
from gateway.routing import ApiRouter, path_int
from sessions import ipc
from sessions.media import MediaStore, StoredMedia, sniff
from sessions.supervisor import CommandFailed, SessionUnavailable

router = ApiRouter("conversations")
log = structlog.get_logger(__name__)

MAX_RECEIPT_IDS = 100


class ReadResult(BaseModel):
    conversation_id: int
    unread_count: int
    receipt_sent: bool = Field(
        description="WhatsApp Web: the worker sent the read receipt. Cloud API: the receipt "
        "of the newest inbound message (it covers the earlier ones) was queued for the Graph API"
    )


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
    session = await sessions_db.get(pool, found["session_id"])
    if session is not None and session.channel == "cloud":
        if unread and pending:
            sent = await queue_cloud_read(
                request.app, found["session_id"], pending[0]["wa_message_id"]
            )
    elif unread and pending:
        by_sender: dict[str, list[str]] = {}
        for row in pending:
            by_sender.setdefault(row["sender_jid"] or found["external_id"], []).append(
                row["wa_message_id"]
            )
        try:
            for sender, ids in by_sender.items():
                await request.app[SESSIONS].request(
                    found["session_id"],
                    ipc.MarkRead(chat=found["external_id"], sender=sender, message_ids=ids),
                    timeout=15,
                )
            sent = True
        except (SessionUnavailable, CommandFailed, TimeoutError) as exc:
            log.info("read receipt not sent", conversation_id=found["id"], reason=str(exc))
    await request.app[SESSIONS].publish_conversation(found["session_id"], found["id"])
    return ReadResult(conversation_id=found["id"], unread_count=0, receipt_sent=sent)


class ConversationQuery(BaseModel):
    session_id: int | None = None
    unread: bool | None = None
    archived: bool | None = Field(default=False, description="Default: only active chats")
    label: str | None = Field(default=None, max_length=100)
    q: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Full-text search over contact names and message text (en/es/pt)",
    )
    cursor: str | None = Field(default=None, description="next_cursor of the previous page")
    limit: int = Field(default=50, ge=1, le=200)


class ConversationPage(BaseModel):
    items: list[ConversationOut]
    next_cursor: str | None


@router.get(
    "/api/v1/conversations",
    summary="The inbox: conversations, most recent first (keyset pagination)",
    query=ConversationQuery,
    response=ConversationPage,
)
async def list_conversations(request: web.Request, query: ConversationQuery) -> ConversationPage:
    user = current_user(request)
    after = decode_cursor(query.cursor) if query.cursor else None
    rows = await conversations.page(
        request.app[POOL],
        owner_id=None if user.is_admin else user.id,
        session_id=query.session_id,
        unread=query.unread,
        archived=query.archived,
        label=query.label,
        q=query.q,
        after=after,
        limit=query.limit + 1,
    )
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        next_cursor = encode_cursor(last["last_message_at"], last["id"])
    keys = await jira_db.ticket_keys(request.app[POOL], [int(r["id"]) for r in rows])
    return ConversationPage(
        items=[ConversationOut.from_row(r, keys.get(int(r["id"]))) for r in rows],
        next_cursor=next_cursor,
    )


async def _with_ticket(request: web.Request, row: dict[str, Any]) -> ConversationOut:
    keys = await jira_db.ticket_keys(request.app[POOL], [int(row["id"])])
    return ConversationOut.from_row(row, keys.get(int(row["id"])))


@router.get(
    "/api/v1/conversations/{conversation_id}",
    summary="One conversation",
    response=ConversationOut,
    errors=(404,),
)
async def get_conversation(request: web.Request) -> ConversationOut:
    found = await owned_conversation(
        request.app, current_user(request), path_int(request, "conversation_id")
    )
    return await _with_ticket(request, found)


class ConversationPatch(BaseModel):
    ai_active: bool | None = None
    no_ac_ai: bool | None = None
    jira_bridge: bool | None = None
    archived: bool | None = None
    personality_id: int | None = None
    labels: list[str] | None = Field(default=None, max_length=50)


@router.patch(
    "/api/v1/conversations/{conversation_id}",
    summary="Switch the AI responder or the Jira bridge, archive, label",
    body=ConversationPatch,
    response=ConversationOut,
    errors=(404, 422),
)
async def patch_conversation(request: web.Request, body: ConversationPatch) -> ConversationOut:
    user = current_user(request)
    found = await owned_conversation(request.app, user, path_int(request, "conversation_id"))
    if body.personality_id is not None:
        personality = await ai_db.get_personality(request.app[POOL], body.personality_id)
        if personality is None or personality.user_id != found["owner_id"]:
            # Someone else's personality is as unknown as one that does not exist.
            raise ApiError(
                422,
                f"no personality {body.personality_id} (see GET /api/v1/personalities)",
                code="unknown_personality",
            )
    labels = None
    if body.labels is not None:
        labels = sorted({label.strip() for label in body.labels if label.strip()})
    await conversations.patch(
        request.app[POOL],
        found["id"],
        ai_active=body.ai_active,
        no_ac_ai=body.no_ac_ai,
        jira_bridge=body.jira_bridge,
        archived=body.archived,
        personality_set="personality_id" in body.model_fields_set,
        personality_id=body.personality_id,
        labels=labels,
    )
    await request.app[SESSIONS].publish_conversation(found["session_id"], found["id"])
    updated = await conversations.get(request.app[POOL], found["id"])
    assert updated is not None
    return await _with_ticket(request, updated)


class MessageQuery(BaseModel):
    before: int | None = Field(default=None, description="Messages older than this message id")
    after: int | None = Field(default=None, description="Messages newer than this message id")
    limit: int = Field(default=50, ge=1, le=200)


class MessagePage(BaseModel):
    items: list[MessageOut] = Field(description="Oldest first")
    before: int | None = Field(description="Pass as `before` for the previous (older) page")
    after: int | None = Field(description="Pass as `after` for the next (newer) page")


@router.get(
    "/api/v1/conversations/{conversation_id}/messages",
    summary="A conversation's messages (keyset pagination in both directions)",
    query=MessageQuery,
    response=MessagePage,
    errors=(404,),
)
async def list_messages(request: web.Request, query: MessageQuery) -> MessagePage:
    if query.before is not None and query.after is not None:
        raise ApiError(400, "give `before` or `after`, not both", code="validation_error")
    found = await owned_conversation(
        request.app, current_user(request), path_int(request, "conversation_id")
    )
    rows = await messages.page(
        request.app[POOL],
        found["id"],
        before=query.before,
        after=query.after,
        limit=query.limit,
    )
    if rows is None:
        raise NotFound("cursor message in this conversation")
    if query.after is None:
        rows.reverse()  # the query walks newest first; pages read oldest first
    items = [MessageOut.from_row(r) for r in rows]
    return MessagePage(
        items=items,
        before=items[0].id if items else query.after,
        after=items[-1].id if items else query.before,
    )


class LocationIn(BaseModel):
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    name: str | None = Field(default=None, max_length=1000)
    address: str | None = Field(default=None, max_length=1000)


class SendRequest(BaseModel):
    text: str | None = Field(default=None, min_length=1, max_length=65536)
    reply_to: int | None = Field(default=None, description="Id of the message to quote")
    location: LocationIn | None = Field(
        default=None,
        description="Send a location instead of text (Cloud API numbers; 422 on WhatsApp Web)",
    )

    @model_validator(mode="after")
    def _text_or_location(self) -> SendRequest:
        if (self.text is None) == (self.location is None):
            raise ValueError("give `text` or `location` (one of them)")
        return self


class SendForm(BaseModel):
    """multipart/form-data: an attachment (its type is sniffed from the bytes and must be on
    the allow-list; at most WAGATE_MEDIA_MAX_MB) with an optional caption."""

    file: bytes = Field(json_schema_extra={"format": "binary"})
    text: str | None = Field(default=None, max_length=4096, description="Caption")


async def read_upload(request: web.Request) -> tuple[StoredMedia, str | None, str]:
    """The multipart upload, stored in the media directory: (media, file name, caption)."""
    settings = request.app[SETTINGS]
    limit = int(settings.media_max_mb * 1024 * 1024)
    try:
        reader = await request.multipart()
        data: bytearray | None = None
        filename: str | None = None
        declared: str | None = None
        caption = ""
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "nested multipart is not supported", code="bad_upload")
            if part.name == "file":
                filename = part.filename
                declared = part.headers.get("Content-Type")
                data = bytearray()
                while chunk := await part.read_chunk(64 * 1024):
                    data.extend(chunk)
                    if len(data) > limit:
                        raise ApiError(413, f"the file is larger than {settings.media_max_mb:g} MB")
            elif part.name == "text":
                caption = (await part.text())[:4096]
            else:
                await part.release()
    except (ValueError, HttpProcessingError) as exc:
        raise ApiError(400, f"malformed multipart body: {exc}", code="bad_upload") from exc
    filename = filename.replace("\x00", "") if filename else filename
    caption = caption.replace("\x00", "")
    if not data:
        raise ApiError(400, "a non-empty `file` part is required", code="bad_upload")
    if not allowed(sniff(bytes(data[:8192]), None)):
        raise ApiError(
            415,
            f"files of type {sniff(bytes(data[:8192]), declared)} can not be sent",
            code="unsupported_media_type",
        )
    store = MediaStore(settings.media_path, limit)
    stored = await asyncio.to_thread(store.put, bytes(data), declared)
    return stored, filename, caption


@router.post(
    "/api/v1/conversations/{conversation_id}/messages",
    summary="Send a text message, a location or an attachment (queued: 202, `pending`)",
    description="Honours `Idempotency-Key`: the same key returns the same message and sends "
    "nothing twice. 409 when the account cannot send (logged out, banned, ...): nothing is "
    "queued then. Cloud API numbers: 422 `window_closed` outside the 24-hour window; a "
    "`location` is sent from Cloud API numbers only (422 `location_unsupported` otherwise).",
    body=SendRequest,
    form=SendForm,
    response=MessageOut,
    status=202,
    errors=(404, 409, 413, 415, 422),
)
async def send_message(request: web.Request, body: SendRequest | None) -> MessageOut:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        raise ApiError(400, "Idempotency-Key must be 1 to 200 characters", code="validation_error")
    user = current_user(request)
    conversation_id = path_int(request, "conversation_id")
    if body is None:
        await owned_conversation(request.app, user, conversation_id)  # 404 before the upload
        stored, filename, caption = await read_upload(request)
        message, _new = await send_text(
            request.app,
            user,
            conversation_id,
            caption,
            idempotency_key=key,
            attachment=stored,
            filename=filename,
        )
    else:
        location = body.location.model_dump(exclude_none=True) if body.location else None
        message, _new = await send_text(
            request.app,
            user,
            conversation_id,
            body.text or (location or {}).get("name") or "",
            reply_to=body.reply_to,
            idempotency_key=key,
            location=location,
        )
    return MessageOut.from_row(message)


# -- the former system's routes ---------------------------------------------------------------

compat = ApiRouter("compatibility")


class CompatConversation(BaseModel):
    id: int
    external_id: str
    contact_name: str | None
    contact_photo_url: str | None
    started_at: datetime
    unread_count: int


class CompatConversations(BaseModel):
    success: bool
    conversations: list[CompatConversation]


class CompatMessage(BaseModel):
    id: int
    sender_type: str
    message_type: str
    text_content: str | None
    created_at: datetime


class CompatMessages(BaseModel):
    success: bool
    messages: list[CompatMessage]


class CompatMessagesQuery(BaseModel):
    conversationId: str = Field(min_length=1, description="Our id or the chat JID")


@compat.get(
    "/api/whatsapp/get_conversations",
    summary="The current system's conversation list (all of the caller's chats)",
    response=CompatConversations,
    auth="public",
    errors=(401,),
)
async def compat_conversations(request: web.Request) -> CompatConversations:
    user = await compat_user(request)
    rows = await conversations.page(
        request.app[POOL], owner_id=None if user.is_admin else user.id, limit=1000
    )
    return CompatConversations(
        success=True,
        conversations=[
            CompatConversation(
                id=r["id"],
                external_id=r["external_id"],
                contact_name=r["contact_name"],
                contact_photo_url=r["contact_photo_url"],
                started_at=r["started_at"],
                unread_count=r["unread_count"],
            )
            for r in rows
        ],
    )


@compat.get(
    "/api/whatsapp/get_messages",
    summary="The current system's message list of one conversation (oldest first)",
    query=CompatMessagesQuery,
    response=CompatMessages,
    auth="public",
    errors=(401, 404),
)
async def compat_messages(request: web.Request, query: CompatMessagesQuery) -> CompatMessages:
    user = await compat_user(request)
    wanted = query.conversationId
    if wanted.isdigit() and len(wanted) < 18:
        conversation_id: int | None = int(wanted)
    else:
        conversation_id = await conversations.id_by_external_for(
            request.app[POOL], wanted, None if user.is_admin else user.id
        )
    if conversation_id is None:
        raise NotFound("conversation")
    found = await owned_conversation(request.app, user, conversation_id)
    rows = await messages.page(request.app[POOL], found["id"], limit=1000) or []
    rows.reverse()
    return CompatMessages(
        success=True,
        messages=[
            CompatMessage(
                id=r["id"],
                sender_type=r["sender_type"],
                message_type=r["message_type"],
                text_content=r["text_content"],
                created_at=r["sent_at"],
            )
            for r in rows
        ],
    )
