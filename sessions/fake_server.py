"""The fake WhatsApp's "server side": phones, linked devices and their pending traffic, as files.

The fake WhatsApp (`WAGATE_DRIVER=fake`) has two halves. The client half
(`sessions.fake_client`) stands in for neonize's client object inside a real worker process and
emits real neonize protobuf events. This half plays WhatsApp's servers and the user's phone: it
lives in files under `DATA_DIR/fake-wa/` so that it survives a worker being killed (WhatsApp
keeps undelivered traffic for a device that is offline) and so that tests, `run.py sim` and the
`/sim` page can act as the phone from another process. It never imports neonize.

Per client key (the `uuid` the worker gives the client, `wagate-<session id>`):
  pairing/<key>.json   the QR codes the device shows, who scanned, a pairing-code request
  devices/<key>.json   the linked device: jid, phone, push name, linked, banned until
  inbox/<key>.jsonl    traffic for the device, in order, each item with an `n` (1, 2, ...)
  inbox/<key>.acked    the highest `n` the device acknowledged (redelivery starts after it)
  sent/<key>.jsonl     what the device sent (messages, reactions, ...), for tests to read
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_PUSH_NAME = "Fake Phone"

# Small files with the right magic bytes, for media sent without any.
SAMPLE_MEDIA = {
    "image": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01wagate sample image",
    "sticker": b"RIFF\x24\x00\x00\x00WEBPVP8 wagate sample sticker",
    "video": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isomwagate sample video",
    "audio": b"ID3\x04\x00\x00\x00\x00\x00\x00wagate sample audio",
    "voice": b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00wagate sample voice note",
    "document": b"%PDF-1.4\nwagate sample document\n%%EOF\n",
}
MEDIA_TYPES = frozenset(SAMPLE_MEDIA)


class FakeWhatsAppError(Exception):
    """A phone action that makes no sense now (no QR to scan, wrong code, ...)."""


def session_key(session_id: int) -> str:
    return f"wagate-{session_id}"


def default_phone(session_id: int) -> str:
    return f"52155{session_id:08d}"


def digits(phone: str) -> str:
    return "".join(ch for ch in phone if ch.isdigit())


class FakeWhatsApp:
    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("pairing", "devices", "inbox", "sent", "locks", "media"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # -- files --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        with (self.root / "locks" / f"{key}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_json(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_json(self, path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    # -- pairing (device side writes QR codes; phone side scans) ------------------------------

    def pairing(self, key: str) -> dict[str, Any]:
        return self._read_json(self.root / "pairing" / f"{key}.json") or {}

    def show_qr(self, key: str, code: str) -> None:
        """The device displays `code` (each rotation replaces the previous one)."""
        with self._locked(key):
            state = self.pairing(key)
            state.update(qr=code, qr_at=time.time(), scanned=None)
            self._write_json(self.root / "pairing" / f"{key}.json", state)

    def clear_pairing(self, key: str) -> None:
        with self._locked(key):
            (self.root / "pairing" / f"{key}.json").unlink(missing_ok=True)

    def scan(self, key: str, *, qr: str | None = None, phone: str, push_name: str) -> None:
        """The phone scans the QR the device shows (its payload must be the current one)."""
        with self._locked(key):
            state = self.pairing(key)
            current = state.get("qr")
            if not current:
                raise FakeWhatsAppError("this session shows no QR code right now")
            if qr is not None and qr != current:
                raise FakeWhatsAppError("that QR code is not the one the session shows now")
            state["scanned"] = {"phone": digits(phone), "push_name": push_name, "qr": current}
            self._write_json(self.root / "pairing" / f"{key}.json", state)

    def request_pair_code(self, key: str, phone: str) -> str:
        """The device asks to link by phone number; returns the 8-character code."""
        alphabet = string.ascii_uppercase + string.digits
        code = "".join(secrets.choice(alphabet) for _ in range(8))
        with self._locked(key):
            state = self.pairing(key)
            state["pair_code"] = {"phone": digits(phone), "code": code, "entered": False}
            self._write_json(self.root / "pairing" / f"{key}.json", state)
        return f"{code[:4]}-{code[4:]}"

    def enter_pair_code(self, key: str, code: str, *, push_name: str) -> None:
        """The phone's user types the code shown in the browser."""
        with self._locked(key):
            state = self.pairing(key)
            request = state.get("pair_code")
            if not request:
                raise FakeWhatsAppError("this session asked for no pairing code")
            if code.replace("-", "").upper() != request["code"]:
                raise FakeWhatsAppError("wrong pairing code")
            request["entered"] = True
            request["push_name"] = push_name
            self._write_json(self.root / "pairing" / f"{key}.json", state)

    # -- devices ------------------------------------------------------------------------------

    def device(self, key: str) -> dict[str, Any] | None:
        return self._read_json(self.root / "devices" / f"{key}.json")

    def link_device(self, key: str, phone: str, push_name: str) -> dict[str, Any]:
        device_no = secrets.randbelow(60) + 2
        user = digits(phone)
        record = {
            "jid": f"{user}:{device_no}@s.whatsapp.net",
            "phone": user,
            "lid": f"{int(user) % 10**12 + 10**14}:{device_no}@lid",
            "push_name": push_name,
            "linked": True,
            "banned_until": None,
        }
        with self._locked(key):
            self._write_json(self.root / "devices" / f"{key}.json", record)
            # A new device starts with an empty inbox.
            (self.root / "inbox" / f"{key}.jsonl").unlink(missing_ok=True)
            (self.root / "inbox" / f"{key}.acked").unlink(missing_ok=True)
        return record

    def update_device(self, key: str, **changes: Any) -> None:
        with self._locked(key):
            record = self.device(key)
            if record is None:
                raise FakeWhatsAppError("no device is linked for this session")
            record.update(changes)
            self._write_json(self.root / "devices" / f"{key}.json", record)

    # -- traffic to the device ----------------------------------------------------------------

    def push(self, key: str, *items: dict[str, Any]) -> list[int]:
        """Queue traffic for the device (messages, receipts, control); returns their numbers."""
        path = self.root / "inbox" / f"{key}.jsonl"
        with self._locked(key):
            last = self._last_number(path)
            numbers = []
            lines = []
            for offset, item in enumerate(items, start=1):
                numbers.append(last + offset)
                lines.append(json.dumps({**item, "n": last + offset}))
            with path.open("a", encoding="utf-8") as handle:
                handle.write("".join(line + "\n" for line in lines))
            self._set_last_number(path, last + len(items))
        return numbers

    def _last_number(self, path: Path) -> int:
        counter = path.with_suffix(".count")
        try:
            last = int(counter.read_text())
        except (OSError, ValueError):
            last = 0
        return last

    def _set_last_number(self, path: Path, value: int) -> None:
        path.with_suffix(".count").write_text(str(value))

    def read_inbox(self, key: str, after: int, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Items numbered above `after`, reading from byte `offset`; returns the new offset."""
        path = self.root / "inbox" / f"{key}.jsonl"
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except OSError:
            return [], offset
        end = data.rfind(b"\n") + 1  # never read a half-written line
        items = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
        return [item for item in items if item["n"] > after], offset + end

    def acked(self, key: str) -> int:
        try:
            return int((self.root / "inbox" / f"{key}.acked").read_text())
        except (OSError, ValueError):
            return 0

    def ack(self, key: str, n: int) -> None:
        path = self.root / "inbox" / f"{key}.acked"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(str(n))
        os.replace(tmp, path)

    # -- media on WhatsApp's servers and the LID directory -------------------------------------

    def upload(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / "media" / digest
        if not path.exists():
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return digest

    def download(self, sha256_hex: str) -> bytes:
        try:
            return (self.root / "media" / sha256_hex).read_bytes()
        except OSError:
            raise FakeWhatsAppError("media not found on the server (expired?)") from None

    def map_lid(self, lid: str, phone: str) -> None:
        with self._locked("lids"):
            mapping = self._read_json(self.root / "lids.json") or {}
            mapping[lid] = phone
            self._write_json(self.root / "lids.json", mapping)

    def define_group(self, group: str, name: str, members: list[str]) -> None:
        with self._locked("groups"):
            groups = self._read_json(self.root / "groups.json") or {}
            groups[group] = {"name": name, "members": [digits(m) for m in members]}
            self._write_json(self.root / "groups.json", groups)

    def group(self, group: str) -> dict[str, Any] | None:
        found = (self._read_json(self.root / "groups.json") or {}).get(group)
        return dict(found) if isinstance(found, dict) else None

    def phone_for_lid(self, lid: str) -> str | None:
        mapping = self._read_json(self.root / "lids.json") or {}
        value = mapping.get(lid)
        return str(value) if value else None

    # -- traffic from the device --------------------------------------------------------------

    def record_sent(self, key: str, item: dict[str, Any]) -> None:
        with self._locked(key), (self.root / "sent" / f"{key}.jsonl").open("a") as handle:
            handle.write(json.dumps(item) + "\n")

    def sent(self, key: str) -> list[dict[str, Any]]:
        try:
            lines = (self.root / "sent" / f"{key}.jsonl").read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]


# -- what the simulated phone can do (validated; used by tests, `run.py sim` and /sim) -----------

SimType = Literal[
    "text",
    "link",
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
    "unknown",
]


class SimMessage(BaseModel):
    """A message the phone's contact (or the owner, `from_me`) sends to the linked account."""

    model_config = ConfigDict(extra="forbid")

    type: SimType = "text"
    id: str | None = Field(default=None, max_length=64, description="WhatsApp id; generated")
    from_: str | None = Field(
        default=None, alias="from", description="Sender's phone number (+5215512345678)"
    )
    to: str | None = Field(default=None, description="With from_me: the recipient's number")
    from_me: bool = False
    group: str | None = Field(default=None, description="Group id (123-456 or 123-456@g.us)")
    lid: str | None = Field(default=None, description="Address the sender by this LID")
    push_name: str | None = None
    text: str | None = Field(default=None, max_length=65536)
    caption: str | None = None
    filename: str | None = None
    mime: str | None = None
    data_b64: str | None = Field(default=None, description="Media bytes, base64")
    lat: float | None = None
    lng: float | None = None
    name: str | None = None
    address: str | None = None
    contacts: list[tuple[str, str]] | None = None
    options: list[str] | None = None
    selectable: int | None = Field(default=None, ge=0, le=1000)
    target_id: str | None = None
    target_from_me: bool | None = None
    emoji: str | None = None
    reply_to: str | None = None
    reply_to_sender: str | None = None
    quoted_text: str | None = None
    view_once: bool = False
    ephemeral: bool = False
    ts: int | None = Field(default=None, ge=0, le=2**53, description="Milliseconds since the epoch")
    lid_only: bool = Field(
        default=False, description="With lid: WhatsApp gives no phone number beside the LID"
    )
    media_unavailable: bool = Field(
        default=False, description="The attachment can not be downloaded (expired on the server)"
    )

    @model_validator(mode="after")
    def _complete(self) -> SimMessage:
        needs = {
            "location": ("lat", "lng"),
            "live_location": ("lat", "lng"),
            "contact": ("contacts",),
            "contacts": ("contacts",),
            "poll": ("options",),
            "poll_vote": ("target_id", "options"),
            "reaction": ("target_id",),
            "edit": ("target_id", "text"),
            "revoke": ("target_id",),
        }
        missing = [f for f in needs.get(self.type, ()) if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.type} message needs {', '.join(missing)}")
        if self.from_ is not None and not digits(self.from_):
            raise ValueError("`from` must be a phone number")
        return self

    def spec(self) -> dict[str, Any]:
        data = self.model_dump(by_alias=True, exclude_none=True)
        data["kind"] = "message"
        data["id"] = self.id or f"3EB0{secrets.token_hex(8).upper()}"
        if self.from_ is not None:
            data["from"] = digits(self.from_)
        return data


class SimReceipt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1)
    status: Literal["delivered", "read", "played"] = "read"
    from_: str | None = Field(default=None, alias="from")


class SimHistoryConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chat: str
    name: str | None = None
    messages: list[SimMessage] = Field(default_factory=list)


class SimHistory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chunk_order: int = Field(default=1, ge=0, le=2**31 - 1)
    progress: int = Field(default=100, ge=0, le=100)
    conversations: list[SimHistoryConversation] = Field(default_factory=list)


class Phone:
    """The simulated phone of one session: every action the issue names."""

    def __init__(self, server: FakeWhatsApp, session_id: int) -> None:
        self.server = server
        self.session_id = session_id
        self.key = session_key(session_id)

    def scan(
        self, *, phone: str | None = None, push_name: str | None = None, qr: str | None = None
    ) -> None:
        self.server.scan(
            self.key,
            qr=qr,
            phone=phone or default_phone(self.session_id),
            push_name=push_name or DEFAULT_PUSH_NAME,
        )

    def enter_code(self, code: str, *, push_name: str | None = None) -> None:
        self.server.enter_pair_code(self.key, code, push_name=push_name or DEFAULT_PUSH_NAME)

    def _with_media(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Put the attachment on the fake media server (unless it should fail to download)."""
        if spec.get("type") not in MEDIA_TYPES:
            return spec
        if not spec.get("data_b64"):
            spec["data_b64"] = base64.b64encode(SAMPLE_MEDIA[spec["type"]]).decode()
        if not spec.get("media_unavailable"):
            self.server.upload(base64.b64decode(spec["data_b64"]))
        return spec

    def send(self, *messages: SimMessage) -> list[str]:
        specs = [self._with_media(m.spec()) for m in messages]
        for spec in specs:
            if spec.get("lid") and spec.get("from"):
                self.server.map_lid(spec["lid"].split("@")[0], spec["from"])
        self.server.push(self.key, *specs)
        return [s["id"] for s in specs]

    def receipt(self, receipt: SimReceipt) -> None:
        data = receipt.model_dump(by_alias=True, exclude_none=True)
        if "from" in data:
            data["from"] = digits(data["from"])
        self.server.push(self.key, {"kind": "receipt", **data})

    def history(self, history: SimHistory) -> list[str]:
        spec: dict[str, Any] = {
            "kind": "history",
            "chunk_order": history.chunk_order,
            "progress": history.progress,
            "conversations": [],
        }
        ids: list[str] = []
        for conv in history.conversations:
            messages = [self._with_media(m.spec()) for m in conv.messages]
            ids.extend(m["id"] for m in messages)
            spec["conversations"].append(
                {"chat": conv.chat, "name": conv.name or "", "messages": messages}
            )
        self.server.push(self.key, spec)
        return ids

    def control(
        self, kind: Literal["disconnect", "logout", "ban", "stream_replaced"], seconds: int = 3600
    ) -> None:
        item: dict[str, Any] = {"kind": kind}
        if kind == "ban":
            item["seconds"] = seconds
        self.server.push(self.key, item)

    def sent(self) -> list[dict[str, Any]]:
        return self.server.sent(self.key)

    def create_group(self, group: str, name: str, members: list[str]) -> str:
        """A group the account is in (its id without @g.us); members are phone numbers."""
        self.server.define_group(group, name, members)
        return group

    def current_qr(self) -> str | None:
        qr = self.server.pairing(self.key).get("qr")
        return str(qr) if qr else None
