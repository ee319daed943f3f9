"""The fake WhatsApp's client half: stands in for neonize's `NewAClient` inside a real worker.

It has NewAClient's constructor and the methods `sessions.runtime` uses, keeps neonize's own
`Event` registry, and plays the Go side: every event is a real neonize protobuf, serialized and
handed to `client.event.execute(uuid, address, size, code)` through a ctypes buffer, exactly as
Go does. So the worker's spool hook, the adapter and everything above run unchanged.

The other half, `sessions.fake_server.FakeWhatsApp`, holds the phone's side in files. This
client polls it: the QR being scanned, a pairing code being entered, traffic queued for the
device (acknowledged only after `execute` returned, i.e. after the worker spooled it, so a
killed worker gets it again: WhatsApp's offline queue).
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import hashlib
import logging
import secrets
import time
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message as ProtoMessage
from neonize.aioze.events import Event, set_event_loop
from neonize.events import EVENT_TO_INT
from neonize.proto import Neonize_pb2 as neonize_pb
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as waE2E

from sessions import wa_proto as wp
from sessions.fake_server import DEFAULT_PUSH_NAME, FakeWhatsApp, FakeWhatsAppError, digits
from sessions.runtime import QrTiming

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05
RECONNECT_SECONDS = 0.3


class FakeSendError(Exception):
    """What neonize's SendMessageError would be."""


def _user_jid(phone_or_jid: str) -> str:
    if "@" in phone_or_jid:
        return phone_or_jid
    return f"{digits(phone_or_jid)}@s.whatsapp.net"


def _media(spec: dict[str, Any], kind: str) -> bytes:
    if spec.get("data_b64"):
        return base64.b64decode(spec["data_b64"])
    return wp.SAMPLE_BYTES["audio" if kind == "voice" else kind]


def build_content(spec: dict[str, Any], chat: str) -> waE2E.Message:
    """The waE2E.Message a phone would send for one simulated message."""
    kind = spec.get("type", "text")
    caption = spec.get("caption") or spec.get("text") or ""
    message: waE2E.Message
    if kind == "text":
        message = wp.text(spec.get("text", ""))
    elif kind == "link":
        body = spec.get("text", "")
        url = next((w for w in body.split() if w.startswith("http")), "")
        message = wp.extended_text(body, matched_text=url, title=spec.get("title", ""))
    elif kind == "image":
        message = wp.image(
            data=_media(spec, "image"), caption=caption, mimetype=spec.get("mime", "image/jpeg")
        )
    elif kind == "video":
        message = wp.video(
            data=_media(spec, "video"), caption=caption, mimetype=spec.get("mime", "video/mp4")
        )
    elif kind == "audio":
        message = wp.audio(data=_media(spec, "audio"), mimetype=spec.get("mime", "audio/mpeg"))
    elif kind == "voice":
        message = wp.voice_note(data=_media(spec, "voice"))
    elif kind == "document":
        message = wp.document(
            data=_media(spec, "document"),
            filename=spec.get("filename", "document.pdf"),
            mimetype=spec.get("mime", "application/pdf"),
        )
        if caption:
            message.documentMessage.caption = caption
            message = wp.document_with_caption(message)
    elif kind == "sticker":
        message = wp.sticker(data=_media(spec, "sticker"))
    elif kind == "location":
        message = wp.location(
            spec["lat"], spec["lng"], name=spec.get("name", ""), address=spec.get("address", "")
        )
    elif kind == "live_location":
        message = wp.live_location(spec["lat"], spec["lng"], caption=caption)
    elif kind == "contact":
        name, phone = spec["contacts"][0]
        message = wp.contact(name, phone)
    elif kind == "contacts":
        message = wp.contacts([tuple(c) for c in spec["contacts"]])
    elif kind == "poll":
        message = wp.poll(
            spec.get("text", "Poll"), spec["options"], selectable_count=spec.get("selectable", 1)
        )
    elif kind == "poll_vote":
        message = wp.poll_vote(
            spec["target_id"],
            chat=chat,
            selected=spec["options"],
            poll_from_me=spec.get("target_from_me", True),
        )
    elif kind == "reaction":
        message = wp.reaction(
            spec["target_id"],
            spec.get("emoji", ""),
            chat=chat,
            target_from_me=spec.get("target_from_me", False),
            target_sender=spec.get("target_sender"),
        )
    elif kind == "edit":
        message = wp.edit(spec["target_id"], wp.text(spec.get("text", "")), chat=chat)
    elif kind == "revoke":
        message = wp.revoke(
            spec["target_id"],
            chat=chat,
            target_from_me=spec.get("target_from_me", False),
            target_sender=spec.get("target_sender"),
        )
    else:
        message = wp.unknown(spec.get("text", "something new"))
    if spec.get("reply_to"):
        message = wp.reply(
            message,
            quoted_id=spec["reply_to"],
            quoted_sender=_user_jid(spec.get("reply_to_sender") or chat),
            quoted_message=wp.text(spec.get("quoted_text", "")),
        )
    if spec.get("view_once"):
        message = wp.view_once(message)
    if spec.get("ephemeral"):
        message = wp.ephemeral(message)
    return message


def build_message_event(spec: dict[str, Any], device: dict[str, Any]) -> Any:
    """A MessageEv for one simulated message, addressed as WhatsApp would address it."""
    sender_phone = _user_jid(spec.get("from") or device["phone"])
    from_me = bool(spec.get("from_me"))
    own = _user_jid(device["phone"])
    group = spec.get("group")
    if group:
        chat = group if "@" in group else f"{group}@g.us"
        sender = own if from_me else sender_phone
        sender_alt = recipient_alt = None
    elif spec.get("lid"):
        # LID addressing: chat and sender are the LID, the phone number rides in the alts
        # (unless WhatsApp left it out).
        lid = spec["lid"] if "@" in spec["lid"] else f"{spec['lid']}@lid"
        chat = lid
        sender = device.get("lid", own) if from_me else lid
        hide = bool(spec.get("lid_only"))
        sender_alt = None if (from_me or hide) else sender_phone
        recipient_alt = sender_phone if (from_me and not hide) else None
    else:
        chat = sender_phone if not from_me else _user_jid(spec.get("to") or sender_phone)
        sender = own if from_me else sender_phone
        sender_alt = recipient_alt = None
    edit_attr = wp.EDIT_MESSAGE if spec.get("type") == "edit" else ""
    if spec.get("type") == "revoke":
        edit_attr = wp.EDIT_SENDER_REVOKE
    return wp.message_event(
        id=spec.get("id") or f"3EB0{secrets.token_hex(8).upper()}",
        chat=chat,
        sender=sender,
        message=build_content(spec, chat),
        timestamp_ms=int(spec.get("ts") or time.time() * 1000),
        from_me=from_me,
        is_group=bool(group),
        push_name="" if from_me else spec.get("push_name", "Customer"),
        sender_alt=sender_alt,
        recipient_alt=recipient_alt,
        edit=edit_attr,
    )


def build_history_event(spec: dict[str, Any], device: dict[str, Any]) -> Any:
    conversations = []
    for conv in spec.get("conversations", []):
        chat = _user_jid(conv["chat"])
        webs = []
        for m in conv.get("messages", []):
            from_me = bool(m.get("from_me"))
            webs.append(
                wp.web_message(
                    id=m.get("id") or f"3EB0{secrets.token_hex(8).upper()}",
                    chat=chat,
                    message=build_content(m, chat),
                    timestamp_s=int((m.get("ts") or time.time() * 1000) // 1000),
                    from_me=from_me,
                    push_name="" if from_me else m.get("push_name", ""),
                )
            )
        conversations.append(wp.history_conversation(chat, webs, name=conv.get("name", "")))
    return wp.history_sync_event(
        conversations,
        chunk_order=int(spec.get("chunk_order", 1)),
        progress=int(spec.get("progress", 100)),
    )


class FakeClient:
    """NewAClient's shape, WhatsApp's behaviour, no network."""

    def __init__(
        self,
        name: str,
        jid: neonize_pb.JID | None = None,
        props: Any = None,
        uuid: str | None = None,
        new_device: bool = False,
        *,
        server: FakeWhatsApp,
        qr_timing: QrTiming,
    ) -> None:
        self.name = name
        self.jid = jid
        self.key = uuid or name
        self.uuid = self.key.encode()
        self.new_device = new_device
        self.server = server
        self.timing = qr_timing
        self.event = Event(self)  # neonize's own registry: handlers, qr callback, execute
        self.qr = self.event.qr
        self.connected = False
        self.me: Any = None
        self.connect_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._device: dict[str, Any] | None = None

    # -- the "Go side" ------------------------------------------------------------------------

    def _go(self, event: ProtoMessage) -> None:
        """Deliver one event as Go does: bytes in C memory, through event.execute."""
        data = event.SerializeToString()
        buffer = ctypes.create_string_buffer(data, len(data))
        self.event.execute(0, ctypes.addressof(buffer), len(data), EVENT_TO_INT[type(event)])

    async def connect(self) -> asyncio.Task[None]:
        loop = asyncio.get_running_loop()
        set_event_loop(loop)
        self._stop.clear()
        self.connect_task = loop.create_task(self._run())
        return self.connect_task

    async def _run(self) -> None:
        if self.jid is None:
            device = await self._pair()
            if device is None:
                await self._stop.wait()  # whatsmeow gives up on QR but the client lingers
                return
        else:
            device = self.server.device(self.key)
            if device is None or not device["linked"] or device["phone"] != self.jid.User:
                self._go(wp.logged_out_event(on_connect=True))
                return
            banned = device.get("banned_until")
            if banned and banned > time.time():
                self._go(wp.temporary_ban_event(expire_s=int(banned - time.time()) + 1))
                return
        self._device = device
        self._announce(device)
        await self._pump(device)

    def _announce(self, device: dict[str, Any]) -> None:
        self.me = neonize_pb.Device(
            JID=wp.parse_jid(device["jid"]),
            LID=wp.parse_jid(device["lid"]),
            Platform="android",
            BussinessName="",
            PushName=device.get("push_name", ""),
            Initialized=True,
        )
        self._go(self.me)
        self._go(wp.connected_event())
        self.connected = True

    async def _pair(self) -> dict[str, Any] | None:
        for index in range(self.timing.codes):
            parts = [secrets.token_urlsafe(24) for _ in range(4)]
            code = f"2@{parts[0]},{parts[1]},{parts[2]},{parts[3]}"
            self.server.show_qr(self.key, code)
            await self.event._qr(self, code.encode())
            lifetime = self.timing.first if index == 0 else self.timing.following
            deadline = time.monotonic() + lifetime
            while time.monotonic() < deadline:
                if self._stop.is_set():
                    return None
                linked = self._linked_by_phone()
                if linked is not None:
                    return linked
                await asyncio.sleep(POLL_SECONDS)
        self.server.clear_pairing(self.key)
        return None

    def _linked_by_phone(self) -> dict[str, Any] | None:
        state = self.server.pairing(self.key)
        scanned = state.get("scanned")
        request = state.get("pair_code") or {}
        if scanned and scanned.get("qr") == state.get("qr"):
            phone, push_name = scanned["phone"], scanned.get("push_name") or DEFAULT_PUSH_NAME
        elif request.get("entered"):
            phone, push_name = request["phone"], request.get("push_name") or DEFAULT_PUSH_NAME
        else:
            return None
        self.server.clear_pairing(self.key)
        device = self.server.link_device(self.key, phone, push_name)
        self._go(wp.pair_status_event(device["jid"]))
        return device

    async def _pump(self, device: dict[str, Any]) -> None:
        after = self.server.acked(self.key)
        offset = 0
        while not self._stop.is_set():
            items, offset = self.server.read_inbox(self.key, after, offset)
            for item in items:
                try:
                    ended = await self._deliver(item, device)
                except (ValueError, TypeError, KeyError) as exc:
                    # WhatsApp's servers would never hand this over: skip it, do not jam.
                    log.error("fake WhatsApp: item %s can not be delivered: %s", item["n"], exc)
                    ended = False
                after = item["n"]
                if ended:
                    self.server.ack(self.key, after)
                    return
            if items:
                self.server.ack(self.key, after)
            await asyncio.sleep(POLL_SECONDS)

    async def _deliver(self, item: dict[str, Any], device: dict[str, Any]) -> bool:
        """Hand one queued item to the client; True when it ends the connection."""
        kind = item.get("kind")
        if kind == "message":
            self._go(build_message_event(item, device))
        elif kind == "receipt":
            who = _user_jid(item.get("from") or device["phone"])
            self._go(
                wp.receipt_event(
                    chat=who,
                    sender=who,
                    message_ids=item["ids"],
                    timestamp_s=int(item.get("ts") or time.time()),
                    type=item.get("status", "read").upper(),
                )
            )
        elif kind == "history":
            self._go(build_history_event(item, device))
        elif kind == "presence":
            self._go(
                wp.presence_event(_user_jid(item["from"]), available=item.get("available", True))
            )
        elif kind == "disconnect":
            self.connected = False
            self._go(wp.disconnected_event())
            await asyncio.sleep(RECONNECT_SECONDS)  # whatsmeow reconnects by itself
            self._announce(device)
        elif kind == "logout":
            self.server.update_device(self.key, linked=False)
            self.connected = False
            self._go(wp.logged_out_event())
            return True
        elif kind == "ban":
            seconds = int(item.get("seconds", 3600))
            self.server.update_device(self.key, banned_until=time.time() + seconds)
            self.connected = False
            self._go(wp.temporary_ban_event(expire_s=seconds))
            return True
        elif kind == "stream_replaced":
            self.connected = False
            self._go(wp.stream_replaced_event())
            return True
        else:
            log.warning("fake WhatsApp: unknown item %r", kind)
        return False

    # -- what the worker calls ----------------------------------------------------------------

    async def stop(self) -> None:
        self._stop.set()
        self.connected = False
        task = self.connect_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            await asyncio.wait({task}, timeout=5)

    async def disconnect(self) -> None:
        self.connected = False

    async def logout(self) -> None:
        self.server.update_device(self.key, linked=False)
        self.connected = False

    async def PairPhone(
        self, phone: str, show_push_notification: bool, *args: Any, **kwargs: Any
    ) -> str:
        if not digits(phone):
            raise FakeWhatsAppError("invalid phone number")
        return self.server.request_pair_code(self.key, phone)

    def _record(self, to: Any, message: waE2E.Message) -> neonize_pb.SendResponse:
        if not self.connected:
            raise FakeSendError("not connected")
        message_id = f"3EB0{secrets.token_hex(8).upper()}"
        stamp = int(time.time())
        target = wp.jid_str(to) if not isinstance(to, str) else _user_jid(to)
        self.server.record_sent(
            self.key,
            {"id": message_id, "to": target, "ts": stamp, "message": MessageToDict(message)},
        )
        return neonize_pb.SendResponse(Timestamp=stamp, ID=message_id, ServerID=0)

    async def send_message(self, to: Any, message: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(message, str):
            message = wp.text(message)
        return self._record(to, message)

    def _record_media(
        self, to: Any, kind: str, file: bytes, **details: Any
    ) -> neonize_pb.SendResponse:
        if not self.connected:
            raise FakeSendError("not connected")
        message_id = f"3EB0{secrets.token_hex(8).upper()}"
        stamp = int(time.time())
        self.server.record_sent(
            self.key,
            {
                "id": message_id,
                "to": wp.jid_str(to),
                "ts": stamp,
                "media": kind,
                "sha256": hashlib.sha256(file).hexdigest(),
                "size": len(file),
                **{k: v for k, v in details.items() if v is not None},
            },
        )
        return neonize_pb.SendResponse(Timestamp=stamp, ID=message_id, ServerID=0)

    async def send_image(self, to: Any, file: bytes, caption: str | None = None, **_: Any) -> Any:
        return self._record_media(to, "image", file, caption=caption)

    async def send_video(self, to: Any, file: bytes, caption: str | None = None, **_: Any) -> Any:
        return self._record_media(to, "video", file, caption=caption)

    async def send_audio(self, to: Any, file: bytes, ptt: bool = False, **_: Any) -> Any:
        return self._record_media(to, "voice" if ptt else "audio", file)

    async def send_sticker(self, to: Any, file: bytes, **_: Any) -> Any:
        return self._record_media(to, "sticker", file)

    async def send_document(
        self,
        to: Any,
        file: bytes,
        caption: str | None = None,
        title: str | None = None,
        filename: str | None = None,
        mimetype: str | None = None,
        **_: Any,
    ) -> Any:
        return self._record_media(
            to, "document", file, caption=caption, filename=filename, mimetype=mimetype
        )

    async def build_reaction(self, chat: Any, sender: Any, message_id: str, reaction: str) -> Any:
        return wp.reaction(
            message_id,
            reaction,
            chat=chat,
            target_sender=sender,
            target_from_me=wp.jid_str(sender) == wp.jid_str(self.me.JID),
        )

    async def revoke_message(self, chat: Any, sender: Any, message_id: str) -> Any:
        return self._record(chat, wp.revoke(message_id, chat=chat, target_from_me=True))

    async def edit_message(self, chat: Any, message_id: str, new_message: Any) -> Any:
        return self._record(chat, wp.edit(message_id, new_message, chat=chat))

    async def download_any(self, message: waE2E.Message, path: str | None = None) -> bytes:
        for _field, part in message.ListFields():
            digest = getattr(part, "fileSHA256", b"")
            if digest:
                return self.server.download(digest.hex())
        raise FakeSendError("no media in this message")

    async def get_group_info(self, jid: Any) -> neonize_pb.GroupInfo:
        if not self.connected:
            raise FakeSendError("not connected")
        group = self.server.group(jid.User)
        if group is None:
            raise FakeSendError("group not found")
        participants = [
            neonize_pb.GroupParticipant(
                JID=wp.parse_jid(f"{m}@s.whatsapp.net"),
                PhoneNumber=wp.parse_jid(f"{m}@s.whatsapp.net"),
                LID=wp.empty_jid(),
                IsAdmin=index == 0,
                IsSuperAdmin=index == 0,
                DisplayName="",
                Error=0,
            )
            for index, m in enumerate(group["members"])
        ]
        return neonize_pb.GroupInfo(
            JID=jid,
            GroupName=neonize_pb.GroupName(
                Name=group["name"], NameSetAt=0, NameSetBy=wp.empty_jid()
            ),
            Participants=participants,
        )

    async def get_profile_picture(self, jid: Any) -> neonize_pb.ProfilePictureInfo:
        if not self.connected:
            raise FakeSendError("not connected")
        return neonize_pb.ProfilePictureInfo(
            URL=f"https://pps.whatsapp.net/v/fake/{jid.User}.jpg",
            ID=jid.User,
            Type="image",
            DirectPath=f"/v/fake/{jid.User}.jpg",
            Hash=b"",
        )

    async def get_pn_from_lid(self, jid: Any) -> neonize_pb.JID:
        if not self.connected:
            raise FakeSendError("not connected")
        phone = self.server.phone_for_lid(jid.User)
        return wp.parse_jid(f"{phone}@s.whatsapp.net") if phone else wp.empty_jid()

    async def send_chat_presence(self, jid: Any, state: Any, media: Any) -> None:
        if not self.connected:
            raise FakeSendError("not connected")
        composing = getattr(state, "name", str(state)).endswith("COMPOSING")
        self.server.record_sent(
            self.key,
            {
                "presence": "composing" if composing else "paused",
                "chat": wp.jid_str(jid),
                "ts": int(time.time()),
            },
        )

    async def mark_read(
        self, *message_ids: str, chat: Any, sender: Any, receipt: Any, timestamp: int | None = None
    ) -> None:
        if not self.connected:
            raise FakeSendError("not connected")
        self.server.record_sent(
            self.key, {"read": list(message_ids), "chat": wp.jid_str(chat), "ts": int(time.time())}
        )
