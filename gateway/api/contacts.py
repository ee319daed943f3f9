"""`GET /api/v1/contacts` and `GET /api/v1/search`: the people your accounts know, and full-text
search over your messages."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from db import contacts, messages
from gateway.api.models import MessageOut
from gateway.auth import current_user
from gateway.keys import POOL
from gateway.routing import ApiRouter

router = ApiRouter("contacts and search")


class ContactQuery(BaseModel):
    session_id: int | None = None
    q: str | None = Field(default=None, min_length=1, max_length=100, description="Name or phone")
    after: int = Field(default=0, ge=0, description="`next_after` of the previous page")
    limit: int = Field(default=100, ge=1, le=500)


class ContactOut(BaseModel):
    id: int
    session_id: int
    jid: str
    lid: str | None
    phone: str | None
    push_name: str | None
    saved_name: str | None
    business_name: str | None
    photo_url: str | None
    updated_at: datetime


class ContactPage(BaseModel):
    items: list[ContactOut]
    next_after: int | None


@router.get(
    "/api/v1/contacts",
    summary="Contacts of your accounts (phone, LID, names, picture)",
    query=ContactQuery,
    response=ContactPage,
)
async def list_contacts(request: web.Request, query: ContactQuery) -> ContactPage:
    user = current_user(request)
    rows = await contacts.page(
        request.app[POOL],
        None if user.is_admin else user.id,
        session_id=query.session_id,
        q=query.q,
        after_id=query.after,
        limit=query.limit + 1,
    )
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return ContactPage(
        items=[ContactOut(**r) for r in rows], next_after=rows[-1]["id"] if more else None
    )


class SearchQuery(BaseModel):
    q: str = Field(min_length=1, max_length=200, description="Words, quoted phrases, -exclusions")
    session_id: int | None = None
    limit: int = Field(default=50, ge=1, le=200)


class SearchHit(BaseModel):
    message: MessageOut
    contact_name: str | None
    external_id: str
    rank: float


class SearchResult(BaseModel):
    items: list[SearchHit]


@router.get(
    "/api/v1/search",
    summary="Full-text search over your messages (English, Spanish and Portuguese), newest first",
    query=SearchQuery,
    response=SearchResult,
)
async def search(request: web.Request, query: SearchQuery) -> SearchResult:
    user = current_user(request)
    rows = await messages.search(
        request.app[POOL],
        None if user.is_admin else user.id,
        query.q,
        session_id=query.session_id,
        limit=query.limit,
    )
    return SearchResult(
        items=[
            SearchHit(
                message=MessageOut.from_row(r),
                contact_name=r["contact_name"],
                external_id=r["external_id"],
                rank=float(r["rank"]),
            )
            for r in rows
        ]
    )
