"""Durable driver events -> rows. Runs in the supervisor, inside the caller's transaction.

Everything here is idempotent on (session_id, wa_message_id): a redelivery from WhatsApp or a
replay from a worker's spool changes nothing the second time. What changed is returned so the
caller can publish it after the commit.

One person is one conversation: a chat is keyed by the phone JID whenever it is known, the LID
kept beside it; a chat opened under a LID before its phone number was known is renamed or merged
as soon as a message, a history mapping or a lookup tells us the number.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from db import contacts, conversations, messages, pending_interactions
from db import history as history_db
from db.messages import NewMessage
from sessions import events

if TYPE_CHECKING:
    from db import Conn

INTERACTION_TYPES = {"reaction", "edit", "revoke", "poll_vote"}
MEDIA_TYPES = {"image", "video", "audio", "voice", "document", "sticker"}
RECEIPT_STATUS = {"delivered": "delivered", "read": "read", "played": "played"}


@dataclass(frozen=True)
class StoreOptions:
    keep_revoked: bool = True


@dataclass(frozen=True)
class MediaRequest:
    """A stored message whose attachment the worker should fetch."""

    message_id: int
    wa_message_id: str
    media: events.MediaInfo
    raw: dict[str, Any]


@dataclass
class Changes:
    """What a batch changed, for the event bus (published only after the commit)."""

    new_messages: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    updated: list[dict[str, Any]] = field(default_factory=list)
    conversations: set[int] = field(default_factory=set)
    merged: list[tuple[int, int]] = field(default_factory=list)
    media: list[MediaRequest] = field(default_factory=list)
    unresolved_lids: set[str] = field(default_factory=set)
    new_groups: set[tuple[int, str]] = field(default_factory=set)
    new_people: set[tuple[int, str]] = field(default_factory=set)
    history_imported: int = 0
    history_skipped: int = 0

    def __bool__(self) -> bool:
        return bool(
            self.new_messages or self.statuses or self.updated or self.conversations or self.merged
        )


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


def is_lid(jid: str | None) -> bool:
    return bool(jid) and str(jid).endswith("@lid")


def chat_kind(chat: str) -> str:
    if chat.endswith("@g.us"):
        return "group"
    if chat.endswith("@broadcast"):
        return "status" if chat.startswith("status@") else "broadcast"
    return "direct"


def canonical(jid: str, alt: str | None) -> tuple[str, str | None]:
    """(external id, lid) of a person addressed as `jid`, with `alt` its other form if known."""
    jid = bare(jid) or jid
    alt = bare(alt)
    if is_lid(jid):
        if alt and alt.endswith("@s.whatsapp.net"):
            return alt, jid
        return jid, jid
    if alt and is_lid(alt):
        return jid, alt
    return jid, None


def canonical_chat(msg: events.WaMessage) -> tuple[str, str | None]:
    return canonical(msg.chat, msg.chat_alt)


async def _resolve_person(
    conn: Conn, session_id: int, external_id: str, lid: str | None, changes: Changes
) -> None:
    """Both forms of one person are known: one conversation and one contact from now on."""
    if lid is None or external_id == lid:
        if lid is not None:
            changes.unresolved_lids.add(lid)
        return
    merged = await conversations.link_lid(
        conn,
        session_id=session_id,
        phone_jid=external_id,
        lid=lid,
        phone=phone_of(external_id),
    )
    if merged is not None:
        changes.merged.append(merged)
        changes.conversations.add(merged[1])


async def store_message(
    conn: Conn,
    session_id: int,
    msg: events.WaMessage,
    changes: Changes,
    options: StoreOptions,
    *,
    history: bool = False,
) -> None:
    """Store one message (reactions, edits, revokes and votes change their target instead)."""
    if msg.type in INTERACTION_TYPES and msg.target_id:
        await _interaction(conn, session_id, msg, changes, options)
        return
    await store_plain_messages(conn, session_id, [(msg, history)], changes, options)


async def store_plain_messages(
    conn: Conn,
    session_id: int,
    batch: list[tuple[events.WaMessage, bool]],
    changes: Changes,
    options: StoreOptions,
) -> None:
    """Store messages that are bubbles of their own, a whole batch in a few statements:
    one upsert of the conversations they touch, one insert of the messages, one update of
    unread counts, one upsert of the contacts. (message, from history) pairs, in order."""
    if not batch:
        return
    chats: dict[str, conversations.ChatTouch] = {}
    unread: dict[str, int] = {}
    people: dict[str, tuple[str | None, str | None]] = {}
    placed: list[tuple[events.WaMessage, bool, str]] = []
    seen: set[str] = set()
    for msg, history in batch:
        external_id, lid = canonical_chat(msg)
        kind = chat_kind(external_id)
        inbound = not msg.from_me
        if kind == "direct":
            await _resolve_person(conn, session_id, external_id, lid, changes)
        if inbound and not history and msg.id not in seen:
            # Counted here, in the upsert; taken back below for what was already stored.
            unread[external_id] = unread.get(external_id, 0) + 1
        seen.add(msg.id)
        known = chats.get(external_id)
        name = msg.push_name if (inbound and kind == "direct") else None
        if known is None or msg.timestamp >= known.last_message_at:
            chats[external_id] = conversations.ChatTouch(
                external_id=external_id,
                kind=kind,
                contact_name=name or (known.contact_name if known else None),
                wa_user_id=phone_of(external_id),
                lid=lid if lid != external_id or is_lid(external_id) else None,
                last_message_at=msg.timestamp,
            )
        if inbound and kind == "direct":
            if lid is not None and lid != external_id:
                await contacts.upsert(
                    conn,
                    session_id=session_id,
                    jid=external_id,
                    lid=lid,
                    phone=phone_of(external_id),
                    push_name=msg.push_name,
                )
            people[external_id] = (phone_of(external_id), msg.push_name)
        placed.append((msg, history, external_id))
    touched = [
        dataclasses.replace(chat, unread_inc=unread.get(chat.external_id, 0))
        for chat in chats.values()
    ]
    ids, created = await conversations.upsert_many(conn, session_id, touched)
    for external_id in created:
        if chat_kind(external_id) == "group":
            changes.new_groups.add((ids[external_id], external_id))
    rows: dict[str, NewMessage] = {}
    for msg, history, external_id in placed:
        if msg.id not in rows:
            rows[msg.id] = _row(session_id, ids[external_id], msg, history)
    new = await messages.insert_many(conn, session_id, list(rows.values()))
    await contacts.upsert_many(conn, session_id, people, link=created)
    overcounted: dict[int, int] = {}
    for wa_id, row in rows.items():
        message_id = new.get(wa_id)
        if message_id is None:
            # Already stored (a redelivery or a replay): not unread a second time.
            if row.direction == "inbound" and not row.from_history:
                overcounted[row.conversation_id] = overcounted.get(row.conversation_id, 0) - 1
            continue
        changes.conversations.add(row.conversation_id)
        changes.new_messages.append(
            {
                "id": message_id,
                "conversation_id": row.conversation_id,
                "wa_message_id": wa_id,
                "direction": row.direction,
                "sender_type": row.sender_type,
                "message_type": row.message_type,
                "text_content": row.text_content,
                "sent_at": row.sent_at.isoformat(),
                "from_history": row.from_history,
            }
        )
    await conversations.unread_add_many(conn, overcounted)
    for payload in await pending_interactions.take(conn, session_id, list(new)):
        await _interaction(
            conn, session_id, events.WaMessage.model_validate(payload), changes, options
        )
    for external_id in created:
        if chat_kind(external_id) == "direct":
            changes.new_people.add((ids[external_id], external_id))
    for msg, _history, _external in placed:
        if msg.media is not None and msg.type in MEDIA_TYPES and msg.id in new:
            changes.media.append(MediaRequest(new[msg.id], msg.id, msg.media, msg.raw))


def _row(session_id: int, conversation_id: int, msg: events.WaMessage, history: bool) -> NewMessage:
    inbound = not msg.from_me
    sender, _ = canonical(msg.sender, msg.sender_alt)
    media = msg.media
    has_media = media is not None and msg.type in MEDIA_TYPES
    return NewMessage(
        session_id=session_id,
        conversation_id=conversation_id,
        wa_message_id=msg.id,
        direction="inbound" if inbound else "outbound",
        sender_type="user" if inbound else "owner",
        sender_jid=sender,
        sender_name=msg.push_name if inbound else None,
        message_type=msg.type,
        text_content=msg.text,
        media_sha256=media.file_sha256 if media else None,
        media_mime=media.mime_type if media else None,
        media_size=media.file_length if media else None,
        media_filename=media.filename if media else None,
        media_status="pending" if has_media else None,
        quoted_wa_message_id=msg.quoted_id,
        raw=_raw(msg),
        status="received" if inbound else "sent",
        from_history=history,
        sent_at=msg.timestamp,
    )


def _raw(msg: events.WaMessage) -> dict[str, Any] | None:
    """What we keep of the protobuf: everything, plus the fields the adapter made sense of
    that have no column (location, contacts, poll, flags)."""
    extra: dict[str, Any] = {}
    if msg.location is not None:
        extra["location"] = msg.location.model_dump(exclude_none=True)
    if msg.contacts:
        extra["contacts"] = [c.model_dump(exclude_none=True) for c in msg.contacts]
    if msg.poll is not None:
        extra["poll"] = msg.poll.model_dump()
    if msg.poll_vote_hashes:
        extra["poll_vote_hashes"] = msg.poll_vote_hashes
    for flag in ("view_once", "ephemeral", "forwarded"):
        if getattr(msg, flag):
            extra[flag] = True
    if msg.quoted_sender:
        extra["quoted_sender"] = msg.quoted_sender
    if msg.target_id:
        extra["target_id"] = msg.target_id
    if not msg.raw and not extra:
        return None
    raw = {"message": msg.raw, "wagate": extra} if extra else {"message": msg.raw}
    return dict(_finite(raw))


def _finite(value: Any) -> Any:
    """JSON (and so jsonb) has no NaN or infinity: such numbers are kept as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


async def _interaction(
    conn: Conn, session_id: int, msg: events.WaMessage, changes: Changes, options: StoreOptions
) -> None:
    assert msg.target_id is not None
    result: dict[str, Any] | None = None
    if msg.type == "reaction":
        reactor, _ = canonical(msg.sender, msg.sender_alt)
        if msg.from_me:
            reactor = "me"
        result = await messages.react(conn, session_id, msg.target_id, reactor, msg.emoji or "")
    elif msg.type == "poll_vote":
        voter, _ = canonical(msg.sender, msg.sender_alt)
        result = await messages.vote(
            conn,
            session_id,
            msg.target_id,
            "me" if msg.from_me else voter,
            msg.poll_vote_hashes,
            msg.timestamp,
        )
        if result is None:  # the poll is not here (yet): keep the vote as a message
            await store_plain_messages(conn, session_id, [(msg, False)], changes, options)
            return
    elif msg.type == "edit":
        result = await messages.edit(conn, session_id, msg.target_id, msg.text or "", msg.timestamp)
    elif msg.type == "revoke":
        result = await messages.revoke(
            conn, session_id, msg.target_id, msg.timestamp, options.keep_revoked
        )
    if result is not None:
        changes.updated.append({**result, "change": msg.type})
        changes.conversations.add(int(result["conversation_id"]))
    elif msg.type in ("reaction", "edit", "revoke"):
        # The target is not here yet: keep this until it lands.
        await pending_interactions.park(
            conn, session_id, msg.id, msg.target_id, msg.model_dump(mode="json")
        )


async def store_receipt(
    conn: Conn, session_id: int, receipt: events.Receipt, changes: Changes
) -> None:
    status = RECEIPT_STATUS.get(receipt.type)
    if status is None:
        return
    if receipt.from_me:
        # Our own phone read (or played) incoming messages: the chat is read there.
        if status == "read":
            for conversation_id in await conversations.mark_read_by_messages(
                conn, session_id, receipt.message_ids
            ):
                changes.conversations.add(conversation_id)
        return
    for row in await messages.apply_receipt(conn, session_id, receipt.message_ids, status):
        changes.statuses.append(row)


async def store_contact(
    conn: Conn, session_id: int, update: events.ContactUpdate, changes: Changes
) -> None:
    external_id, lid = canonical(update.jid, update.lid)
    if chat_kind(external_id) != "direct":
        return
    if lid is not None and lid != external_id:
        await _resolve_person(conn, session_id, external_id, lid, changes)
    await contacts.upsert(
        conn,
        session_id=session_id,
        jid=external_id,
        lid=lid,
        phone=update.phone or phone_of(external_id),
        push_name=update.push_name,
        saved_name=update.saved_name,
        business_name=update.business_name,
    )


async def store_history_chunk(
    conn: Conn,
    session_id: int,
    chunk: events.HistoryChunk,
    changes: Changes,
    options: StoreOptions,
) -> None:
    """One history-sync chunk: COPY into staging and one insert (db.history), then the
    reactions, edits and revokes it carries, which now find their targets."""
    chats: list[history_db.HistoryConversationRow] = []
    rows: list[history_db.HistoryMessageRow] = []
    interactions: list[events.WaMessage] = []
    for conv in chunk.conversations:
        external_id, lid = canonical(conv.chat, conv.chat_alt)
        kind = chat_kind(external_id)
        if kind == "direct":
            await _resolve_person(conn, session_id, external_id, lid, changes)
        newest = max((m.timestamp for m in conv.messages), default=None)
        chats.append(
            history_db.HistoryConversationRow(
                external_id=external_id,
                lid=lid if lid != external_id or is_lid(external_id) else None,
                kind=kind,
                contact_name=conv.name,
                wa_user_id=phone_of(external_id),
                unread_count=conv.unread_count,
                last_message_at=newest,
            )
        )
        for msg in conv.messages:
            if msg.type in INTERACTION_TYPES and msg.target_id:
                interactions.append(msg)
                continue
            row = _row(session_id, 0, msg, True)
            rows.append(
                history_db.HistoryMessageRow(
                    external_id=external_id,
                    wa_message_id=msg.id,
                    direction=row.direction,
                    sender_type=row.sender_type,
                    sender_jid=row.sender_jid,
                    sender_name=row.sender_name,
                    message_type=row.message_type,
                    text_content=row.text_content,
                    media_sha256=row.media_sha256,
                    media_mime=row.media_mime,
                    media_size=row.media_size,
                    media_filename=row.media_filename,
                    media_status=row.media_status,
                    quoted_wa_message_id=row.quoted_wa_message_id,
                    raw=row.raw,
                    status=row.status,
                    sent_at=row.sent_at,
                )
            )
    result = await history_db.import_history(conn, session_id, chats, rows)
    changes.history_imported += result.inserted
    changes.history_skipped += result.skipped
    if result.inserted:
        changes.conversations.update(result.conversations.values())
    for payload in await pending_interactions.take(
        conn, session_id, [r.wa_message_id for r in rows]
    ):
        await _interaction(
            conn, session_id, events.WaMessage.model_validate(payload), changes, options
        )
    for msg in interactions:
        await _interaction(conn, session_id, msg, changes, options)


async def store_events(
    conn: Conn,
    session_id: int,
    evs: list[events.DriverEvent],
    changes: Changes,
    options: StoreOptions,
) -> None:
    """Store the durable events of one or more frames, in order (the caller holds the
    transaction). Runs of plain messages are stored together."""
    run: list[tuple[events.WaMessage, bool]] = []

    async def flush() -> None:
        await store_plain_messages(conn, session_id, run, changes, options)
        run.clear()

    for ev in evs:
        if isinstance(ev, events.MessageReceived):
            msg = ev.message
            if msg.type in INTERACTION_TYPES and msg.target_id:
                await flush()
                await _interaction(conn, session_id, msg, changes, options)
            else:
                run.append((msg, False))
            continue
        if isinstance(ev, events.HistoryChunk):
            await flush()
            await store_history_chunk(conn, session_id, ev, changes, options)
            continue
        await flush()
        if isinstance(ev, events.Receipt):
            await store_receipt(conn, session_id, ev, changes)
        elif isinstance(ev, events.ContactUpdate):
            await store_contact(conn, session_id, ev, changes)
    await flush()
