"""neonize protobuf events -> our driver events (`sessions.events`).

The one place that knows neonize's event shapes. `translate()` never raises: a malformed
event is logged and yields [] (or, for a message, an "unsupported" message with what could be
read). Worker-side only: importing this module imports neonize.

Units, as neonize's Go encoder writes them: MessageEv `Info.Timestamp` is Unix MILLISECONDS;
ReceiptEv `Timestamp`, PresenceEv `LastSeen` and history `messageTimestamp` are SECONDS;
TemporaryBanEv `Expire` is a duration in seconds (time left), not a point in time.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.json_format import MessageToDict
from neonize.events import (
    ChatPresenceEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    HistorySyncEv,
    KeepAliveTimeoutEv,
    LoggedOutEv,
    MessageEv,
    PairStatusEv,
    PresenceEv,
    ReceiptEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.proto import Neonize_pb2 as neonize_pb
from neonize.proto.Neonize_pb2 import JID
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as waE2E
from neonize.proto.waHistorySync import WAWebProtobufsHistorySync_pb2 as waHistorySync
from neonize.proto.waWeb import WAWebProtobufsWeb_pb2 as waWeb

from sessions import events as ev
from sessions.events import DriverEvent, MessageType, WaMessage
from sessions.wa_proto import (
    BROADCAST_SERVER,
    EDIT_MESSAGE,
    GROUP_SERVER,
    LID_SERVER,
    USER_SERVER,
    jid_str,
    parse_jid,
    unwrap,
)

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ProtocolType = waE2E.ProtocolMessage.Type

# Protocol messages the phone exchanges with its companions: whatsmeow dispatches them as
# messages, but they are not chat content, so translate() skips them.
HOUSEKEEPING_PROTOCOL_TYPES = frozenset(
    _ProtocolType.Value(name)
    for name in (
        "EPHEMERAL_SYNC_RESPONSE",
        "HISTORY_SYNC_NOTIFICATION",
        "APP_STATE_SYNC_KEY_SHARE",
        "APP_STATE_SYNC_KEY_REQUEST",
        "MSG_FANOUT_BACKFILL_REQUEST",
        "INITIAL_SECURITY_NOTIFICATION_SETTING_SYNC",
        "APP_STATE_FATAL_EXCEPTION_NOTIFICATION",
        "PEER_DATA_OPERATION_REQUEST_MESSAGE",
        "PEER_DATA_OPERATION_REQUEST_RESPONSE_MESSAGE",
        "LID_MIGRATION_MAPPING_SYNC",
        "SHARED_DEVICE_CONTACT_HASH_KEY_SHARE",
        "SHARED_DEVICE_CONTACT_HASH_KEY_REQUEST",
    )
)
# Fields that carry no content of their own (key exchange, per-message metadata).
_TRANSPORT_FIELDS = frozenset(
    {
        "senderKeyDistributionMessage",
        "fastRatchetKeySenderKeyDistributionMessage",
        "messageContextInfo",
    }
)

# -- small conversions ----------------------------------------------------------------------------


def _jid_or_none(value: JID) -> str | None:
    return jid_str(value) or None


def _normalize_jid(value: str) -> str | None:
    """A JID string from inside a message (e.g. contextInfo.participant) without its device."""
    if not value:
        return None
    try:
        return jid_str(parse_jid(value)) or None
    except ValueError:
        return value


def _from_millis(ms: int, fallback: datetime) -> datetime:
    try:
        return _EPOCH + timedelta(milliseconds=ms) if ms > 0 else fallback
    except OverflowError:
        return fallback


def _from_seconds(seconds: int, fallback: datetime) -> datetime:
    return _from_millis(seconds * 1000, fallback)


def _text_or_none(value: str) -> str | None:
    return str(value) or None


def _positive(value: int) -> int | None:
    return int(value) if value > 0 else None


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _to_dict(message: Any) -> dict[str, Any]:
    """The protobuf as a JSON-able dict (bytes as base64, 64-bit ints as strings)."""
    try:
        result: dict[str, Any] = MessageToDict(message)
    except Exception:
        log.warning("cannot convert %s to a dict", type(message).__name__, exc_info=True)
        return {}
    return result


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value)).lower()
    except ValueError:
        return str(value)


# -- message content ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Content:
    """What the message says, before we know who sent it where."""

    type: MessageType
    text: str | None = None
    media: ev.MediaInfo | None = None
    target_id: str | None = None
    emoji: str | None = None
    location: ev.Location | None = None
    contacts: list[ev.ContactCard] = field(default_factory=list)
    poll: ev.Poll | None = None
    view_once: bool = False


_UNSUPPORTED = _Content(type="unsupported")


def _text_of(message: waE2E.Message) -> str | None:
    """The text or caption a person would read, whatever the message type."""
    message = unwrap(message).message
    if message.HasField("conversation"):
        return _text_or_none(message.conversation)
    if message.HasField("extendedTextMessage"):
        return _text_or_none(message.extendedTextMessage.text)
    for name in ("imageMessage", "videoMessage", "documentMessage"):
        if message.HasField(name):
            return _text_or_none(getattr(message, name).caption)
    return None


def _download(part: Any, media_type: str) -> dict[str, str]:
    return {
        "direct_path": str(part.directPath),
        "media_key": _b64(part.mediaKey),
        "url": str(part.URL),
        "enc_sha256": _b64(part.fileEncSHA256),
        "media_type": media_type,
    }


def _media(
    part: Any,
    media_type: str,
    *,
    filename: str | None = None,
    duration: int | None = None,
    size: tuple[int, int] | None = None,
) -> ev.MediaInfo:
    width, height = size if size else (None, None)
    return ev.MediaInfo(
        mime_type=_text_or_none(part.mimetype),
        file_sha256=bytes(part.fileSHA256).hex() or None,
        file_length=_positive(part.fileLength),
        filename=filename,
        duration_seconds=_positive(duration) if duration is not None else None,
        width=_positive(width) if width is not None else None,
        height=_positive(height) if height is not None else None,
        download=_download(part, media_type),
    )


def _image(part: waE2E.ImageMessage) -> _Content:
    media = _media(part, "image", size=(part.width, part.height))
    return _Content(type="image", text=_text_or_none(part.caption), media=media)


def _video(part: waE2E.VideoMessage) -> _Content:
    media = _media(part, "video", duration=part.seconds, size=(part.width, part.height))
    return _Content(type="video", text=_text_or_none(part.caption), media=media)


def _audio(part: waE2E.AudioMessage) -> _Content:
    media = _media(part, "audio", duration=part.seconds)
    return _Content(type="voice" if part.PTT else "audio", media=media)


def _document(part: waE2E.DocumentMessage) -> _Content:
    filename = _text_or_none(part.fileName) or _text_or_none(part.title)
    media = _media(part, "document", filename=filename)
    return _Content(type="document", text=_text_or_none(part.caption), media=media)


def _sticker(part: waE2E.StickerMessage) -> _Content:
    media = _media(part, "sticker", size=(part.width, part.height))
    return _Content(type="sticker", media=media)


def _location(part: waE2E.LocationMessage) -> _Content:
    where = ev.Location(
        latitude=float(part.degreesLatitude),
        longitude=float(part.degreesLongitude),
        name=_text_or_none(part.name),
        address=_text_or_none(part.address),
        url=_text_or_none(part.URL),
    )
    return _Content(type="location", text=_text_or_none(part.comment), location=where)


def _live_location(part: waE2E.LiveLocationMessage) -> _Content:
    where = ev.Location(
        latitude=float(part.degreesLatitude), longitude=float(part.degreesLongitude)
    )
    return _Content(type="live_location", text=_text_or_none(part.caption), location=where)


def _card(part: waE2E.ContactMessage) -> ev.ContactCard:
    return ev.ContactCard(display_name=_text_or_none(part.displayName), vcard=str(part.vcard))


def _contact(part: waE2E.ContactMessage) -> _Content:
    return _Content(type="contact", contacts=[_card(part)])


def _contacts(part: waE2E.ContactsArrayMessage) -> _Content:
    return _Content(type="contacts", contacts=[_card(c) for c in part.contacts])


def _poll(part: waE2E.PollCreationMessage) -> _Content:
    options = [str(o.optionName) for o in part.options]
    # 0 means "any number of options" in WhatsApp's protocol.
    selectable = int(part.selectableOptionsCount) or len(options)
    poll = ev.Poll(name=str(part.name), options=options, selectable_count=selectable)
    return _Content(type="poll", text=_text_or_none(part.name), poll=poll)


def _poll_vote(part: waE2E.PollUpdateMessage) -> _Content:
    target = _text_or_none(part.pollCreationMessageKey.ID)
    return _Content(type="poll_vote", target_id=target)


def _reaction(part: waE2E.ReactionMessage) -> _Content:
    return _Content(type="reaction", target_id=_text_or_none(part.key.ID), emoji=str(part.text))


def _extended_text(part: waE2E.ExtendedTextMessage) -> _Content:
    return _Content(type="text", text=str(part.text))


def _protocol(part: waE2E.ProtocolMessage) -> _Content:
    # proto2 reads an unset enum as its first value, REVOKE: only trust a type that was sent.
    if not part.HasField("type"):
        return _UNSUPPORTED
    target = _text_or_none(part.key.ID)
    if part.type == _ProtocolType.REVOKE:
        return _Content(type="revoke", target_id=target)
    if part.type == _ProtocolType.MESSAGE_EDIT:
        return _Content(type="edit", target_id=target, text=_text_of(part.editedMessage))
    return _UNSUPPORTED


# Checked in this order; the first field present decides the type.
_PARTS: tuple[tuple[str, Callable[[Any], _Content]], ...] = (
    ("protocolMessage", _protocol),
    ("reactionMessage", _reaction),
    ("pollUpdateMessage", _poll_vote),
    ("pollCreationMessage", _poll),
    ("pollCreationMessageV2", _poll),
    ("pollCreationMessageV3", _poll),
    ("pollCreationMessageV5", _poll),
    ("pollCreationMessageV6", _poll),
    ("extendedTextMessage", _extended_text),
    ("imageMessage", _image),
    ("videoMessage", _video),
    ("ptvMessage", _video),
    ("audioMessage", _audio),
    ("documentMessage", _document),
    ("stickerMessage", _sticker),
    ("locationMessage", _location),
    ("liveLocationMessage", _live_location),
    ("contactMessage", _contact),
    ("contactsArrayMessage", _contacts),
)


def _classify(message: waE2E.Message) -> _Content:
    if message.HasField("conversation"):
        return _Content(type="text", text=str(message.conversation))
    for name, read in _PARTS:
        if message.HasField(name):
            part = getattr(message, name)
            content = read(part)
            if "viewOnce" in part.DESCRIPTOR.fields_by_name and part.viewOnce:
                content = replace(content, view_once=True)
            return content
    return _UNSUPPORTED


def _context_info(message: waE2E.Message) -> Any | None:
    """The contextInfo of whichever content part carries one."""
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None or descriptor.name in _TRANSPORT_FIELDS:
            continue
        if "contextInfo" in descriptor.message_type.fields_by_name and value.HasField(
            "contextInfo"
        ):
            return value.contextInfo
    return None


def is_housekeeping(message: waE2E.Message) -> bool:
    """True for protocol traffic between devices that is not chat content."""
    inner = unwrap(message).message
    if inner.HasField("protocolMessage"):
        proto = inner.protocolMessage
        return bool(proto.HasField("type") and proto.type in HOUSEKEEPING_PROTOCOL_TYPES)
    present = {d.name for d, _ in inner.ListFields()}
    return bool(present) and present <= _TRANSPORT_FIELDS


# -- whole messages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Envelope:
    """Who sent a message where and when: everything but the content."""

    id: str
    chat: str
    sender: str
    timestamp: datetime
    chat_alt: str | None = None
    sender_alt: str | None = None
    from_me: bool = False
    is_group: bool = False
    push_name: str | None = None
    edit_attribute: str = ""
    view_once: bool = False
    ephemeral: bool = False
    edited: bool = False


def _build(envelope: _Envelope, message: waE2E.Message, raw: dict[str, Any]) -> WaMessage:
    if not envelope.id or not envelope.chat:
        raise ValueError("message without id or chat")
    peeled = unwrap(message)
    content = _classify(peeled.message)
    edited = peeled.edited or envelope.edited or envelope.edit_attribute == EDIT_MESSAGE
    if edited and content.type not in ("edit", "revoke"):
        # An edit that is not a MESSAGE_EDIT protocol message: the new content, target unknown.
        content = _Content(type="edit", text=_text_of(peeled.message))
    context = _context_info(peeled.message)
    expiration = int(context.expiration) if context is not None else 0
    return WaMessage(
        id=envelope.id,
        chat=envelope.chat,
        sender=envelope.sender,
        chat_alt=envelope.chat_alt,
        sender_alt=envelope.sender_alt,
        from_me=envelope.from_me,
        is_group=envelope.is_group,
        push_name=envelope.push_name,
        timestamp=envelope.timestamp,
        type=content.type,
        text=content.text,
        media=content.media,
        quoted_id=_text_or_none(context.stanzaID) if context is not None else None,
        quoted_sender=_normalize_jid(context.participant) if context is not None else None,
        target_id=content.target_id,
        emoji=content.emoji,
        location=content.location,
        contacts=content.contacts,
        poll=content.poll,
        view_once=envelope.view_once or peeled.view_once or content.view_once,
        ephemeral=envelope.ephemeral or peeled.ephemeral or expiration > 0,
        forwarded=bool(context is not None and context.isForwarded),
        raw=raw,
    )


def _event_payload(event: MessageEv) -> waE2E.Message:
    """The message as Go sent it (neonize fills `Message` and `Raw` alike)."""
    if event.HasField("Message"):
        return event.Message
    if event.HasField("Raw"):
        return event.Raw
    return waE2E.Message()


def _event_envelope(event: MessageEv, now: datetime) -> _Envelope:
    info = event.Info
    source = info.MessageSource
    is_group = bool(source.IsGroup)
    from_me = bool(source.IsFromMe)
    sender_alt = _jid_or_none(source.SenderAlt)
    chat_alt = _jid_or_none(source.RecipientAlt)
    if chat_alt is None and not is_group and not from_me:
        chat_alt = sender_alt  # in a 1:1 chat the other person is both the chat and the sender
    return _Envelope(
        id=str(info.ID),
        chat=jid_str(source.Chat),
        sender=jid_str(source.Sender),
        timestamp=_from_millis(info.Timestamp, now),
        chat_alt=chat_alt,
        sender_alt=sender_alt,
        from_me=from_me,
        is_group=is_group,
        push_name=_text_or_none(info.Pushname),
        edit_attribute=str(info.Edit),
        view_once=bool(event.IsViewOnce or event.IsViewOnceV2 or event.IsViewOnceV2Extension),
        ephemeral=bool(event.IsEphemeral),
        edited=bool(event.IsEdit),
    )


def message_from_event(event: MessageEv, *, now: datetime | None = None) -> WaMessage:
    """A live message. Raises ValueError if it has no id or chat."""
    now = now or datetime.now(UTC)
    payload = _event_payload(event)
    return _build(_event_envelope(event, now), payload, _to_dict(payload))


def _web_sender(web: waWeb.WebMessageInfo, chat: str, own_jid: str | None) -> str:
    """The sender of a history message, by whatsmeow's ParseWebMessage rules."""
    if web.key.fromMe:
        author = _normalize_jid(web.originalSelfAuthorUserJIDString)
        return author or own_jid or ""
    if chat.rpartition("@")[2] in (USER_SERVER, LID_SERVER, "newsletter"):
        return chat
    return _normalize_jid(web.participant) or _normalize_jid(web.key.participant) or ""


def message_from_web_info(
    web: waWeb.WebMessageInfo,
    *,
    chat: str | None = None,
    chat_alt: str | None = None,
    own_jid: str | None = None,
    now: datetime | None = None,
) -> WaMessage:
    """A message from a history sync; `own_jid` names the sender of our own messages."""
    now = now or datetime.now(UTC)
    chat = chat or _normalize_jid(web.key.remoteJID) or ""
    server = chat.rpartition("@")[2]
    envelope = _Envelope(
        id=str(web.key.ID),
        chat=chat,
        sender=_web_sender(web, chat, own_jid),
        timestamp=_from_seconds(web.messageTimestamp, now),
        chat_alt=chat_alt,
        from_me=bool(web.key.fromMe),
        is_group=server in (GROUP_SERVER, BROADCAST_SERVER),
        push_name=_text_or_none(web.pushName),
    )
    if web.HasField("message"):
        return _build(envelope, web.message, _to_dict(web.message))
    # A system notice ("messages are end-to-end encrypted", group changes): keep the stub.
    return _build(envelope, waE2E.Message(), _to_dict(web))


def poll_vote_hashes(vote: waE2E.PollVoteMessage) -> list[str]:
    """The selected options of a decrypted vote: SHA-256 of each option name, as hex."""
    return [bytes(h).hex() for h in vote.selectedOptions]


def with_poll_vote(message: WaMessage, vote: waE2E.PollVoteMessage) -> WaMessage:
    """`message` (a poll_vote) with the options of its decrypted vote filled in."""
    return message.model_copy(update={"poll_vote_hashes": poll_vote_hashes(vote)})


# -- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    now: datetime
    own_jid: str | None


def _salvage(event: MessageEv, ctx: _Context) -> WaMessage | None:
    """An "unsupported" message with whatever of a broken event can still be read."""
    try:
        envelope = _event_envelope(event, ctx.now)
        if not envelope.id or not envelope.chat:
            return None
        return WaMessage(
            id=envelope.id,
            chat=envelope.chat,
            sender=envelope.sender,
            from_me=envelope.from_me,
            is_group=envelope.is_group,
            timestamp=envelope.timestamp,
            type="unsupported",
            raw=_to_dict(_event_payload(event)),
        )
    except Exception:
        log.warning("message event unreadable, dropped", exc_info=True)
        return None


def _on_message(event: MessageEv, ctx: _Context) -> list[DriverEvent]:
    if is_housekeeping(_event_payload(event)):
        return []
    try:
        message = message_from_event(event, now=ctx.now)
    except Exception:
        log.warning("message %s malformed, kept as unsupported", event.Info.ID, exc_info=True)
        salvaged = _salvage(event, ctx)
        return [ev.MessageReceived(message=salvaged)] if salvaged is not None else []
    return [ev.MessageReceived(message=message)]


_RECEIPT_TYPES: dict[int, ev.ReceiptKind] = {
    neonize_pb.Receipt.DELIVERED: "delivered",
    neonize_pb.Receipt.SENDER: "sender",
    neonize_pb.Receipt.RETRY: "retry",
    neonize_pb.Receipt.READ: "read",
    neonize_pb.Receipt.READ_SELF: "read",
    neonize_pb.Receipt.PLAYED: "played",
    neonize_pb.Receipt.PLAYED_SELF: "played",
    neonize_pb.Receipt.SERVER_ERROR: "server_error",
}


def _receipt_type(event: ReceiptEv) -> ev.ReceiptKind:
    kind = _RECEIPT_TYPES.get(int(event.Type), "other")
    if kind == "server_error" and event.MessageSource.IsFromMe:
        # neonize's Go encoder maps whatsmeow's "played-self" to SERVER_ERROR.
        return "played"
    return kind


def _on_receipt(event: ReceiptEv, ctx: _Context) -> list[DriverEvent]:
    source = event.MessageSource
    chat = jid_str(source.Chat)
    if not chat or not event.MessageIDs:
        log.warning("receipt without chat or message ids, dropped: chat=%r", chat)
        return []
    receipt = ev.Receipt(
        chat=chat,
        sender=jid_str(source.Sender),
        message_ids=[str(i) for i in event.MessageIDs],
        type=_receipt_type(event),
        timestamp=_from_seconds(event.Timestamp, ctx.now),
        from_me=bool(source.IsFromMe),
    )
    return [receipt]


def _history_conversation(
    conv: waHistorySync.Conversation, ctx: _Context
) -> ev.HistoryConversation:
    chat = _normalize_jid(conv.ID) or str(conv.ID)
    alt = conv.pnJID if chat.endswith("@" + LID_SERVER) else conv.lidJID
    chat_alt = _normalize_jid(alt)
    messages = []
    for item in conv.messages:
        if not item.HasField("message") or is_housekeeping(item.message.message):
            continue
        try:
            messages.append(
                message_from_web_info(
                    item.message, chat=chat, chat_alt=chat_alt, own_jid=ctx.own_jid, now=ctx.now
                )
            )
        except Exception:
            log.warning("history message in %s malformed, skipped", chat, exc_info=True)
    return ev.HistoryConversation(
        chat=chat,
        chat_alt=chat_alt,
        name=_text_or_none(conv.name) or _text_or_none(conv.displayName),
        unread_count=int(conv.unreadCount),
        messages=messages,
    )


def _history_contacts(data: waHistorySync.HistorySync) -> Iterable[ev.ContactUpdate]:
    for pushname in data.pushnames:
        who = _normalize_jid(pushname.ID)
        if who and pushname.pushname:
            yield _contact_update(who, push_name=str(pushname.pushname))
    for mapping in data.phoneNumberToLidMappings:
        phone_jid, lid = _normalize_jid(mapping.pnJID), _normalize_jid(mapping.lidJID)
        if phone_jid and lid:
            yield _contact_update(phone_jid, lid=lid)


def _contact_update(
    who: str, *, lid: str | None = None, push_name: str | None = None
) -> ev.ContactUpdate:
    user, _, server = who.partition("@")
    return ev.ContactUpdate(
        jid=who,
        lid=lid or (who if server == LID_SERVER else None),
        phone=user if server == USER_SERVER else None,
        push_name=push_name,
    )


def _on_history(event: HistorySyncEv, ctx: _Context) -> list[DriverEvent]:
    data = event.Data
    chunk = ev.HistoryChunk(
        sync_type=_enum_name(waHistorySync.HistorySync.HistorySyncType, data.syncType),
        chunk_order=int(data.chunkOrder),
        progress=min(int(data.progress), 100),
        conversations=[_history_conversation(c, ctx) for c in data.conversations],
    )
    return [chunk, *_history_contacts(data)]


def _on_connected(_event: ConnectedEv, ctx: _Context) -> list[DriverEvent]:
    # neonize's Connected carries no JID; the worker knows it from the device store.
    return [ev.Connected(jid=ctx.own_jid)]


def _on_disconnected(_event: DisconnectedEv, _ctx: _Context) -> list[DriverEvent]:
    return [ev.Disconnected()]


def _on_logged_out(event: LoggedOutEv, _ctx: _Context) -> list[DriverEvent]:
    reason = _enum_name(neonize_pb.ConnectFailureReason, event.Reason)
    return [ev.LoggedOut(reason=reason, on_connect=bool(event.OnConnect))]


def _on_stream_replaced(_event: StreamReplacedEv, _ctx: _Context) -> list[DriverEvent]:
    return [ev.StreamReplaced()]


# neonize renumbers whatsmeow's TempBanReason; these are WhatsApp's own codes.
_TEMP_BAN_CODES = {
    neonize_pb.TemporaryBan.SEND_TO_TOO_MANY_PEOPLE: 101,
    neonize_pb.TemporaryBan.BLOCKED_BY_USERS: 102,
    neonize_pb.TemporaryBan.CREATED_TOO_MANY_GROUPS: 103,
    neonize_pb.TemporaryBan.SENT_TOO_MANY_SAME_MESSAGE: 104,
    neonize_pb.TemporaryBan.BROADCAST_LIST: 106,
}


def _on_temporary_ban(event: TemporaryBanEv, ctx: _Context) -> list[DriverEvent]:
    # Expire is the time left, in seconds: the ban ends that long after it reached us.
    expires_at = ctx.now + timedelta(seconds=max(int(event.Expire), 0))
    ban = ev.TemporaryBan(
        code=_TEMP_BAN_CODES.get(int(event.Code), int(event.Code)),
        expires_at=expires_at,
        reason=_enum_name(neonize_pb.TemporaryBan.TempBanReason, event.Code),
    )
    return [ban]


def _on_keepalive_timeout(event: KeepAliveTimeoutEv, _ctx: _Context) -> list[DriverEvent]:
    return [ev.KeepAliveTimeout(error_count=int(event.ErrorCount))]


# Failures that retrying will not fix.
_PERMANENT_FAILURES = frozenset(
    neonize_pb.ConnectFailureReason.Value(name)
    for name in (
        "LOGGED_OUT",
        "TEMP_BANNED",
        "MAIN_DEVICE_GONE",
        "UNKNOWN_LOGOUT",
        "CLIENT_OUTDATED",
        "BAD_USER_AGENT",
    )
)


def _on_connect_failure(event: ConnectFailureEv, _ctx: _Context) -> list[DriverEvent]:
    reason = _enum_name(neonize_pb.ConnectFailureReason, event.Reason)
    if event.Message:
        reason = f"{reason}: {event.Message}"
    transient = int(event.Reason) not in _PERMANENT_FAILURES
    return [ev.ConnectFailure(reason=reason, transient=transient)]


def _on_pair_status(event: PairStatusEv, _ctx: _Context) -> list[DriverEvent]:
    who = _jid_or_none(event.ID)
    if event.Status == neonize_pb.PairStatus.SUCCESS and who:
        return [
            ev.PairSuccess(
                jid=who,
                business_name=_text_or_none(event.BusinessName),
                platform=_text_or_none(event.Platform),
            )
        ]
    return [ev.PairFailure(jid=who, error=str(event.Error) or "pairing failed")]


def _on_presence(event: PresenceEv, ctx: _Context) -> list[DriverEvent]:
    who = jid_str(event.From)
    if not who:
        return []
    last_seen = _from_seconds(event.LastSeen, ctx.now) if event.LastSeen > 0 else None
    return [ev.Presence(jid=who, available=not event.Unavailable, last_seen=last_seen)]


def _on_chat_presence(event: ChatPresenceEv, _ctx: _Context) -> list[DriverEvent]:
    state: ev.ChatPresenceState = "composing"
    if event.State == neonize_pb.ChatPresence.PAUSED:
        state = "paused"
    elif event.Media == neonize_pb.ChatPresence.AUDIO:
        state = "recording"
    source = event.MessageSource
    chat = jid_str(source.Chat)
    if not chat:
        return []
    return [ev.ChatPresence(chat=chat, sender=jid_str(source.Sender), state=state)]


_HANDLERS: dict[type[Any], Callable[[Any, _Context], list[DriverEvent]]] = {
    MessageEv: _on_message,
    ReceiptEv: _on_receipt,
    HistorySyncEv: _on_history,
    ConnectedEv: _on_connected,
    DisconnectedEv: _on_disconnected,
    LoggedOutEv: _on_logged_out,
    StreamReplacedEv: _on_stream_replaced,
    TemporaryBanEv: _on_temporary_ban,
    KeepAliveTimeoutEv: _on_keepalive_timeout,
    ConnectFailureEv: _on_connect_failure,
    PairStatusEv: _on_pair_status,
    PresenceEv: _on_presence,
    ChatPresenceEv: _on_chat_presence,
}


def translate(
    event: Any, *, own_jid: str | None = None, now: datetime | None = None
) -> list[DriverEvent]:
    """Our events for one neonize event; [] for events we do not use. Never raises.

    `own_jid` (the account's JID, if known) fills Connected.jid and the sender of our own
    messages in a history sync; `now` stands in for missing timestamps (default: the clock).
    """
    handler = _HANDLERS.get(type(event))
    if handler is None:
        log.debug("%s not translated", type(event).__name__)
        return []
    try:
        return handler(event, _Context(now=now or datetime.now(UTC), own_jid=own_jid))
    except Exception:
        log.warning("%s malformed, dropped", type(event).__name__, exc_info=True)
        return []
