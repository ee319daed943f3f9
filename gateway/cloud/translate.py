"""Cloud API webhook payloads -> wagate's own event types (`sessions.events`).

The same types the WhatsApp Web adapter produces, so `sessions.store` stores both channels
identically: a chat is `<wa_id>@s.whatsapp.net`, a message keeps its `wamid` as its WhatsApp
id, what the business typed on the Business app (Coexistence echoes) is `from_me`. Unknown keys
are tolerated everywhere and every message keeps its payload in `raw`; a type we do not know is
stored as `unsupported` with that payload, never dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sessions import events

WA_SERVER = "s.whatsapp.net"
MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")


def jid(number: Any) -> str:
    digits = "".join(c for c in str(number) if c.isdigit())
    return f"{digits or number}@{WA_SERVER}"


def when(value: Any) -> datetime:
    """Meta's timestamps are seconds since the epoch, as strings."""
    try:
        return datetime.fromtimestamp(int(str(value)), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(UTC)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Status:
    wa_message_id: str
    status: str
    at: datetime
    recipient: str | None
    error_code: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class ContactSync:
    action: str  # add (also renames) | remove
    phone: str
    full_name: str | None
    at: datetime


@dataclass(frozen=True)
class HistoryError:
    code: int | None
    message: str


@dataclass(frozen=True)
class TemplateUpdate:
    """`message_template_status_update`: Meta approved, rejected, paused, ... a template."""

    template_id: str | None
    name: str | None
    language: str | None
    status: str
    reason: str | None


@dataclass
class Change:
    """What one `changes[]` item of a webhook says, for one phone number id (or, for account
    level fields such as template status updates, for one WhatsApp Business Account)."""

    phone_number_id: str | None
    display_phone_number: str | None
    kind: str  # the change's `field`: messages, smb_message_echoes, history, ...
    waba_id: str | None = None
    messages: list[events.WaMessage] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    contacts: list[ContactSync] = field(default_factory=list)
    history: list[events.HistoryChunk] = field(default_factory=list)
    history_errors: list[HistoryError] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    templates: list[TemplateUpdate] = field(default_factory=list)


def changes_of(payload: dict[str, Any]) -> Iterator[Change]:
    for entry in payload.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        waba = _str(entry.get("id"))
        for change in entry.get("changes") or []:
            if isinstance(change, dict) and isinstance(change.get("value"), dict):
                yield _change(str(change.get("field") or "messages"), change["value"], waba)


def phone_number_ids(payload: dict[str, Any]) -> list[str]:
    found = []
    for entry in payload.get("entry") or []:
        for change in (entry or {}).get("changes") or [] if isinstance(entry, dict) else []:
            value = change.get("value") if isinstance(change, dict) else None
            meta = value.get("metadata") if isinstance(value, dict) else None
            if isinstance(meta, dict) and meta.get("phone_number_id"):
                found.append(str(meta["phone_number_id"]))
    return found


def waba_ids(payload: dict[str, Any]) -> list[str]:
    """The account ids (`entry[].id`) of entries whose changes name no phone number id
    (account-level fields: template status updates, ...)."""
    found = []
    for entry in payload.get("entry") or []:
        if not isinstance(entry, dict) or not entry.get("id"):
            continue
        for change in entry.get("changes") or []:
            value = change.get("value") if isinstance(change, dict) else None
            meta = value.get("metadata") if isinstance(value, dict) else None
            if not (isinstance(meta, dict) and meta.get("phone_number_id")):
                found.append(str(entry["id"]))
                break
    return found


def oldest_timestamp(payload: dict[str, Any]) -> datetime:
    """When the oldest event of a payload happened (orders processing); now when none says."""
    stamps: list[int] = []
    for entry in payload.get("entry") or []:
        for change in (entry or {}).get("changes") or [] if isinstance(entry, dict) else []:
            value = change.get("value") if isinstance(change, dict) else None
            if not isinstance(value, dict):
                continue
            for key in ("messages", "statuses", "message_echoes"):
                for item in value.get(key) or []:
                    if isinstance(item, dict):
                        with contextlib.suppress(TypeError, ValueError):
                            stamps.append(int(str(item.get("timestamp"))))
    if not stamps:
        return datetime.now(UTC)
    return when(min(stamps))


def _change(name: str, value: dict[str, Any], waba_id: str | None = None) -> Change:
    meta = _dict(value.get("metadata"))
    out = Change(
        phone_number_id=_str(meta.get("phone_number_id")),
        display_phone_number=_str(meta.get("display_phone_number")),
        kind=name,
        waba_id=waba_id,
    )
    if name == "message_template_status_update" and value.get("event"):
        reason = _str(value.get("reason") or _dict(value.get("other_info")).get("description"))
        out.templates.append(
            TemplateUpdate(
                template_id=_str(value.get("message_template_id")),
                name=_str(value.get("message_template_name")),
                # Meta writes `en-US` here and `en_US` in the template list.
                language=str(value.get("message_template_language") or "").replace("-", "_")
                or None,
                status=str(value["event"]).upper(),
                reason=None if reason in (None, "", "NONE") else reason,
            )
        )
    business = jid(out.display_phone_number) if out.display_phone_number else None
    names = {}
    for contact in value.get("contacts") or []:
        if isinstance(contact, dict) and contact.get("wa_id"):
            profile = _dict(contact.get("profile"))
            names[str(contact["wa_id"])] = _str(profile.get("name"))
    for item in value.get("messages") or []:
        if isinstance(item, dict) and item.get("id"):
            sender = str(item.get("from") or "")
            out.messages.append(
                message(item, chat=jid(sender), sender=jid(sender), push_name=names.get(sender))
            )
    for item in value.get("message_echoes") or []:
        if isinstance(item, dict) and item.get("id"):
            me = jid(item.get("from")) if item.get("from") else (business or "")
            out.messages.append(
                message(item, chat=jid(item.get("to") or ""), sender=me, from_me=True)
            )
    for item in value.get("statuses") or []:
        if isinstance(item, dict) and item.get("id") and item.get("status"):
            out.statuses.append(_status(item))
    for item in value.get("state_sync") or []:
        if isinstance(item, dict) and item.get("type", "contact") == "contact":
            contact = _dict(item.get("contact"))
            phone = contact.get("phone_number") or contact.get("wa_id")
            if phone:
                meta_ts = _dict(item.get("metadata"))
                out.contacts.append(
                    ContactSync(
                        action=str(item.get("action") or "add"),
                        phone="".join(c for c in str(phone) if c.isdigit()),
                        full_name=_str(contact.get("full_name") or contact.get("first_name")),
                        at=when(meta_ts.get("timestamp")),
                    )
                )
    for item in value.get("history") or []:
        if not isinstance(item, dict):
            continue
        for error in item.get("errors") or []:
            if isinstance(error, dict):
                out.history_errors.append(_history_error(error))
        if item.get("threads") is not None or item.get("metadata") is not None:
            out.history.append(_history(item, business))
    for error in value.get("errors") or []:
        if isinstance(error, dict):
            if name == "history":
                out.history_errors.append(_history_error(error))
            else:
                out.errors.append(error)
    return out


def _history_error(error: dict[str, Any]) -> HistoryError:
    data = _dict(error.get("error_data"))
    text = str(error.get("message") or error.get("title") or "history sharing failed")
    if data.get("details"):
        text = f"{text}: {data['details']}"
    code = error.get("code")
    return HistoryError(
        int(code) if isinstance(code, int | str) and str(code).isdigit() else None, text
    )


def _history(item: dict[str, Any], business: str | None) -> events.HistoryChunk:
    meta = _dict(item.get("metadata"))
    conversations = []
    for thread in item.get("threads") or []:
        if not isinstance(thread, dict) or not thread.get("id"):
            continue
        chat = jid(thread["id"])
        messages = []
        for msg in thread.get("messages") or []:
            if not isinstance(msg, dict) or not msg.get("id"):
                continue
            sender = str(msg.get("from") or "")
            mine = bool(msg.get("to")) and jid(sender) != chat
            messages.append(
                message(
                    msg,
                    chat=chat,
                    sender=(business or jid(sender)) if mine else chat,
                    from_me=mine,
                )
            )
        conversations.append(events.HistoryConversation(chat=chat, messages=messages))
    phase = meta.get("phase", 0)
    return events.HistoryChunk(
        sync_type=f"cloud_phase_{phase}",
        chunk_order=_int(meta.get("chunk_order")),
        progress=max(0, min(100, _int(meta.get("progress")))),
        conversations=conversations,
    )


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def error_text(error: dict[str, Any]) -> tuple[str, int | None]:
    """Meta's `{code, title, message, error_data: {details}}` as `(code) title: details`."""
    try:
        code: int | None = int(error["code"])
    except (KeyError, TypeError, ValueError):
        code = None
    data = _dict(error.get("error_data"))
    parts = [str(error.get("title") or error.get("message") or "failed")]
    if data.get("details"):
        parts.append(str(data["details"]))
    text = ": ".join(parts)
    return (f"({code}) {text}" if code is not None else text), code


def _status(item: dict[str, Any]) -> Status:
    code: int | None = None
    error: str | None = None
    errors = item.get("errors") or []
    if errors and isinstance(errors[0], dict):
        error, code = error_text(errors[0])
    return Status(
        wa_message_id=str(item["id"]),
        status=str(item["status"]),
        at=when(item.get("timestamp")),
        recipient=_str(item.get("recipient_id")),
        error_code=code,
        error=error,
    )


def _media(kind: str, body: dict[str, Any]) -> events.MediaInfo:
    sha = body.get("sha256")
    return events.MediaInfo(
        mime_type=_str(body.get("mime_type")),
        # Meta gives a base64 digest; the store keeps hex digests of the bytes it wrote, so it
        # is set when the file is stored.
        file_sha256=None,
        filename=_str(body.get("filename")),
        download={"media_id": str(body.get("id") or ""), "declared_sha256": str(sha or "")},
    )


def _vcard(card: dict[str, Any]) -> tuple[str | None, str]:
    name = _dict(card.get("name"))
    formatted = _str(name.get("formatted_name") or name.get("first_name"))
    lines = ["BEGIN:VCARD", "VERSION:3.0", f"FN:{formatted or ''}"]
    for phone in card.get("phones") or []:
        if isinstance(phone, dict) and phone.get("phone"):
            wa = f";waid={phone['wa_id']}" if phone.get("wa_id") else ""
            lines.append(f"TEL;type={phone.get('type') or 'CELL'}{wa}:{phone['phone']}")
    for email in card.get("emails") or []:
        if isinstance(email, dict) and email.get("email"):
            lines.append(f"EMAIL:{email['email']}")
    lines.append("END:VCARD")
    return formatted, "\n".join(lines)


def message(
    item: dict[str, Any],
    *,
    chat: str,
    sender: str,
    from_me: bool = False,
    push_name: str | None = None,
) -> events.WaMessage:
    """One Cloud API message (inbound, echo or history) as a `WaMessage`."""
    kind = str(item.get("type") or "unsupported")
    body = _dict(item.get(kind))
    context = _dict(item.get("context"))
    fields: dict[str, Any] = {
        "id": str(item["id"]),
        "chat": chat,
        "sender": sender,
        "from_me": from_me,
        "push_name": push_name,
        "timestamp": when(item.get("timestamp")),
        "quoted_id": _str(context.get("id")) if context.get("id") else None,
        "quoted_sender": jid(context["from"]) if context.get("from") else None,
        "forwarded": bool(context.get("forwarded") or context.get("frequently_forwarded")),
        "raw": item,
    }
    if kind == "text":
        fields.update(type="text", text=_str(body.get("body")))
    elif kind in MEDIA_KINDS:
        media_type = "voice" if kind == "audio" and body.get("voice") else kind
        fields.update(type=media_type, text=_str(body.get("caption")), media=_media(kind, body))
    elif kind == "location":
        try:
            location = events.Location(
                latitude=float(body["latitude"]),
                longitude=float(body["longitude"]),
                name=_str(body.get("name")),
                address=_str(body.get("address")),
                url=_str(body.get("url")),
            )
            fields.update(type="location", location=location, text=location.name)
        except (KeyError, TypeError, ValueError):
            fields.update(type="unsupported")
    elif kind == "contacts":
        cards = [c for c in item.get("contacts") or [] if isinstance(c, dict)]
        parsed = [_vcard(c) for c in cards]
        fields.update(
            type="contacts" if len(parsed) != 1 else "contact",
            text=parsed[0][0] if len(parsed) == 1 else None,
            contacts=[events.ContactCard(display_name=n, vcard=v) for n, v in parsed],
        )
    elif kind == "interactive":
        reply_kind = str(body.get("type") or "")
        reply = _dict(body.get(reply_kind))
        fields.update(type="interactive", text=_str(reply.get("title")))
    elif kind == "button":
        fields.update(type="button", text=_str(body.get("text") or body.get("payload")))
    elif kind == "reaction":
        fields.update(
            type="reaction",
            target_id=_str(body.get("message_id")),
            emoji=str(body.get("emoji") or ""),
        )
    elif kind in ("edit", "revoke"):
        target = body.get("original_message_id") or item.get("original_message_id")
        if kind == "edit":
            new = _dict(body.get("message")) or body
            text = _dict(new.get("text"))
            caption = _find_caption(new)
            fields.update(type="edit", text=_str(text.get("body")) or caption)
        else:
            fields.update(type="revoke")
        fields["target_id"] = _str(target) or fields["quoted_id"]
        fields["quoted_id"] = None
    elif kind == "system":
        fields.update(type="system", text=_str(body.get("body")))
    else:
        # `unsupported` (with Meta's `errors`) and anything we have never seen: kept raw.
        fields.update(type="unsupported")
    if fields["type"] in ("reaction", "edit", "revoke") and not fields.get("target_id"):
        fields["type"] = "unsupported"
    return events.WaMessage.model_validate(fields)


def _find_caption(body: dict[str, Any]) -> str | None:
    for kind in MEDIA_KINDS:
        media = body.get(kind)
        if isinstance(media, dict) and media.get("caption"):
            return str(media["caption"])
    return None
