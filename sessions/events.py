"""The driver boundary: our own event types. Nothing from neonize ever crosses it.

The worker-side adapter (`sessions.adapter`) turns neonize protobuf events into these; the
supervisor, the store and everything above see only these. They are frozen pydantic models so
they serialize over the worker IPC unchanged and validate on the way in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {k: _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


class _Event(BaseModel):
    # NaN and infinities cross the IPC as JSON constants (a location can carry them).
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        """Anyone can send a NUL character over WhatsApp; PostgreSQL stores none: drop it
        here, once, for every event."""
        return _without_nul(data)


MessageType = Literal[
    "text",
    "image",
    "video",
    "audio",
    "voice",
    "document",
    "sticker",
    "location",
    "live_location",
    "contact",
    "contacts",
    "poll",
    "poll_vote",
    "reaction",
    "edit",
    "revoke",
    "unsupported",
    # Cloud API only: interactive replies (buttons, lists), template quick replies, notices.
    "interactive",
    "button",
    "system",
]


ReceiptKind = Literal["delivered", "read", "played", "sender", "retry", "server_error", "other"]
ChatPresenceState = Literal["composing", "paused", "recording"]


class MediaInfo(_Event):
    """What WhatsApp says of an attachment (the bytes are fetched separately)."""

    mime_type: str | None = None
    file_sha256: str | None = None  # hex
    file_length: int | None = None
    filename: str | None = None
    duration_seconds: int | None = None
    width: int | None = None
    height: int | None = None
    # Opaque download reference for the worker (direct path, media key, ...), never shown.
    download: dict[str, str] = Field(default_factory=dict)


class Location(_Event):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None
    url: str | None = None


class ContactCard(_Event):
    display_name: str | None = None
    vcard: str


class Poll(_Event):
    name: str
    options: list[str]
    selectable_count: int = 1


class WaMessage(_Event):
    """One WhatsApp message as the store needs it, whatever its type."""

    id: str
    chat: str  # chat JID, e.g. 5215512345678@s.whatsapp.net, 123@g.us, 456@lid
    sender: str  # sender JID (in groups the participant)
    chat_alt: str | None = None  # the other addressing form of a 1:1 chat (phone <-> LID)
    sender_alt: str | None = None
    from_me: bool = False
    is_group: bool = False
    push_name: str | None = None
    timestamp: datetime
    type: MessageType
    text: str | None = None  # text, or the caption of media
    media: MediaInfo | None = None
    quoted_id: str | None = None
    quoted_sender: str | None = None
    target_id: str | None = None  # the message a reaction / edit / revoke / vote points at
    emoji: str | None = None  # reaction; empty string removes it
    location: Location | None = None
    contacts: list[ContactCard] = Field(default_factory=list)
    poll: Poll | None = None
    poll_vote_hashes: list[str] = Field(default_factory=list)  # poll votes are encrypted hashes
    view_once: bool = False
    ephemeral: bool = False
    forwarded: bool = False
    raw: dict[str, Any] = Field(default_factory=dict)  # the protobuf as a JSON-able dict


class QRCode(_Event):
    kind: Literal["qr"] = "qr"
    code: str  # raw QR payload (ref,noiseKey,identityKey,advSecret)
    expires_at: datetime


class PairCode(_Event):
    kind: Literal["pair_code"] = "pair_code"
    code: str  # "ABCD-EFGH"


class PairSuccess(_Event):
    kind: Literal["pair_success"] = "pair_success"
    jid: str
    lid: str | None = None
    business_name: str | None = None
    platform: str | None = None


class PairFailure(_Event):
    kind: Literal["pair_failure"] = "pair_failure"
    jid: str | None = None
    error: str


class Connected(_Event):
    kind: Literal["connected"] = "connected"
    jid: str | None = None
    lid: str | None = None
    phone: str | None = None
    push_name: str | None = None


class Disconnected(_Event):
    kind: Literal["disconnected"] = "disconnected"
    reason: str = ""


class ConnectFailure(_Event):
    kind: Literal["connect_failure"] = "connect_failure"
    reason: str
    transient: bool = True


class LoggedOut(_Event):
    kind: Literal["logged_out"] = "logged_out"
    reason: str = ""
    on_connect: bool = False


class StreamReplaced(_Event):
    kind: Literal["stream_replaced"] = "stream_replaced"


class TemporaryBan(_Event):
    kind: Literal["temporary_ban"] = "temporary_ban"
    code: int  # WhatsApp's number: 101 too many strangers, 102 blocked by users, ...
    expires_at: datetime
    reason: str = ""  # e.g. "blocked_by_users"


class KeepAliveTimeout(_Event):
    kind: Literal["keepalive_timeout"] = "keepalive_timeout"
    error_count: int = 0


class MessageReceived(_Event):
    kind: Literal["message"] = "message"
    message: WaMessage


class Receipt(_Event):
    kind: Literal["receipt"] = "receipt"
    chat: str
    sender: str
    message_ids: list[str]
    type: ReceiptKind
    timestamp: datetime
    # True when the receipt comes from our own account (read or played on the phone): the
    # messages are then incoming ones we have seen, not ours seen by someone else.
    from_me: bool = False


class HistoryConversation(_Event):
    chat: str
    chat_alt: str | None = None  # the other addressing form (phone <-> LID) when WhatsApp says
    name: str | None = None
    unread_count: int = 0
    messages: list[WaMessage] = Field(default_factory=list)


class HistoryChunk(_Event):
    kind: Literal["history"] = "history"
    sync_type: str
    chunk_order: int = 0
    progress: int = 0  # percent, 0..100
    conversations: list[HistoryConversation] = Field(default_factory=list)


class ContactUpdate(_Event):
    kind: Literal["contact"] = "contact"
    jid: str
    lid: str | None = None
    phone: str | None = None
    push_name: str | None = None
    saved_name: str | None = None
    business_name: str | None = None


class Presence(_Event):
    kind: Literal["presence"] = "presence"
    jid: str
    available: bool
    last_seen: datetime | None = None


class ChatPresence(_Event):
    kind: Literal["chat_presence"] = "chat_presence"
    chat: str
    sender: str
    state: ChatPresenceState


DriverEvent = Annotated[
    QRCode
    | PairCode
    | PairSuccess
    | PairFailure
    | Connected
    | Disconnected
    | ConnectFailure
    | LoggedOut
    | StreamReplaced
    | TemporaryBan
    | KeepAliveTimeout
    | MessageReceived
    | Receipt
    | HistoryChunk
    | ContactUpdate
    | Presence
    | ChatPresence,
    Field(discriminator="kind"),
]
