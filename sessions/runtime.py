"""One WhatsApp Web session inside a worker process: the neonize client (or the fake standing in
for it), its connect loop, QR window, durable event spool and commands.

Runs only in worker processes; this is one of the two places that import neonize.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from google.protobuf import json_format
from neonize.events import INT_TO_EVENT
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ContextInfo, ExtendedTextMessage, Message
from neonize.utils.enum import ChatPresence, ChatPresenceMedia, ReceiptType
from pydantic import BaseModel

from sessions import adapter, events, ipc
from sessions.backoff import Backoff
from sessions.media import MediaStore
from sessions.spool import Spool
from sessions.wa_proto import jid_str, parse_jid

log = logging.getLogger(__name__)

# Event codes (neonize.events.EVENT_TO_INT) whose loss would lose user data: spooled, numbered,
# acknowledged after storage, replayed after a crash. Everything else is live state.
DURABLE_CODES = frozenset({13, 17, 18, 21, 22, 23, 44})
DEVICE_CODE = 0  # neonize's own "me" update
PAIR_STATUS_CODE = 2
CONNECTED_CODE = 3
# Every event type we subscribe to; Go delivers only these (the set is frozen at connect).
SUBSCRIBED_CODES = sorted(
    {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 18, 19, 20, 21, 22, 23, 26, 27, 44}
    & set(INT_TO_EVENT)
)
CONNECT_SETTLE_SECONDS = 15.0


class DriverClient(Protocol):
    """What we use of neonize's NewAClient (and what the fake implements)."""

    event: Any
    qr: Callable[[Any], Any]
    connected: bool
    me: Any

    async def connect(self) -> asyncio.Task[None]: ...
    async def stop(self) -> None: ...
    async def logout(self) -> None: ...
    async def PairPhone(self, phone: str, show_push_notification: bool) -> str: ...
    async def send_message(self, to: Any, message: Any) -> Any: ...
    async def build_reaction(
        self, chat: Any, sender: Any, message_id: str, reaction: str
    ) -> Any: ...
    async def revoke_message(self, chat: Any, sender: Any, message_id: str) -> Any: ...
    async def edit_message(self, chat: Any, message_id: str, new_message: Any) -> Any: ...
    async def mark_read(self, *message_ids: str, chat: Any, sender: Any, receipt: Any) -> Any: ...
    async def download_any(self, message: Any) -> Any: ...
    async def send_image(self, to: Any, file: bytes, caption: str | None = None) -> Any: ...
    async def send_video(self, to: Any, file: bytes, caption: str | None = None) -> Any: ...
    async def send_audio(self, to: Any, file: bytes, ptt: bool = False) -> Any: ...
    async def send_sticker(self, to: Any, file: bytes, passthrough: bool = False) -> Any: ...
    async def send_document(
        self,
        to: Any,
        file: bytes,
        caption: str | None = None,
        title: str | None = None,
        filename: str | None = None,
        mimetype: str | None = None,
    ) -> Any: ...
    async def get_pn_from_lid(self, jid: Any) -> Any: ...
    async def get_group_info(self, jid: Any) -> Any: ...
    async def get_profile_picture(self, jid: Any) -> Any: ...
    async def send_chat_presence(self, jid: Any, state: Any, media: Any) -> Any: ...


ClientFactory = Callable[..., DriverClient]


class CommandError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class QrTiming:
    first: float = 60.0
    following: float = 20.0
    codes: int = 6

    @property
    def window(self) -> float:
        return self.first + self.following * (self.codes - 1)


TRANSIENT_MARKERS = (
    "dial",
    "timeout",
    "timed out",
    "connection",
    "network",
    "websocket",
    "eof",
    "reset",
    "refused",
    "unreachable",
    "no such host",
    "stream",
    "temporary",
)
CREDENTIAL_MARKERS = ("logged out", "401", "unauthorized", "not logged in", "device removed")


def classify(error: str) -> str:
    """transient (retry), credentials (logged out: stop) or unknown (failed)."""
    text = error.lower()
    if any(marker in text for marker in CREDENTIAL_MARKERS):
        return "credentials"
    if any(marker in text for marker in TRANSIENT_MARKERS):
        return "transient"
    return "unknown"


class SessionRuntime:
    def __init__(
        self,
        session_id: int,
        *,
        factory: ClientFactory,
        store_url: str,
        spool: Spool,
        send: Callable[[BaseModel], None],
        connect_lock: asyncio.Lock,
        backoff: Backoff,
        qr_timing: QrTiming,
        media: MediaStore,
        on_connect_failure: Callable[[], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.key = f"wagate-{session_id}"
        self._factory = factory
        self._store_url = store_url
        self.spool = spool
        self._send = send
        self._connect_lock = connect_lock
        self._backoff = backoff
        self._qr_timing = qr_timing
        self.media = media
        self._on_connect_failure = on_connect_failure
        self._loop = asyncio.get_running_loop()
        self._client: DriverClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ended = asyncio.Event()
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._settled = asyncio.Event()
        self._first_qr = asyncio.Event()
        self._qr_deadline: asyncio.TimerHandle | None = None
        self._qr_count = 0
        self.jid: str | None = None
        self.connected = False
        self.log = logging.getLogger(f"{__name__}.{session_id}")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, jid: str | None) -> None:
        self.jid = jid
        self._replay()
        self._task = asyncio.ensure_future(self._run())
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._ended.set()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error("session task crashed", exc_info=exc)
            self._status("failed", f"{type(exc).__name__}: {exc}")

    async def wait_ended(self) -> None:
        await self._ended.wait()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def _in_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _end(self) -> None:
        """The session can not go on: no more reconnects."""
        self._stopping = True
        self._wake.set()

    async def stop(self, timeout: float = 10.0) -> None:
        self._end()
        self._cancel_qr_deadline()
        await self._stop_client(timeout)
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._ended.wait()), timeout)
            if not self._task.done():
                self._task.cancel()
        self.spool.close()

    async def _stop_client(self, timeout: float) -> None:
        client = self._client
        if client is None:
            return
        self.connected = False
        try:
            await asyncio.wait_for(client.stop(), timeout)
        except Exception as exc:
            self.log.warning("stopping the client failed: %s", exc)

    def _status(self, status: str, detail: str = "", retry_in: float | None = None) -> None:
        self._send(
            ipc.SessionStatus(
                session_id=self.session_id,
                status=status,
                detail=detail,
                retry_in=retry_in,
            )
        )

    def _emit(
        self,
        seq: int,
        evs: list[events.DriverEvent],
        *,
        replayed: bool = False,
        arrived_at: float | None = None,
    ) -> None:
        self._send(
            ipc.EventFrame(
                session_id=self.session_id,
                seq=seq,
                events=evs,
                replayed=replayed,
                arrived_at=arrived_at,
            )
        )

    # -- the connect loop ---------------------------------------------------------------------

    def _new_client(self) -> DriverClient:
        jid = parse_jid(self.jid) if self.jid else None
        client = self._factory(self._store_url, jid=jid, uuid=self.key, new_device=self.jid is None)
        client.qr(self._on_qr)

        async def ignore(_client: Any, _event: Any) -> None:
            return None

        for code in SUBSCRIBED_CODES:
            client.event(INT_TO_EVENT[code])(ignore)
        # Our hook replaces neonize's dispatcher: spool first, then translate and forward.
        client.event.execute = self._make_hook(client)
        return client

    async def _run(self) -> None:
        self._status("starting")
        while not self._stopping:
            self._settled.clear()
            client = self._new_client()
            self._client = client
            self._status("connecting")
            async with self._connect_lock:
                task = await client.connect()
                settle = asyncio.ensure_future(self._settled.wait())
                await asyncio.wait(
                    {task, settle},
                    timeout=CONNECT_SETTLE_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                settle.cancel()
            try:
                await task
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected = False
                self._forget(client)
                if self._stopping:
                    break
                reason = str(exc) or type(exc).__name__
                kind = classify(reason)
                if kind == "credentials":
                    self._emit(0, [events.LoggedOut(reason=reason, on_connect=True)])
                    break
                if kind == "unknown" and self._backoff.attempt >= 10:
                    self._status("failed", reason)
                    break
                delay = self._backoff.next_delay()
                self.log.info("connect failed (%s); retrying in %.1fs", reason, delay)
                self._status("reconnecting", reason, retry_in=delay)
                if self._on_connect_failure is not None:
                    self._on_connect_failure()
                await self._sleep(delay)
                continue
            # The client's task ended without an error: it was stopped (by us or an event
            # that ends the session, e.g. logged out, banned, stream replaced).
            self._forget(client)
            break
        self._cancel_qr_deadline()
        self._status("stopped")

    async def _sleep(self, delay: float) -> None:
        """Wait out a backoff delay, or less when the session is being stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    def _forget(self, client: DriverClient) -> None:
        """Drop a finished client without letting its finalizer stop a newer one."""
        finalizer = getattr(client, "_stop_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        if self._client is client:
            self._client = None

    # -- events from Go -----------------------------------------------------------------------

    def _make_hook(self, client: DriverClient) -> Callable[[int, int, int, int], None]:
        def execute(uuid: int, binary: int, size: int, code: int) -> None:
            """Runs on the session's callback thread, one event at a time."""
            try:
                payload = ctypes.string_at(binary, size)
                if code == DEVICE_CODE:
                    client.me = INT_TO_EVENT[code].FromString(payload)
                    return
                arrived = time.time()
                seq = self.spool.append(code, payload) if code in DURABLE_CODES else 0
                self._loop.call_soon_threadsafe(self._dispatch, client, seq, code, payload, arrived)
            except Exception:
                self.log.exception("event hook failed (code %s)", code)

        return execute

    def _replay(self) -> None:
        pending = self.spool.unacked()
        if pending:
            self.log.info("replaying %d unacknowledged events", len(pending))
        for spooled in pending:
            evs = self._translate(spooled.code, spooled.payload)
            self._emit(spooled.seq, evs, replayed=True)

    def _translate(self, code: int, payload: bytes) -> list[events.DriverEvent]:
        event_type = INT_TO_EVENT.get(code)
        if event_type is None:
            return []
        try:
            return adapter.translate(event_type.FromString(payload))
        except Exception:
            self.log.exception("cannot translate event code %s", code)
            return []

    def _dispatch(
        self, client: DriverClient, seq: int, code: int, payload: bytes, arrived: float
    ) -> None:
        # Nothing is acted on before it is on disk; the first dispatch of a burst syncs the
        # whole burst, the others find nothing left to sync.
        self.spool.sync()
        if code == CONNECTED_CODE:
            client.connected = True
        evs = [self._with_identity(client, ev) for ev in self._translate(code, payload)]
        if code == PAIR_STATUS_CODE:
            device_jid = full_jid(INT_TO_EVENT[code].FromString(payload).ID)
            evs = [
                ev.model_copy(update={"jid": device_jid})
                if isinstance(ev, events.PairSuccess)
                else ev
                for ev in evs
            ]
        for ev in evs:
            self._observe(ev)
        if seq or evs:
            self._emit(seq, evs, arrived_at=arrived)

    @staticmethod
    def _with_identity(client: DriverClient, ev: events.DriverEvent) -> events.DriverEvent:
        """Connected carries no JID in neonize: take the device's own (with its device number,
        which resuming needs) from the `me` update that precedes it."""
        me = getattr(client, "me", None)
        if isinstance(ev, events.Connected) and me is not None and me.JID.User:
            return ev.model_copy(
                update={
                    "jid": full_jid(me.JID),
                    "lid": full_jid(me.LID) if me.LID.User else ev.lid,
                    "phone": me.JID.User,
                    "push_name": me.PushName or ev.push_name,
                }
            )
        return ev

    def _observe(self, ev: events.DriverEvent) -> None:
        """Local consequences of lifecycle events (the supervisor decides the state)."""
        if isinstance(ev, events.PairSuccess):
            self.jid = ev.jid
            self._cancel_qr_deadline()
            self._settled.set()
        elif isinstance(ev, events.Connected):
            self.connected = True
            if ev.jid:
                self.jid = ev.jid
            self._cancel_qr_deadline()
            self._backoff.up()
            self._settled.set()
        elif isinstance(ev, events.Disconnected):
            self.connected = False
        elif isinstance(ev, events.LoggedOut | events.StreamReplaced | events.TemporaryBan):
            # The session cannot go on: stop the client (no retry, no fight loop).
            self.connected = False
            self._end()
            self._in_background(self._stop_client(10.0))

    # -- QR -----------------------------------------------------------------------------------

    async def _on_qr(self, _client: Any, data: bytes) -> None:
        now = datetime.now(UTC)
        lifetime = self._qr_timing.first if self._qr_count == 0 else self._qr_timing.following
        self._qr_count += 1
        if self._qr_deadline is None and self._qr_count == 1:
            self._qr_deadline = self._loop.call_later(self._qr_timing.window, self._qr_expired)
        self._first_qr.set()
        self._settled.set()
        code = data.decode(errors="replace")
        self._emit(0, [events.QRCode(code=code, expires_at=now + timedelta(seconds=lifetime))])

    def _cancel_qr_deadline(self) -> None:
        if self._qr_deadline is not None:
            self._qr_deadline.cancel()
            self._qr_deadline = None

    def _qr_expired(self) -> None:
        self._qr_deadline = None
        self.log.info("pairing window over without a scan")
        self._status("qr_expired", "the QR code was not scanned in time")
        self._end()
        self._in_background(self._stop_client(5.0))

    # -- commands -----------------------------------------------------------------------------

    async def handle(self, command: Any) -> dict[str, Any]:
        if isinstance(command, ipc.PairPhone):
            return await self._pair_phone(command)
        client = self._client
        if client is None or not self.connected:
            raise CommandError("not_connected", "the session is not connected")
        if isinstance(command, ipc.SendText):
            return await self._send_text(client, command)
        if isinstance(command, ipc.SendMedia):
            return await self._send_media(client, command)
        if isinstance(command, ipc.DownloadMedia):
            return await self._download(client, command)
        if isinstance(command, ipc.GroupInfo):
            info = await client.get_group_info(parse_jid(command.group))
            return {
                "name": info.GroupName.Name or None,
                "participants": [
                    {
                        "jid": jid_str(p.JID) or None,
                        "lid": jid_str(p.LID) or None,
                        "phone": jid_str(p.PhoneNumber) or None,
                        "admin": bool(p.IsAdmin or p.IsSuperAdmin),
                    }
                    for p in info.Participants
                ],
            }
        if isinstance(command, ipc.ProfilePicture):
            picture = await client.get_profile_picture(parse_jid(command.jid))
            return {"url": picture.URL or None}
        if isinstance(command, ipc.ResolveLid):
            found = await client.get_pn_from_lid(parse_jid(command.lid))
            return {"phone_jid": jid_str(found) or None}
        if isinstance(command, ipc.React):
            msg = await client.build_reaction(
                parse_jid(command.chat),
                parse_jid(command.sender),
                command.message_id,
                command.emoji,
            )
            return _sent(await client.send_message(parse_jid(command.chat), msg))
        if isinstance(command, ipc.Revoke):
            return _sent(
                await client.revoke_message(
                    parse_jid(command.chat), parse_jid(command.sender), command.message_id
                )
            )
        if isinstance(command, ipc.Edit):
            return _sent(
                await client.edit_message(
                    parse_jid(command.chat),
                    command.message_id,
                    Message(conversation=command.text),
                )
            )
        if isinstance(command, ipc.MarkRead):
            await client.mark_read(
                *command.message_ids,
                chat=parse_jid(command.chat),
                sender=parse_jid(command.sender),
                receipt=ReceiptType.READ,
            )
            return {}
        if isinstance(command, ipc.ChatPresence):
            await client.send_chat_presence(
                parse_jid(command.chat),
                ChatPresence.CHAT_PRESENCE_COMPOSING
                if command.state == "composing"
                else ChatPresence.CHAT_PRESENCE_PAUSED,
                ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT,
            )
            return {}
        if isinstance(command, ipc.Logout):
            await client.logout()
            self._end()
            self.connected = False
            self._emit(0, [events.LoggedOut(reason="logged out by the operator")])
            await self._stop_client(10.0)
            return {}
        raise CommandError("invalid", f"unknown command {type(command).__name__}")

    async def _download(self, client: DriverClient, command: ipc.DownloadMedia) -> dict[str, Any]:
        if self.media.too_large(command.declared_size):
            return {
                "status": "too_large",
                "sha256": None,
                "size": command.declared_size,
                "mime": command.declared_mime,
            }
        message = json_format.ParseDict(command.message, Message(), ignore_unknown_fields=True)
        data = await client.download_any(message)
        if not isinstance(data, bytes | bytearray) or not data:
            raise CommandError("failed", "the download returned no bytes")
        stored = await asyncio.to_thread(self.media.put, bytes(data), command.declared_mime)
        return dataclasses.asdict(stored)

    async def _send_media(self, client: DriverClient, command: ipc.SendMedia) -> dict[str, Any]:
        data = await asyncio.to_thread(Path(command.path).read_bytes)
        to = parse_jid(command.to)
        caption = command.caption or None
        if command.kind == "image":
            response = await client.send_image(to, data, caption=caption)
        elif command.kind == "video":
            response = await client.send_video(to, data, caption=caption)
        elif command.kind in ("audio", "voice"):
            response = await client.send_audio(to, data, ptt=command.kind == "voice")
        elif command.kind == "sticker":
            response = await client.send_sticker(to, data, passthrough=True)
        else:
            response = await client.send_document(
                to,
                data,
                caption=caption,
                filename=command.filename,
                title=command.filename,
                mimetype=command.mime_type,
            )
        return _sent(response)

    async def _send_text(self, client: DriverClient, command: ipc.SendText) -> dict[str, Any]:
        if command.reply_to:
            context = ContextInfo(
                stanzaID=command.reply_to,
                participant=command.reply_to_sender or command.to,
                quotedMessage=Message(conversation=""),
            )
            message = Message(
                extendedTextMessage=ExtendedTextMessage(text=command.text, contextInfo=context)
            )
        else:
            message = Message(conversation=command.text)
        return _sent(await client.send_message(parse_jid(command.to), message))

    async def _pair_phone(self, command: ipc.PairPhone) -> dict[str, Any]:
        if self.jid is not None and self.connected:
            raise CommandError("invalid", "the session is already linked")
        try:
            await asyncio.wait_for(self._first_qr.wait(), CONNECT_SETTLE_SECONDS)
        except TimeoutError as exc:
            raise CommandError("not_connected", "the session is not ready to pair yet") from exc
        client = self._client
        if client is None:
            raise CommandError("not_connected", "the session is not running")
        code = await client.PairPhone(command.phone, show_push_notification=True)
        if len(code) == 8 and "-" not in code:
            code = f"{code[:4]}-{code[4:]}"
        self._emit(0, [events.PairCode(code=code)])
        return {"code": code}


def full_jid(jid: Any) -> str:
    """`user:device@server` (the form a device store is keyed by); `user@server` for device 0."""
    device = int(getattr(jid, "Device", 0) or 0)
    user = f"{jid.User}:{device}" if device else jid.User
    return f"{user}@{jid.Server}"


def _sent(response: Any) -> dict[str, Any]:
    """SendResponse -> the message id and time WhatsApp gave it."""
    stamp = int(getattr(response, "Timestamp", 0) or 0)
    when = datetime.fromtimestamp(stamp / 1000 if stamp > 10**11 else stamp, UTC) if stamp else None
    return {"id": str(getattr(response, "ID", "")), "timestamp": when.isoformat() if when else None}
