"""`/api/v1/messages/{id}`: react to, edit or delete (for everyone) a message."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.models import MessageOut
from gateway.auth import current_user
from gateway.messaging import queue_change
from gateway.routing import ApiRouter, path_int

router = ApiRouter("messages")


class ReactionRequest(BaseModel):
    emoji: str = Field(max_length=32, description="An emoji; empty removes your reaction")


class EditRequest(BaseModel):
    text: str = Field(min_length=1, max_length=65536)


@router.post(
    "/api/v1/messages/{message_id}/reactions",
    summary="React to a message (an empty emoji removes the reaction)",
    body=ReactionRequest,
    response=MessageOut,
    status=202,
    errors=(404, 409),
)
async def react(request: web.Request, body: ReactionRequest) -> MessageOut:
    message = await queue_change(
        request.app,
        current_user(request),
        path_int(request, "message_id"),
        "react",
        emoji=body.emoji,
    )
    return MessageOut.from_row(message)


@router.patch(
    "/api/v1/messages/{message_id}",
    summary="Edit the text of a message this account sent",
    body=EditRequest,
    response=MessageOut,
    status=202,
    errors=(404, 409),
)
async def edit(request: web.Request, body: EditRequest) -> MessageOut:
    message = await queue_change(
        request.app,
        current_user(request),
        path_int(request, "message_id"),
        "edit",
        text=body.text,
    )
    return MessageOut.from_row(message)


@router.delete(
    "/api/v1/messages/{message_id}",
    summary="Delete a message this account sent, for everyone",
    response=MessageOut,
    status=202,
    errors=(404, 409),
)
async def revoke(request: web.Request) -> MessageOut:
    message = await queue_change(
        request.app, current_user(request), path_int(request, "message_id"), "revoke"
    )
    return MessageOut.from_row(message)
