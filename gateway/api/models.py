"""Conversation and message models of the REST API (shared by several resources)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


class LastMessage(BaseModel):
    id: int
    message_type: str
    text_preview: str | None
    direction: str
    status: str
    sent_at: datetime
    deleted: bool


class ContactRef(BaseModel):
    id: int | None
    name: str | None
    phone: str | None
    lid: str | None
    photo_url: str | None


class ConversationOut(BaseModel):
    id: int
    session_id: int
    external_id: str
    kind: str
    contact: ContactRef
    contact_name: str | None
    contact_photo_url: str | None
    started_at: datetime
    last_message_at: datetime | None
    last_message: LastMessage | None
    unread_count: int
    archived: bool
    labels: list[str]
    ai_active: bool
    no_ac_ai: bool
    jira_bridge: bool
    ticket_key: str | None = Field(default=None, description="Jira issue key, once bridged")
    personality_id: int | None
    needs_human: bool
    participants: list[dict[str, Any]] | None

    @classmethod
    def from_row(cls, row: dict[str, Any], ticket_key: str | None = None) -> ConversationOut:
        last = None
        if row.get("last_id") is not None:
            text = row["last_text"]
            last = LastMessage(
                id=row["last_id"],
                message_type=row["last_type"],
                text_preview=text[:120] if text and not row["last_revoked"] else None,
                direction=row["last_direction"],
                status=row["last_status"],
                sent_at=row["last_sent_at"],
                deleted=bool(row["last_revoked"]),
            )
        return cls(
            id=row["id"],
            session_id=row["session_id"],
            external_id=row["external_id"],
            kind=row["kind"],
            contact=ContactRef(
                id=row["contact_id"],
                name=row["contact_name"],
                phone=row["wa_user_id"],
                lid=row["lid"],
                photo_url=row["contact_photo_url"],
            ),
            contact_name=row["contact_name"],
            contact_photo_url=row["contact_photo_url"],
            started_at=row["started_at"],
            last_message_at=row["last_message_at"],
            last_message=last,
            unread_count=row["unread_count"],
            archived=row["archived"],
            labels=list(row["labels"] or []),
            ai_active=row["ai_active"],
            no_ac_ai=row["no_ac_ai"],
            jira_bridge=row["jira_bridge"],
            ticket_key=ticket_key,
            personality_id=row["personality_id"],
            needs_human=row["needs_human"],
            participants=_json(row["participants"]),
        )


class MediaOut(BaseModel):
    status: str
    mime_type: str | None
    size: int | None
    filename: str | None
    url: str | None = Field(description="GET it with the bearer token; null until stored")


class MessageOut(BaseModel):
    id: int
    conversation_id: int
    session_id: int
    wa_message_id: str | None
    direction: str
    sender_type: str
    sender_jid: str | None
    sender_name: str | None
    message_type: str
    text_content: str | None
    media: MediaOut | None
    quoted_wa_message_id: str | None
    reactions: dict[str, str]
    edits: list[dict[str, Any]]
    votes: dict[str, Any]
    details: dict[str, Any] = Field(
        description="Type-specific content: location, contacts (vCards), poll, flags"
    )
    status: str
    error: str | None
    from_history: bool
    edited: bool
    deleted: bool
    sent_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> MessageOut:
        interactions = _json(row["interactions"]) or {}
        raw = _json(row.get("raw")) or {}
        media = None
        if row["media_status"] is not None:
            media = MediaOut(
                status=row["media_status"],
                mime_type=row["media_mime"],
                size=row["media_size"],
                filename=row["media_filename"],
                url=f"/api/v1/media/{row['id']}" if row["media_status"] == "stored" else None,
            )
        deleted = row["revoked_at"] is not None
        return cls(
            id=row["id"],
            conversation_id=row["conversation_id"],
            session_id=row["session_id"],
            wa_message_id=row["wa_message_id"],
            direction=row["direction"],
            sender_type=row["sender_type"],
            sender_jid=row["sender_jid"],
            sender_name=row["sender_name"],
            message_type=row["message_type"],
            text_content=row["text_content"],
            media=media,
            quoted_wa_message_id=row["quoted_wa_message_id"],
            reactions=dict(interactions.get("reactions", {})),
            edits=list(interactions.get("edits", [])),
            votes=dict(interactions.get("votes", {})),
            details=dict(raw.get("wagate", {})) if isinstance(raw, dict) else {},
            status=row["status"],
            error=row["error"],
            from_history=row["from_history"],
            edited=row["edited_at"] is not None,
            deleted=deleted,
            sent_at=row["sent_at"],
        )
