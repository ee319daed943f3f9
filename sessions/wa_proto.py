"""Builders of real neonize protobuf events, shaped the way neonize's Go side delivers them.

The fake WhatsApp client emits these in place of `NewAClient`, and tests feed them to the
adapter. Every builder fills the proto2 required fields, so each event survives
`SerializeToString()` and `Type.FromString(...)` exactly like one that crossed from Go.

Worker-side only: importing this module imports neonize.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

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
from neonize.proto.Neonize_pb2 import JID, MessageSource
from neonize.proto.waCommon import WACommon_pb2 as waCommon
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as waE2E
from neonize.proto.waHistorySync import WAWebProtobufsHistorySync_pb2 as waHistorySync
from neonize.proto.waWeb import WAWebProtobufsWeb_pb2 as waWeb

USER_SERVER = "s.whatsapp.net"
LID_SERVER = "lid"
GROUP_SERVER = "g.us"
BROADCAST_SERVER = "broadcast"

# whatsmeow's types.EditAttribute values, as they appear in MessageInfo.Edit.
EDIT_MESSAGE = "1"
EDIT_PIN = "2"
EDIT_SENDER_REVOKE = "7"
EDIT_ADMIN_REVOKE = "8"

WEEK_SECONDS = 7 * 24 * 3600

# Message fields that are metadata, never the content a reply or forward attaches to.
_NO_CONTENT = frozenset({"messageContextInfo", "senderKeyDistributionMessage"})

JidLike: TypeAlias = JID | str  # a JID or its "user@server" form

# -- JIDs ----------------------------------------------------------------------------------------


def jid(user: str, server: str = USER_SERVER, *, device: int = 0, agent: int = 0) -> JID:
    """A neonize JID; `jid("", "")` is not empty in Go's sense, use `empty_jid()` for that."""
    return neonize_pb.JID(
        User=user, Server=server, Device=device, RawAgent=agent, Integrator=0, IsEmpty=False
    )


def empty_jid() -> JID:
    """The JID Go sends for an absent address (e.g. no SenderAlt)."""
    return neonize_pb.JID(User="", Server="", RawAgent=0, Device=0, Integrator=0, IsEmpty=True)


def parse_jid(value: str) -> JID:
    """Parse `user@server`, `user:device@server`, `user.agent:device@server` or `server`."""
    if not value:
        return empty_jid()
    user, at, server = value.partition("@")
    if not at:
        return jid("", user)
    agent = device = 0
    if "." in user:
        user, _, ad = user.partition(".")
        agent_part, _, device_part = ad.partition(":")
        agent = int(agent_part)
        device = int(device_part) if device_part else 0
    elif ":" in user:
        user, _, device_part = user.partition(":")
        device = int(device_part)
    return jid(user, server, device=device, agent=agent)


def jid_str(value: JID | None) -> str:
    """`user@server` without agent or device; "" for an empty JID."""
    if value is None or value.IsEmpty or not value.User:
        return ""
    return f"{value.User}@{value.Server}"


def _as_jid(value: JidLike | None) -> JID:
    if value is None:
        return empty_jid()
    if isinstance(value, str):
        return parse_jid(value)
    return value


def _jid_text(value: JidLike) -> str:
    return value if isinstance(value, str) else jid_str(value)


# -- unwrapping (whatsmeow's events.Message.UnwrapRaw) ------------------------------------------

_FLAG_WRAPPERS = (
    ("botInvokeMessage", "bot_invoke"),
    ("ephemeralMessage", "ephemeral"),
    ("viewOnceMessage", "view_once"),
    ("viewOnceMessageV2", "view_once_v2"),
    ("viewOnceMessageV2Extension", "view_once_v2_extension"),
    ("lottieStickerMessage", "lottie_sticker"),
    ("documentWithCaptionMessage", "document_with_caption"),
    ("editedMessage", "edited"),
)

_VIEW_ONCE_WRAPPERS = ("viewOnceMessage", "viewOnceMessageV2", "viewOnceMessageV2Extension")


@dataclass(frozen=True)
class Unwrapped:
    """A waE2E.Message with its wrappers peeled off, and which wrappers there were."""

    message: waE2E.Message
    device_sent_to: str | None = None
    ephemeral: bool = False
    view_once: bool = False
    view_once_v2: bool = False
    view_once_v2_extension: bool = False
    document_with_caption: bool = False
    lottie_sticker: bool = False
    bot_invoke: bool = False
    edited: bool = False


def _inner(message: waE2E.Message, field: str) -> waE2E.Message | None:
    if message.HasField(field) and getattr(message, field).HasField("message"):
        return getattr(message, field).message
    return None


def unwrap(message: waE2E.Message) -> Unwrapped:
    """Peel off device-sent, ephemeral, view-once, document-with-caption and edited wrappers.

    Same order as whatsmeow, repeated until nothing is left to peel, so it is safe to call on a
    message Go already unwrapped.
    """
    flags: dict[str, Any] = {}
    for _ in range(16):  # wrappers nest a few levels at most; bound it against hostile input
        inner = _inner(message, "deviceSentMessage")
        if inner is not None:
            flags["device_sent_to"] = str(message.deviceSentMessage.destinationJID) or None
            message = inner
            continue
        for field, flag in _FLAG_WRAPPERS:
            inner = _inner(message, field)
            if inner is not None:
                flags[flag] = True
                if field in _VIEW_ONCE_WRAPPERS:
                    flags["view_once"] = True
                if field == "viewOnceMessageV2Extension":
                    flags["view_once_v2"] = True
                message = inner
                break
        else:
            break
    return Unwrapped(message=message, **flags)


# -- waE2E.Message builders: plain content ------------------------------------------------------


def text(body: str) -> waE2E.Message:
    """A plain text message (`conversation`)."""
    return waE2E.Message(conversation=body)


def extended_text(
    body: str,
    *,
    matched_text: str = "",
    title: str = "",
    description: str = "",
    context: waE2E.ContextInfo | None = None,
) -> waE2E.Message:
    """Text with a link preview (`extendedTextMessage`); `matched_text` is the URL."""
    msg = waE2E.ExtendedTextMessage(text=body)
    if matched_text:
        msg.matchedText = matched_text
    if title:
        msg.title = title
    if description:
        msg.description = description
    if context is not None:
        msg.contextInfo.CopyFrom(context)
    return waE2E.Message(extendedTextMessage=msg)


# Path prefixes WhatsApp's CDN uses per media kind.
_CDN_PATH = {
    "image": "t62.7118-24",
    "video": "t62.7161-24",
    "audio": "t62.7117-24",
    "document": "t62.7119-24",
    "sticker": "t62.15575-24",
}

SAMPLE_BYTES = {
    "image": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00wagate sample image",
    "video": b"\x00\x00\x00\x18ftypmp42wagate sample video",
    "audio": b"OggS\x00\x02wagate sample voice",
    "document": b"%PDF-1.4\nwagate sample document\n%%EOF\n",
    "sticker": b"RIFF\x1c\x00\x00\x00WEBPVP8 wagate sample sticker",
}


def media_fields(data: bytes, kind: str, mimetype: str) -> dict[str, Any]:
    """The fields every media message carries, derived deterministically from `data`.

    `mediaKey` and `fileEncSHA256` are stand-ins (nothing is encrypted), but they have the
    real sizes, so a fake media server can key its files by `directPath`.
    """
    digest = hashlib.sha256(data).digest()
    media_key = hashlib.sha256(b"wagate-fake-media-key" + digest).digest()
    direct_path = (
        f"/v/{_CDN_PATH[kind]}/{digest.hex()[:24]}_n.enc"
        "?ccb=11-4&oh=01_Q5AaIfake&oe=68000000&_nc_sid=5e03e0"
    )
    return {
        "URL": f"https://mmg.whatsapp.net{direct_path}&mms3=true",
        "mimetype": mimetype,
        "fileSHA256": digest,
        "fileLength": len(data),
        "mediaKey": media_key,
        "fileEncSHA256": hashlib.sha256(media_key + data).digest(),
        "directPath": direct_path,
    }


def image(
    *,
    data: bytes = SAMPLE_BYTES["image"],
    caption: str = "",
    mimetype: str = "image/jpeg",
    width: int = 1280,
    height: int = 960,
) -> waE2E.Message:
    """An image, with caption if given."""
    msg = waE2E.ImageMessage(
        caption=caption, width=width, height=height, **media_fields(data, "image", mimetype)
    )
    return waE2E.Message(imageMessage=msg)


def video(
    *,
    data: bytes = SAMPLE_BYTES["video"],
    caption: str = "",
    mimetype: str = "video/mp4",
    seconds: int = 12,
    width: int = 848,
    height: int = 480,
    gif: bool = False,
) -> waE2E.Message:
    """A video (a GIF is a video with `gifPlayback`)."""
    msg = waE2E.VideoMessage(
        caption=caption,
        seconds=seconds,
        width=width,
        height=height,
        gifPlayback=gif,
        **media_fields(data, "video", mimetype),
    )
    return waE2E.Message(videoMessage=msg)


def audio(
    *,
    data: bytes = SAMPLE_BYTES["audio"],
    mimetype: str = "audio/mpeg",
    seconds: int = 95,
    ptt: bool = False,
) -> waE2E.Message:
    """An audio file; `ptt=True` makes it a voice note."""
    msg = waE2E.AudioMessage(seconds=seconds, PTT=ptt, **media_fields(data, "audio", mimetype))
    return waE2E.Message(audioMessage=msg)


def voice_note(*, data: bytes = SAMPLE_BYTES["audio"], seconds: int = 7) -> waE2E.Message:
    """A voice note as WhatsApp records it (Opus in Ogg, push-to-talk)."""
    return audio(data=data, mimetype="audio/ogg; codecs=opus", seconds=seconds, ptt=True)


def document(
    *,
    filename: str = "invoice.pdf",
    data: bytes = SAMPLE_BYTES["document"],
    mimetype: str = "application/pdf",
    caption: str = "",
    page_count: int = 1,
) -> waE2E.Message:
    """A document; with a caption WhatsApp wraps it, see `document_with_caption`."""
    msg = waE2E.DocumentMessage(
        fileName=filename,
        title=filename,
        caption=caption,
        pageCount=page_count,
        **media_fields(data, "document", mimetype),
    )
    return waE2E.Message(documentMessage=msg)


def sticker(*, data: bytes = SAMPLE_BYTES["sticker"], animated: bool = False) -> waE2E.Message:
    """A WebP sticker."""
    msg = waE2E.StickerMessage(
        width=512, height=512, isAnimated=animated, **media_fields(data, "sticker", "image/webp")
    )
    return waE2E.Message(stickerMessage=msg)


def location(
    latitude: float,
    longitude: float,
    *,
    name: str = "",
    address: str = "",
    url: str = "",
    comment: str = "",
) -> waE2E.Message:
    """A pinned location."""
    msg = waE2E.LocationMessage(degreesLatitude=latitude, degreesLongitude=longitude)
    for field, value in (("name", name), ("address", address), ("URL", url), ("comment", comment)):
        if value:
            setattr(msg, field, value)
    return waE2E.Message(locationMessage=msg)


def live_location(
    latitude: float, longitude: float, *, caption: str = "", sequence_number: int = 1
) -> waE2E.Message:
    """A live location share (its updates carry higher sequence numbers)."""
    msg = waE2E.LiveLocationMessage(
        degreesLatitude=latitude,
        degreesLongitude=longitude,
        accuracyInMeters=10,
        caption=caption,
        sequenceNumber=sequence_number,
    )
    return waE2E.Message(liveLocationMessage=msg)


def vcard(name: str, phone: str) -> str:
    """A minimal vCard 3.0 as WhatsApp writes it (`waid` is the phone's digits)."""
    digits = "".join(ch for ch in phone if ch.isdigit())
    return (
        "BEGIN:VCARD\nVERSION:3.0\n"
        f"N:;{name};;;\nFN:{name}\n"
        f"TEL;type=CELL;type=VOICE;waid={digits}:+{digits}\n"
        "END:VCARD"
    )


def contact(display_name: str, phone: str) -> waE2E.Message:
    """One contact card."""
    card = waE2E.ContactMessage(displayName=display_name, vcard=vcard(display_name, phone))
    return waE2E.Message(contactMessage=card)


def contacts(people: Sequence[tuple[str, str]]) -> waE2E.Message:
    """Several contact cards in one message; `people` are (name, phone) pairs."""
    cards = [waE2E.ContactMessage(displayName=n, vcard=vcard(n, p)) for n, p in people]
    msg = waE2E.ContactsArrayMessage(displayName=f"{len(cards)} contacts", contacts=cards)
    return waE2E.Message(contactsArrayMessage=msg)


def poll(name: str, options: Sequence[str], *, selectable_count: int = 1) -> waE2E.Message:
    """A poll as whatsmeow builds it: V3 for single choice, V1 otherwise (0 = any number)."""
    field = "pollCreationMessageV3" if selectable_count == 1 else "pollCreationMessage"
    creation = waE2E.PollCreationMessage(
        name=name,
        options=[waE2E.PollCreationMessage.Option(optionName=o) for o in options],
        selectableOptionsCount=selectable_count,
    )
    secret = hashlib.sha256(b"wagate-poll-secret" + name.encode()).digest()
    return waE2E.Message(
        messageContextInfo=waE2E.MessageContextInfo(messageSecret=secret), **{field: creation}
    )


def option_hash(option: str) -> bytes:
    """How WhatsApp identifies a poll option in a vote: SHA-256 of its name."""
    return hashlib.sha256(option.encode()).digest()


def poll_vote(
    poll_id: str,
    *,
    chat: JidLike,
    selected: Sequence[str],
    poll_sender: JidLike | None = None,
    poll_from_me: bool = False,
    sender_timestamp_ms: int = 0,
) -> waE2E.Message:
    """A vote on a poll (`pollUpdateMessage`).

    Real votes are AES-GCM encrypted with a key derived from the poll's message secret; this
    one carries the PollVoteMessage in clear in `encPayload`, which `read_fake_poll_vote` reads.
    """
    vote = waE2E.PollVoteMessage(selectedOptions=[option_hash(o) for o in selected])
    update = waE2E.PollUpdateMessage(
        pollCreationMessageKey=message_key(
            poll_id, chat=chat, sender=poll_sender, from_me=poll_from_me
        ),
        vote=waE2E.PollEncValue(encPayload=vote.SerializeToString(), encIV=bytes(12)),
        senderTimestampMS=sender_timestamp_ms,
    )
    return waE2E.Message(pollUpdateMessage=update)


def read_fake_poll_vote(update: waE2E.PollUpdateMessage) -> waE2E.PollVoteMessage:
    """The PollVoteMessage inside a vote built by `poll_vote` (what decryption would yield)."""
    return waE2E.PollVoteMessage.FromString(update.vote.encPayload)


def unknown(name: str = "Team lunch") -> waE2E.Message:
    """A message of a type the adapter does not support (an event invitation)."""
    return waE2E.Message(
        eventMessage=waE2E.EventMessage(name=name, description="Friday", startTime=1767261600)
    )


def protocol_notice(kind: str = "APP_STATE_SYNC_KEY_SHARE") -> waE2E.Message:
    """A housekeeping protocol message the phone sends to its companions."""
    return waE2E.Message(
        protocolMessage=waE2E.ProtocolMessage(type=waE2E.ProtocolMessage.Type.Value(kind))
    )


def sender_key_distribution(group: str) -> waE2E.Message:
    """The key-exchange-only message a group member sometimes sends before content."""
    return waE2E.Message(
        senderKeyDistributionMessage=waE2E.SenderKeyDistributionMessage(
            groupID=group, axolotlSenderKeyDistributionMessage=b"\x33" * 32
        )
    )


# -- references to other messages -----------------------------------------------------------------


def message_key(
    message_id: str, *, chat: JidLike, sender: JidLike | None = None, from_me: bool = False
) -> waCommon.MessageKey:
    """A waCommon.MessageKey like whatsmeow's BuildMessageKey (participant only in groups)."""
    chat_text = _jid_text(chat)
    key = waCommon.MessageKey(remoteJID=chat_text, fromMe=from_me, ID=message_id)
    if sender is not None and not from_me and chat_text.endswith("@" + GROUP_SERVER):
        key.participant = _jid_text(sender)
    return key


def reaction(
    target_id: str,
    emoji: str,
    *,
    chat: JidLike,
    target_sender: JidLike | None = None,
    target_from_me: bool = False,
    sender_timestamp_ms: int = 0,
) -> waE2E.Message:
    """A reaction to `target_id`; `emoji=""` removes an earlier reaction."""
    msg = waE2E.ReactionMessage(
        key=message_key(target_id, chat=chat, sender=target_sender, from_me=target_from_me),
        text=emoji,
        senderTimestampMS=sender_timestamp_ms,
    )
    return waE2E.Message(reactionMessage=msg)


def revoke(
    target_id: str,
    *,
    chat: JidLike,
    target_sender: JidLike | None = None,
    target_from_me: bool = False,
) -> waE2E.Message:
    """Delete `target_id` for everyone (protocolMessage REVOKE)."""
    msg = waE2E.ProtocolMessage(
        type=waE2E.ProtocolMessage.REVOKE,
        key=message_key(target_id, chat=chat, sender=target_sender, from_me=target_from_me),
    )
    return waE2E.Message(protocolMessage=msg)


def edit(
    target_id: str, new_content: waE2E.Message, *, chat: JidLike, timestamp_ms: int = 0
) -> waE2E.Message:
    """An edit of own message `target_id`, shaped like whatsmeow's BuildEdit.

    WhatsApp wraps a protocolMessage MESSAGE_EDIT in `editedMessage`; the stanza carries
    edit="1", which whatsmeow exposes as MessageInfo.Edit (`message_event(edit=EDIT_MESSAGE)`).
    """
    protocol = waE2E.ProtocolMessage(
        type=waE2E.ProtocolMessage.MESSAGE_EDIT,
        key=waCommon.MessageKey(remoteJID=_jid_text(chat), fromMe=True, ID=target_id),
        editedMessage=new_content,
        timestampMS=timestamp_ms,
    )
    inner = waE2E.Message(protocolMessage=protocol)
    return waE2E.Message(editedMessage=waE2E.FutureProofMessage(message=inner))


def _context_part(message: waE2E.Message) -> Any:
    """The content part of `message` that holds `contextInfo`, looking inside wrappers.

    Plain text is promoted to extendedTextMessage on the way, since `conversation` has none.
    """
    if message.HasField("conversation"):
        body = message.conversation
        message.ClearField("conversation")
        message.extendedTextMessage.text = body
    for field, value in message.ListFields():
        fields = field.message_type.fields_by_name if field.message_type is not None else {}
        if "contextInfo" in fields and field.name not in _NO_CONTENT:
            return value
        if "message" in fields and value.HasField("message"):
            return _context_part(value.message)
    raise ValueError("message has no part that can carry contextInfo")


def _content_with_context(message: waE2E.Message) -> tuple[waE2E.Message, Any]:
    """A copy of `message` and, inside the copy, the part that holds `contextInfo`."""
    out = waE2E.Message()
    out.CopyFrom(message)
    return out, _context_part(out)


def reply(
    message: waE2E.Message,
    *,
    quoted_id: str,
    quoted_sender: JidLike,
    quoted_message: waE2E.Message | None = None,
    chat: JidLike | None = None,
) -> waE2E.Message:
    """`message` as a reply to `quoted_id` (contextInfo stanzaID/participant/quotedMessage)."""
    out, part = _content_with_context(message)
    part.contextInfo.stanzaID = quoted_id
    part.contextInfo.participant = _jid_text(quoted_sender)
    if quoted_message is not None:
        part.contextInfo.quotedMessage.CopyFrom(quoted_message)
    if chat is not None:
        part.contextInfo.remoteJID = _jid_text(chat)
    return out


def forwarded(message: waE2E.Message, *, score: int = 1) -> waE2E.Message:
    """`message` marked as forwarded."""
    out, part = _content_with_context(message)
    part.contextInfo.isForwarded = True
    part.contextInfo.forwardingScore = score
    return out


def view_once(message: waE2E.Message) -> waE2E.Message:
    """`message` (image, video or voice) as view-once, wrapped as current WhatsApp does."""
    return waE2E.Message(viewOnceMessageV2=waE2E.FutureProofMessage(message=message))


def ephemeral(message: waE2E.Message, *, expiration: int = WEEK_SECONDS) -> waE2E.Message:
    """`message` sent in a chat with disappearing messages on."""
    out, part = _content_with_context(message)
    part.contextInfo.expiration = expiration
    return waE2E.Message(ephemeralMessage=waE2E.FutureProofMessage(message=out))


def document_with_caption(message: waE2E.Message) -> waE2E.Message:
    """A captioned document wrapped the way WhatsApp sends it."""
    return waE2E.Message(documentWithCaptionMessage=waE2E.FutureProofMessage(message=message))


def device_sent(message: waE2E.Message, *, destination: JidLike) -> waE2E.Message:
    """`message` as the phone relays what it sent to its companions (deviceSentMessage)."""
    wrapper = waE2E.DeviceSentMessage(destinationJID=_jid_text(destination), message=message)
    return waE2E.Message(deviceSentMessage=wrapper)


# -- MessageEv ----------------------------------------------------------------------------------


def message_source(
    *,
    chat: JidLike,
    sender: JidLike,
    from_me: bool = False,
    is_group: bool | None = None,
    sender_alt: JidLike | None = None,
    recipient_alt: JidLike | None = None,
) -> MessageSource:
    """A MessageSource; `is_group` defaults to whether `chat` is a group or broadcast."""
    chat_jid = _as_jid(chat)
    if is_group is None:
        is_group = chat_jid.Server in (GROUP_SERVER, BROADCAST_SERVER)
    src = neonize_pb.MessageSource(
        Chat=chat_jid,
        Sender=_as_jid(sender),
        IsFromMe=from_me,
        IsGroup=is_group,
        SenderAlt=_as_jid(sender_alt),
        RecipientAlt=_as_jid(recipient_alt),
        BroadcastListOwner=empty_jid(),
    )
    if is_group and not src.SenderAlt.IsEmpty:
        # Only group stanzas carry addressing_mode: the form the participant is addressed in.
        lid = src.Sender.Server == LID_SERVER
        src.AddressingMode = neonize_pb.LID if lid else neonize_pb.PN
    return src


_MEDIA_TYPES = (
    ("imageMessage", "image"),
    ("videoMessage", "video"),
    ("audioMessage", "audio"),
    ("documentMessage", "document"),
    ("stickerMessage", "sticker"),
    ("locationMessage", "location"),
    ("liveLocationMessage", "livelocation"),
    ("contactMessage", "vcard"),
    ("contactsArrayMessage", "contact_array"),
)


def _stanza_types(message: waE2E.Message) -> tuple[str, str]:
    """(MessageInfo.Type, MessageInfo.MediaType) as the stanza attributes would say."""
    if message.HasField("reactionMessage"):
        return "reaction", ""
    if message.HasField("pollUpdateMessage") or any(
        message.HasField(f) for f in ("pollCreationMessage", "pollCreationMessageV3")
    ):
        return "poll", ""
    for field, media in _MEDIA_TYPES:
        if message.HasField(field):
            if field == "audioMessage" and message.audioMessage.PTT:
                media = "ptt"
            if field == "videoMessage" and message.videoMessage.gifPlayback:
                media = "gif"
            return "media", media
    if message.extendedTextMessage.matchedText:
        return "text", "url"
    return "text", ""


def message_event(
    *,
    id: str,
    chat: JidLike,
    sender: JidLike,
    message: waE2E.Message,
    timestamp_ms: int,
    from_me: bool = False,
    is_group: bool | None = None,
    push_name: str = "",
    sender_alt: JidLike | None = None,
    recipient_alt: JidLike | None = None,
    edit: str = "",
    unwrap_message: bool = True,
    server_id: int = 0,
    category: str = "",
) -> MessageEv:
    """A MessageEv as neonize delivers it.

    `chat`, `sender` and the alts take a JID or its string form. `timestamp_ms` is
    milliseconds, like Go's `Timestamp.UnixMilli()`. With `unwrap_message` (the default) the
    message is unwrapped and the Is* flags set, as whatsmeow does before dispatch; `edit` is
    the stanza's edit attribute (EDIT_MESSAGE for an edit, EDIT_SENDER_REVOKE for a revoke).
    """
    peeled = unwrap(message) if unwrap_message else Unwrapped(message=message)
    msg_type, media_type = _stanza_types(peeled.message)
    info = neonize_pb.MessageInfo(
        MessageSource=message_source(
            chat=chat,
            sender=sender,
            from_me=from_me,
            is_group=is_group,
            sender_alt=sender_alt,
            recipient_alt=recipient_alt,
        ),
        ID=id,
        ServerID=server_id,
        Type=msg_type,
        Pushname=push_name,
        Timestamp=timestamp_ms,
        Category=category,
        Multicast=False,
        MediaType=media_type,
        Edit=edit,
    )
    if peeled.device_sent_to is not None:
        info.DeviceSentMeta.CopyFrom(
            neonize_pb.DeviceSentMeta(DestinationJID=peeled.device_sent_to, Phash="")
        )
    return MessageEv(
        Info=info,
        Message=peeled.message,
        Raw=peeled.message,
        IsEphemeral=peeled.ephemeral,
        IsViewOnce=peeled.view_once,
        IsViewOnceV2=peeled.view_once_v2,
        IsViewOnceV2Extension=peeled.view_once_v2_extension,
        IsDocumentWithCaption=peeled.document_with_caption,
        IsLottieSticker=peeled.lottie_sticker,
        IsEdit=peeled.edited,
        UnavailableRequestID="",
        RetryCount=0,
    )


# -- receipts, presence ---------------------------------------------------------------------------


def receipt_event(
    *,
    chat: JidLike,
    sender: JidLike,
    message_ids: Sequence[str],
    timestamp_s: int,
    type: str = "READ",
    from_me: bool = False,
    is_group: bool | None = None,
) -> ReceiptEv:
    """A ReceiptEv; `type` is a Receipt.ReceiptType name (DELIVERED, READ, PLAYED, ...).

    `timestamp_s` is seconds, like Go's `Timestamp.Unix()`.
    """
    return ReceiptEv(
        MessageSource=message_source(chat=chat, sender=sender, from_me=from_me, is_group=is_group),
        MessageIDs=list(message_ids),
        Timestamp=timestamp_s,
        Type=neonize_pb.Receipt.ReceiptType.Value(type.upper()),
    )


def presence_event(who: JidLike, *, available: bool = True, last_seen_s: int = 0) -> PresenceEv:
    """A PresenceEv; Go sends the zero time's Unix() (negative) when last seen is unknown."""
    return PresenceEv(From=_as_jid(who), Unavailable=not available, LastSeen=last_seen_s)


def chat_presence_event(
    *, chat: JidLike, sender: JidLike, state: str = "composing"
) -> ChatPresenceEv:
    """A ChatPresenceEv: "composing", "paused" or "recording" (composing audio)."""
    cp = neonize_pb.ChatPresence
    media = cp.AUDIO if state == "recording" else cp.TEXT
    kind = cp.PAUSED if state == "paused" else cp.COMPOSING
    return ChatPresenceEv(
        MessageSource=message_source(chat=chat, sender=sender), State=kind, Media=media
    )


# -- connection lifecycle ---------------------------------------------------------------------


def connected_event() -> ConnectedEv:
    """ConnectedEv: neonize sends only `status=True`, no JID."""
    return ConnectedEv(status=True)


def disconnected_event() -> DisconnectedEv:
    return DisconnectedEv(status=True)


def stream_replaced_event() -> StreamReplacedEv:
    return StreamReplacedEv()


def logged_out_event(*, reason: str = "LOGGED_OUT", on_connect: bool = False) -> LoggedOutEv:
    """LoggedOutEv; `reason` is a ConnectFailureReason name."""
    return LoggedOutEv(
        OnConnect=on_connect, Reason=neonize_pb.ConnectFailureReason.Value(reason.upper())
    )


def temporary_ban_event(
    *, code: str = "SENT_TOO_MANY_SAME_MESSAGE", expire_s: int = 3600
) -> TemporaryBanEv:
    """TemporaryBanEv; `Expire` is a duration in seconds (time left), not a timestamp."""
    reason = neonize_pb.TemporaryBan.TempBanReason.Value(code.upper())
    return TemporaryBanEv(Code=reason, Expire=expire_s)


def keepalive_timeout_event(*, error_count: int = 1, last_success_s: int = 0) -> KeepAliveTimeoutEv:
    return KeepAliveTimeoutEv(ErrorCount=error_count, LastSuccess=last_success_s)


def connect_failure_event(
    *, reason: str = "SERVICE_UNAVAILABLE", message: str = ""
) -> ConnectFailureEv:
    """ConnectFailureEv with the server's <failure> node."""
    node = neonize_pb.Node(
        Tag="failure", Attrs=[neonize_pb.NodeAttrs(name="reason", text=reason.lower())], Nil=True
    )
    return ConnectFailureEv(
        Reason=neonize_pb.ConnectFailureReason.Value(reason.upper()), Message=message, Raw=node
    )


def pair_status_event(
    who: JidLike, *, business_name: str = "", platform: str = "android", error: str | None = None
) -> PairStatusEv:
    """PairStatusEv: SUCCESS, or ERROR when `error` is given."""
    ev = PairStatusEv(
        ID=_as_jid(who),
        BusinessName=business_name,
        Platform=platform,
        Status=neonize_pb.PairStatus.ERROR if error is not None else neonize_pb.PairStatus.SUCCESS,
    )
    if error is not None:
        ev.Error = error
    return ev


# -- history sync ---------------------------------------------------------------------------------


def web_message(
    *,
    id: str,
    chat: JidLike,
    message: waE2E.Message | None,
    timestamp_s: int,
    from_me: bool = False,
    participant: JidLike | None = None,
    push_name: str = "",
    status: str | None = None,
    stub_type: str | None = None,
) -> waWeb.WebMessageInfo:
    """A WebMessageInfo as history sync carries it (`messageTimestamp` is seconds)."""
    key = waCommon.MessageKey(remoteJID=_jid_text(chat), fromMe=from_me, ID=id)
    if participant is not None:
        key.participant = _jid_text(participant)
    web = waWeb.WebMessageInfo(key=key, messageTimestamp=timestamp_s)
    if message is not None:
        web.message.CopyFrom(message)
    if push_name:
        web.pushName = push_name
    if status is not None:
        web.status = waWeb.WebMessageInfo.Status.Value(status.upper())
    if stub_type is not None:
        web.messageStubType = waWeb.WebMessageInfo.StubType.Value(stub_type.upper())
    return web


def history_conversation(
    chat: JidLike,
    messages: Iterable[waWeb.WebMessageInfo],
    *,
    name: str = "",
    unread_count: int = 0,
    pn_jid: str = "",
    lid_jid: str = "",
) -> waHistorySync.Conversation:
    """A history-sync Conversation holding WebMessageInfos (newest first, as WhatsApp sends)."""
    conv = waHistorySync.Conversation(ID=_jid_text(chat), unreadCount=unread_count)
    for order, web in enumerate(messages, start=1):
        conv.messages.append(waHistorySync.HistorySyncMsg(message=web, msgOrderID=order))
    for field, value in (("name", name), ("pnJID", pn_jid), ("lidJID", lid_jid)):
        if value:
            setattr(conv, field, value)
    return conv


def history_sync_event(
    conversations: Iterable[waHistorySync.Conversation],
    *,
    sync_type: str = "INITIAL_BOOTSTRAP",
    chunk_order: int = 1,
    progress: int = 100,
    pushnames: Mapping[str, str] | None = None,
    phone_to_lid: Mapping[str, str] | None = None,
) -> HistorySyncEv:
    """HistorySyncEv: `Data` is the decoded waHistorySync.HistorySync blob."""
    data = waHistorySync.HistorySync(
        syncType=waHistorySync.HistorySync.HistorySyncType.Value(sync_type.upper()),
        conversations=list(conversations),
        chunkOrder=chunk_order,
        progress=progress,
    )
    for who, name in (pushnames or {}).items():
        data.pushnames.append(waHistorySync.Pushname(ID=who, pushname=name))
    for pn, lid in (phone_to_lid or {}).items():
        data.phoneNumberToLidMappings.append(
            waHistorySync.PhoneNumberToLIDMapping(pnJID=pn, lidJID=lid)
        )
    return HistorySyncEv(Data=data)
