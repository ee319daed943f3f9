"""Supervisor <-> worker protocol: our own typed, versioned messages in length-prefixed frames.

A frame is a 4-byte big-endian length followed by one JSON document (a pydantic model with a
`type` discriminator). The first frame a worker sends is `Hello` with its protocol version; the
supervisor refuses a worker that speaks another version. Nothing from neonize crosses this.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from sessions.events import DriverEvent

PROTOCOL_VERSION = 2
# A worker that ends itself with this exit code asks to be replaced by a fresh process.
RECYCLE_EXIT_CODE = 75
# A worker ends itself with this code when the gateway stopped extending its `run_until`: the
# node could not renew its leases (or froze), so another node may take its sessions over.
FENCED_EXIT_CODE = 76
MAX_FRAME = 64 * 1024 * 1024  # a history-sync chunk can be large
_HEADER = struct.Struct(">I")


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


# -- commands: what the supervisor asks a worker's session to do ------------------------------


class SendText(_Msg):
    command: Literal["send_text"] = "send_text"
    to: str
    text: str
    reply_to: str | None = None
    reply_to_sender: str | None = None


class SendMedia(_Msg):
    """Send a stored file (the worker reads it from the media directory)."""

    command: Literal["send_media"] = "send_media"
    to: str
    kind: Literal["image", "video", "audio", "voice", "document", "sticker"]
    path: str
    mime_type: str
    filename: str | None = None
    caption: str | None = None


class React(_Msg):
    command: Literal["react"] = "react"
    chat: str
    sender: str
    message_id: str
    emoji: str


class Revoke(_Msg):
    command: Literal["revoke"] = "revoke"
    chat: str
    sender: str
    message_id: str


class Edit(_Msg):
    command: Literal["edit"] = "edit"
    chat: str
    message_id: str
    text: str


class MarkRead(_Msg):
    command: Literal["mark_read"] = "mark_read"
    chat: str
    sender: str
    message_ids: list[str]


class ChatPresence(_Msg):
    """Show (or stop showing) "typing…" in a chat."""

    command: Literal["chat_presence"] = "chat_presence"
    chat: str
    state: Literal["composing", "paused"] = "composing"


class DownloadMedia(_Msg):
    """Fetch a stored message's attachment into the media directory."""

    command: Literal["download_media"] = "download_media"
    message_id: int
    wa_message_id: str
    message: dict[str, Any]  # the waE2E.Message as stored (protobuf JSON)
    declared_size: int | None = None
    declared_mime: str | None = None


class ResolveLid(_Msg):
    """Ask WhatsApp which phone number stands behind a LID."""

    command: Literal["resolve_lid"] = "resolve_lid"
    lid: str


class GroupInfo(_Msg):
    """Ask WhatsApp for a group's name and participants."""

    command: Literal["group_info"] = "group_info"
    group: str


class ProfilePicture(_Msg):
    """Ask WhatsApp for the URL of someone's profile picture."""

    command: Literal["profile_picture"] = "profile_picture"
    jid: str


class Logout(_Msg):
    command: Literal["logout"] = "logout"


class PairPhone(_Msg):
    command: Literal["pair_phone"] = "pair_phone"
    phone: str  # digits only, with country code


Command = Annotated[
    SendText
    | SendMedia
    | React
    | Revoke
    | Edit
    | MarkRead
    | ChatPresence
    | Logout
    | PairPhone
    | DownloadMedia
    | ResolveLid
    | GroupInfo
    | ProfilePicture,
    Field(discriminator="command"),
]


# -- supervisor -> worker -----------------------------------------------------------------------


class StartSession(_Msg):
    type: Literal["start"] = "start"
    session_id: int
    jid: str | None = None  # resume this device; None: pair a new one
    qr_window_seconds: float = 160.0
    run_until: float | None = None  # see Ping


class StopSession(_Msg):
    type: Literal["stop"] = "stop"
    session_id: int


class Ack(_Msg):
    """Events up to and including `seq` are stored; the worker may forget them."""

    type: Literal["ack"] = "ack"
    session_id: int
    seq: int


class Request(_Msg):
    type: Literal["request"] = "request"
    request_id: int
    session_id: int
    command: Command


class Ping(_Msg):
    """A heartbeat, and the fence: `run_until` is a `time.monotonic()` instant (one clock for
    every process of a machine) until which this node's leases allow its sessions to run.
    Past it, with no newer Ping, the worker stops its sessions and exits with
    FENCED_EXIT_CODE, even when the gateway itself is frozen. None: no fence."""

    type: Literal["ping"] = "ping"
    nonce: int
    run_until: float | None = None


class Shutdown(_Msg):
    type: Literal["shutdown"] = "shutdown"


# -- worker -> supervisor -----------------------------------------------------------------------


class Hello(_Msg):
    type: Literal["hello"] = "hello"
    version: int
    pid: int
    driver: str


class Pong(_Msg):
    type: Literal["pong"] = "pong"
    nonce: int


class EventFrame(_Msg):
    """What one WhatsApp event of one session became on our side.

    `seq` numbers the session's spooled events (1, 2, ...; durable across worker restarts);
    the supervisor acknowledges it once stored. `seq` 0 marks an ephemeral event (a QR code, a
    pairing code) that is neither spooled nor acknowledged."""

    type: Literal["event"] = "event"
    session_id: int
    seq: int
    events: list[DriverEvent]
    replayed: bool = False
    # Unix time the event reached Python in the worker (when it was spooled); None for replays.
    arrived_at: float | None = None


class SessionStatus(_Msg):
    """Lifecycle facts that are not WhatsApp events (connect attempts, QR window, stops)."""

    type: Literal["status"] = "status"
    session_id: int
    status: Literal["starting", "connecting", "reconnecting", "qr_expired", "stopped", "failed"]
    detail: str = ""
    retry_in: float | None = None


class Response(_Msg):
    type: Literal["response"] = "response"
    request_id: int
    ok: bool
    result: dict[str, Any] = Field(default_factory=dict)
    error: str = ""
    error_kind: Literal["", "invalid", "not_connected", "transient", "failed"] = ""


ToWorker = Annotated[
    StartSession | StopSession | Ack | Request | Ping | Shutdown, Field(discriminator="type")
]
ToSupervisor = Annotated[
    Hello | Pong | EventFrame | SessionStatus | Response, Field(discriminator="type")
]

_TO_WORKER: TypeAdapter[Any] = TypeAdapter(ToWorker)
_TO_SUPERVISOR: TypeAdapter[Any] = TypeAdapter(ToSupervisor)


class ProtocolError(Exception):
    """A frame that is too large, truncated or not one of our messages."""


def encode(message: BaseModel) -> bytes:
    body = message.model_dump_json().encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None  # clean end of stream
        raise ProtocolError("stream ended inside a frame header") from exc
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("stream ended inside a frame") from exc


async def read_to_worker(reader: asyncio.StreamReader) -> Any | None:
    """The next supervisor message, or None at end of stream."""
    frame = await _read_frame(reader)
    if frame is None:
        return None
    try:
        return _TO_WORKER.validate_json(frame)
    except ValueError as exc:
        raise ProtocolError(f"not a supervisor message: {exc}") from exc


async def read_to_supervisor(reader: asyncio.StreamReader) -> Any | None:
    """The next worker message, or None at end of stream."""
    frame = await _read_frame(reader)
    if frame is None:
        return None
    try:
        return _TO_SUPERVISOR.validate_json(frame)
    except ValueError as exc:
        raise ProtocolError(f"not a worker message: {exc}") from exc
