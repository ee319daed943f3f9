"""The simulated phone (`WAGATE_DRIVER=fake` only; these routes do not exist otherwise).

`/api/v1/sim/sessions/{id}/...` lets a test, a demo or the `/sim` page act as the phone of a
session: scan its QR, type a pairing code, send messages of every type, deliver receipts, push
history, drop the connection, unlink, ban. The same actions are `python run.py sim ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.sessions import _session_from_path
from gateway.errors import ApiError, Conflict
from gateway.keys import SETTINGS
from gateway.routing import ApiRouter
from sessions.fake_server import (
    FakeWhatsApp,
    FakeWhatsAppError,
    Phone,
    SimHistory,
    SimMessage,
    SimReceipt,
)

router = ApiRouter("simulated phone")

SIM_PAGE = Path(__file__).resolve().parent.parent / "static" / "sim.html"


class ScanRequest(BaseModel):
    phone: str | None = Field(default=None, description="The phone's number; one is made up")
    push_name: str | None = None
    qr: str | None = Field(default=None, description="The QR payload; default: the one shown")


class CodeRequest(BaseModel):
    code: str = Field(min_length=8, max_length=9)
    push_name: str | None = None


class SimSendRequest(BaseModel):
    messages: list[SimMessage] = Field(min_length=1, max_length=10000)


class ControlRequest(BaseModel):
    action: Literal["disconnect", "logout", "ban", "stream_replaced"]
    seconds: int = Field(default=3600, ge=1, le=30 * 86400)


class Queued(BaseModel):
    ids: list[str] = Field(default_factory=list)


class SentItems(BaseModel):
    items: list[dict[str, Any]]


async def phone_for(request: web.Request) -> Phone:
    session = await _session_from_path(request)
    server = FakeWhatsApp(request.app[SETTINGS].shared_path / "fake-wa")
    return Phone(server, session.id)


def _refused(exc: FakeWhatsAppError) -> ApiError:
    return Conflict(str(exc), code="phone_refused")


@router.post(
    "/api/v1/sim/sessions/{session_id}/scan",
    summary="The phone scans the session's QR code",
    body=ScanRequest,
    response=Queued,
    errors=(404, 409),
)
async def scan(request: web.Request, body: ScanRequest) -> Queued:
    phone = await phone_for(request)
    try:
        phone.scan(phone=body.phone, push_name=body.push_name, qr=body.qr)
    except FakeWhatsAppError as exc:
        raise _refused(exc) from exc
    return Queued()


@router.post(
    "/api/v1/sim/sessions/{session_id}/pair-code",
    summary="The phone's user types the pairing code",
    body=CodeRequest,
    response=Queued,
    errors=(404, 409),
)
async def pair_code(request: web.Request, body: CodeRequest) -> Queued:
    phone = await phone_for(request)
    try:
        phone.enter_code(body.code, push_name=body.push_name)
    except FakeWhatsAppError as exc:
        raise _refused(exc) from exc
    return Queued()


@router.post(
    "/api/v1/sim/sessions/{session_id}/messages",
    summary="Contacts (or the owner) send messages to the account",
    body=SimSendRequest,
    response=Queued,
    status=202,
    errors=(404,),
)
async def send(request: web.Request, body: SimSendRequest) -> Queued:
    phone = await phone_for(request)
    return Queued(ids=phone.send(*body.messages))


@router.post(
    "/api/v1/sim/sessions/{session_id}/receipts",
    summary="Deliver receipts for messages the account sent",
    body=SimReceipt,
    response=Queued,
    status=202,
    errors=(404,),
)
async def receipts(request: web.Request, body: SimReceipt) -> Queued:
    phone = await phone_for(request)
    phone.receipt(body)
    return Queued(ids=body.ids)


@router.post(
    "/api/v1/sim/sessions/{session_id}/history",
    summary="Push one history-sync chunk",
    body=SimHistory,
    response=Queued,
    status=202,
    errors=(404,),
)
async def history(request: web.Request, body: SimHistory) -> Queued:
    phone = await phone_for(request)
    return Queued(ids=phone.history(body))


@router.post(
    "/api/v1/sim/sessions/{session_id}/control",
    summary="Drop the connection, unlink the device, ban it, or connect another client",
    body=ControlRequest,
    response=Queued,
    status=202,
    errors=(404,),
)
async def control(request: web.Request, body: ControlRequest) -> Queued:
    phone = await phone_for(request)
    phone.control(body.action, seconds=body.seconds)
    return Queued()


@router.get(
    "/api/v1/sim/sessions/{session_id}/sent",
    summary="What the account sent (as the phone's contacts received it)",
    response=SentItems,
    errors=(404,),
)
async def sent(request: web.Request) -> SentItems:
    phone = await phone_for(request)
    return SentItems(items=phone.sent())


async def sim_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(SIM_PAGE)
