"""Durable driver events -> rows. Runs in the supervisor, inside the caller's transaction.

Everything here is idempotent on (session_id, wa_message_id): a redelivery from WhatsApp or a
replay from a worker's spool changes nothing the second time. What changed is returned so the
caller can publish it after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from db import conversations, messages
from db.messages import NewMessage
from sessions import events

if TYPE_CHECKING:
    from db import Conn

INTERACTION_TYPES = {"reaction", "edit", "revoke", "poll_vote"}


@dataclass
class Changes:
    """What a batch changed, for the event bus (published only after the commit)."""

    new_messages: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    updated: list[dict[str, Any]] = field(default_factory=list)
    conversations: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.new_messages or self.statuses or self.updated or self.conversations)


def bare(jid: str | None) -> str | None:
    """user@server without the device part (`521...:12@s.whatsapp.net` -> `521...@...`)."""
    if not jid:
        return None
    user, _, server = jid.partition("@")
    return f"{user.split(':')[0]}@{server}" if server else user.split(":")[0]


def phone_of(jid: str | None) -> str | None:
    jid = bare(jid)
    if jid and jid.endswith("@s.whatsapp.net"):
        return jid.split("@")[0]
    return None


def chat_kind(chat: str) -> str:
    if chat.endswith("@g.us"):
        return "group"
    if chat.endswith("@broadcast"):
        return "status" if chat.startswith("status@") else "broadcast"
    return "direct"


def canonical_chat(msg: events.WaMessage) -> tuple[str, str | None]:
    """(external id, lid): a person is keyed by phone JID when known, the LID kept beside it."""
    chat = bare(msg.chat) or msg.chat
    alt = bare(msg.chat_alt)
    if chat.endswith("@lid") and alt and alt.endswith("@s.whatsapp.net"):
        return alt, chat
    if alt and alt.endswith("@lid"):
        return chat, alt
    return chat, (chat if chat.endswith("@lid") else None)


async def store_message(
    conn: Conn, session_id: int, msg: events.WaMessage, changes: Changes, *, history: bool = False
) -> None:
    when = msg.timestamp
    if msg.type in INTERACTION_TYPES and msg.target_id:
        await _interaction(conn, session_id, msg, changes)
        return
    external_id, lid = canonical_chat(msg)
    kind = chat_kind(external_id)
    inbound = not msg.from_me
    conversation_id = await conversations.upsert(
        conn,
        session_id=session_id,
        external_id=external_id,
        kind=kind,
        contact_name=msg.push_name if (inbound and kind == "direct") else None,
        wa_user_id=phone_of(external_id),
        lid=lid,
        last_message_at=when,
        unread_inc=1 if (inbound and not history) else 0,
    )
    media = msg.media
    row = NewMessage(
        session_id=session_id,
        conversation_id=conversation_id,
        wa_message_id=msg.id,
        direction="inbound" if inbound else "outbound",
        sender_type="user" if inbound else "owner",
        sender_jid=bare(msg.sender),
        sender_name=msg.push_name,
        message_type=msg.type,
        text_content=msg.text,
        media_sha256=media.file_sha256 if media else None,
        media_mime=media.mime_type if media else None,
        media_size=media.file_length if media else None,
        media_filename=media.filename if media else None,
        media_status="pending" if media else None,
        quoted_wa_message_id=msg.quoted_id,
        raw=msg.raw or None,
        status="received" if inbound else "sent",
        from_history=history,
        sent_at=when,
    )
    new_id = await messages.insert(conn, row)
    if new_id is None:
        # Already stored (a redelivery or a replay). Undo the unread bump of the upsert.
        if inbound and not history:
            await conn.execute(
                "UPDATE conversations SET unread_count = greatest(unread_count - 1, 0) "
                "WHERE id = $1",
                conversation_id,
            )
        return
    changes.conversations.add(conversation_id)
    changes.new_messages.append(
        {
            "id": new_id,
            "conversation_id": conversation_id,
            "wa_message_id": msg.id,
            "direction": row.direction,
            "message_type": msg.type,
            "text_content": msg.text,
            "sent_at": when.isoformat(),
            "from_history": history,
        }
    )


async def _interaction(
    conn: Conn, session_id: int, msg: events.WaMessage, changes: Changes
) -> None:
    assert msg.target_id is not None
    result: dict[str, Any] | None = None
    if msg.type == "reaction":
        reactor = bare(msg.sender) or ("me" if msg.from_me else "unknown")
        result = await messages.react(conn, session_id, msg.target_id, reactor, msg.emoji or "")
    elif msg.type == "edit":
        result = await messages.edit(conn, session_id, msg.target_id, msg.text or "", msg.timestamp)
    elif msg.type == "revoke":
        result = await messages.revoke(conn, session_id, msg.target_id, msg.timestamp, True)
    if result is not None:
        changes.updated.append({**result, "change": msg.type})
        changes.conversations.add(int(result["conversation_id"]))


RECEIPT_STATUS = {"delivered": "delivered", "read": "read", "played": "played"}


async def store_receipt(
    conn: Conn, session_id: int, receipt: events.Receipt, changes: Changes
) -> None:
    status = RECEIPT_STATUS.get(receipt.type)
    if status is None:
        return
    for row in await messages.apply_receipt(conn, session_id, receipt.message_ids, status):
        changes.statuses.append(row)


async def store_events(
    conn: Conn, session_id: int, evs: list[events.DriverEvent], changes: Changes
) -> None:
    """Store every durable event of a frame (the caller holds the transaction)."""
    for ev in evs:
        if isinstance(ev, events.MessageReceived):
            await store_message(conn, session_id, ev.message, changes)
        elif isinstance(ev, events.Receipt):
            await store_receipt(conn, session_id, ev, changes)
        elif isinstance(ev, events.HistoryChunk):
            for conv in ev.conversations:
                for message in conv.messages:
                    await store_message(conn, session_id, message, changes, history=True)
