"""`/api/v1/sessions`: link WhatsApp accounts, see their honest state, start, stop, log out.

An operator sees only their own sessions (another user's id is a 404, never a 403); admins see
all. Also the compatibility route `GET /api/whatsapp/qr` of the system this replaces.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Literal

import structlog
from aiohttp import web
from pydantic import BaseModel, Field, model_validator

from db import cloud as cloud_db
from db import sessions as sessions_db
from db.sessions import Session
from db.users import User
from gateway.auth import compat_user, current_user
from gateway.cloud.service import NumberTaken
from gateway.errors import ApiError, Conflict, NotFound
from gateway.keys import CLOUD, POOL, SESSIONS, SETTINGS, SUPERVISOR
from gateway.qr import qr_data_url
from gateway.routing import ApiRouter, path_int
from sessions import ipc
from sessions.supervisor import CommandFailed, SessionUnavailable

router = ApiRouter("sessions")
compat = ApiRouter("compatibility")
log = structlog.get_logger(__name__)

QR_WAIT_SECONDS = 8.0


class SessionCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    channel: Literal["web", "cloud"] = Field(
        default="web", description="`web`: linked by QR code; `cloud`: a Cloud API number"
    )
    phone_number_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^\d+$", description="cloud only"
    )
    waba_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^\d+$", description="cloud only"
    )
    access_token: str | None = Field(
        default=None, min_length=1, max_length=4096, description="cloud only; never returned"
    )
    app_secret: str | None = Field(
        default=None, min_length=1, max_length=512, description="cloud only; never returned"
    )
    verify_token: str | None = Field(
        default=None, min_length=1, max_length=512, description="cloud only; never returned"
    )
    coexistence: bool = Field(
        default=False, description="cloud only: the number is also on the WhatsApp Business app"
    )
    messages_per_second: int | None = Field(
        default=None, ge=1, le=1000, description="cloud only: send at most this many per second"
    )

    @model_validator(mode="after")
    def _cloud_fields(self) -> SessionCreate:
        if self.channel == "cloud":
            missing = [
                name
                for name in ("phone_number_id", "access_token", "app_secret")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"a cloud number needs {', '.join(missing)}")
        return self


CLOUD_ONLY = (
    "waba_id",
    "access_token",
    "app_secret",
    "verify_token",
    "coexistence",
    "messages_per_second",
)


class SessionUpdate(BaseModel):
    """Only the fields sent change. Cloud numbers: a new access token (Meta's expire), app
    secret or verify token; null clears `waba_id`, `verify_token` or `messages_per_second`."""

    model_config = {"extra": "forbid"}

    name: str | None = Field(default=None, min_length=1, max_length=100)
    waba_id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^\d+$", description="cloud only"
    )
    access_token: str | None = Field(
        default=None, min_length=1, max_length=4096, description="cloud only; never returned"
    )
    app_secret: str | None = Field(
        default=None, min_length=1, max_length=512, description="cloud only; never returned"
    )
    verify_token: str | None = Field(
        default=None, min_length=1, max_length=512, description="cloud only; never returned"
    )
    coexistence: bool | None = Field(default=None, description="cloud only")
    messages_per_second: int | None = Field(default=None, ge=1, le=1000, description="cloud only")

    @model_validator(mode="after")
    def _not_null(self) -> SessionUpdate:
        for name in ("name", "access_token", "app_secret", "coexistence"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} can not be null")
        if not self.model_fields_set:
            raise ValueError("nothing to change")
        return self


class CloudNumberOut(BaseModel):
    phone_number_id: str
    waba_id: str | None
    coexistence: bool
    verify_token_set: bool
    messages_per_second: int


class WorkerStats(BaseModel):
    pid: int
    rss_bytes: int
    pss_bytes: int | None
    cpu_percent: float
    sessions_in_worker: int
    restarts: int


class SessionOut(BaseModel):
    id: int
    owner_id: int
    name: str
    channel: Literal["web", "cloud"]
    state: str
    desired_state: str
    phone: str | None
    jid: str | None
    push_name: str | None
    last_error: str | None
    banned_until: datetime | None
    next_attempt_at: datetime | None = Field(
        default=None, description="While reconnecting: when the next attempt is due"
    )
    state_changed_at: datetime
    connected_at: datetime | None
    created_at: datetime
    worker: WorkerStats | None = None
    cloud: CloudNumberOut | None = Field(
        default=None, description="Cloud API numbers: their ids (secrets are never shown)"
    )


class SessionList(BaseModel):
    items: list[SessionOut]


class QrOut(BaseModel):
    qr: str = Field(description="data:image/png;base64,... URL of the current QR code")
    expires_at: datetime


class PairPhoneRequest(BaseModel):
    phone: str = Field(description="The account's number with country code, e.g. +5215512345678")


class PairPhoneOut(BaseModel):
    code: str = Field(description="Type this 8-character code on the phone (Linked devices)")


def session_out(request: web.Request, session: Session) -> SessionOut:
    stats = request.app[SUPERVISOR].stats(session.id)
    return SessionOut(
        id=session.id,
        owner_id=session.owner_id,
        name=session.name,
        channel=session.channel,
        state=session.state,
        desired_state=session.desired_state,
        phone=session.phone,
        jid=session.jid,
        push_name=session.push_name,
        last_error=session.last_error,
        banned_until=session.banned_until,
        next_attempt_at=request.app[SUPERVISOR].next_attempt_at(session.id),
        state_changed_at=session.state_changed_at,
        connected_at=session.connected_at,
        created_at=session.created_at,
        worker=WorkerStats(**stats.__dict__) if stats else None,
        cloud=_cloud_out(request, session),
    )


def _cloud_out(request: web.Request, session: Session) -> CloudNumberOut | None:
    if session.channel != "cloud":
        return None
    service = request.app[CLOUD]
    number = service.number(session.id)
    if number is None:
        return None
    return CloudNumberOut(
        phone_number_id=number.phone_number_id,
        waba_id=number.waba_id,
        coexistence=number.coexistence,
        verify_token_set=bool(number.verify_token),
        messages_per_second=service.messages_per_second(number),
    )


async def owned_session(request: web.Request, user: User, session_id: int) -> Session:
    session = await sessions_db.get(request.app[POOL], session_id)
    if session is None or (session.owner_id != user.id and not user.is_admin):
        raise NotFound("session")
    return session


async def _session_from_path(request: web.Request) -> Session:
    return await owned_session(request, current_user(request), path_int(request, "session_id"))


async def _reload(request: web.Request, session_id: int) -> Session:
    session = await sessions_db.get(request.app[POOL], session_id)
    if session is None:
        raise NotFound("session")
    return session


@router.post(
    "/api/v1/sessions",
    summary="Add a WhatsApp account; its QR code follows on /qr",
    body=SessionCreate,
    response=SessionOut,
    status=201,
    errors=(409,),
)
async def create_session(request: web.Request, body: SessionCreate) -> SessionOut:
    user = current_user(request)
    limit = request.app[SETTINGS].max_sessions_per_user
    pool = request.app[POOL]
    async with pool.acquire() as conn, conn.transaction():
        # Serialize creations per user so two requests can not both pass the limit.
        await conn.execute("SELECT pg_advisory_xact_lock(7, $1::int)", user.id)
        if await sessions_db.count_for(conn, user.id) >= limit:
            raise Conflict(
                f"you already have {limit} WhatsApp accounts, the most allowed "
                "(WAGATE_MAX_SESSIONS_PER_USER)",
                code="session_limit",
            )
        if body.channel == "cloud":
            assert body.phone_number_id
            assert body.access_token
            assert body.app_secret
            try:
                sid = await request.app[CLOUD].create_number(
                    owner_id=user.id,
                    name=body.name,
                    phone_number_id=body.phone_number_id,
                    waba_id=body.waba_id,
                    access_token=body.access_token,
                    app_secret=body.app_secret,
                    verify_token=body.verify_token,
                    coexistence=body.coexistence,
                    messages_per_second=body.messages_per_second,
                    conn=conn,
                )
            except NumberTaken as exc:
                raise Conflict(
                    "this phone number id is already a session", code="number_taken"
                ) from exc
        else:
            session = await sessions_db.create(conn, owner_id=user.id, name=body.name)
    if body.channel == "cloud":
        await request.app[CLOUD].numbers.load()  # now that it is committed
        log.info("cloud number created", session_id=sid)
        return session_out(request, await _reload(request, sid))
    await request.app[SESSIONS].start_session(session.id)
    log.info("session created", session_id=session.id)
    return session_out(request, await _reload(request, session.id))


@router.get("/api/v1/sessions", summary="Your WhatsApp accounts", response=SessionList)
async def list_sessions(request: web.Request) -> SessionList:
    user = current_user(request)
    found = await sessions_db.list_for(request.app[POOL], None if user.is_admin else user.id)
    return SessionList(items=[session_out(request, s) for s in found])


@router.get(
    "/api/v1/sessions/{session_id}",
    summary="One account: state, phone, memory and CPU of its worker",
    response=SessionOut,
    errors=(404,),
)
async def get_session(request: web.Request) -> SessionOut:
    return session_out(request, await _session_from_path(request))


@router.patch(
    "/api/v1/sessions/{session_id}",
    summary="Rename an account; on a Cloud API number, replace its token or secrets",
    body=SessionUpdate,
    response=SessionOut,
    errors=(404,),
    owned=_session_from_path,
)
async def update_session(request: web.Request, body: SessionUpdate) -> SessionOut:
    session = await _session_from_path(request)
    sent = body.model_fields_set
    cloud_fields = sorted(sent & set(CLOUD_ONLY))
    if cloud_fields and session.channel != "cloud":
        raise ApiError(
            400,
            f"{', '.join(cloud_fields)} only apply to Cloud API numbers",
            code="validation_error",
        )
    pool = request.app[POOL]
    box = request.app[CLOUD].numbers.box
    async with pool.acquire() as conn, conn.transaction():
        if body.name is not None:
            await sessions_db.rename(conn, session.id, body.name)
        if cloud_fields:
            await cloud_db.update_number(
                conn,
                session.id,
                waba_id=(body.waba_id,) if "waba_id" in sent else None,
                access_token_sealed=box.seal(body.access_token) if body.access_token else None,
                app_secret_sealed=box.seal(body.app_secret) if body.app_secret else None,
                verify_token_sealed=(
                    (box.seal(body.verify_token) if body.verify_token else None,)
                    if "verify_token" in sent
                    else None
                ),
                coexistence=body.coexistence,
                messages_per_second=(
                    (body.messages_per_second,) if "messages_per_second" in sent else None
                ),
            )
    if session.channel == "cloud":
        await request.app[CLOUD].numbers.load()
        if body.access_token:
            # A new token deserves a new try: the state follows the Graph API's answer.
            await request.app[CLOUD].check_token(session.id)
    log.info("session updated", session_id=session.id, fields=sorted(sent))
    return session_out(request, await _reload(request, session.id))


@router.post(
    "/api/v1/sessions/{session_id}/start",
    summary="Start (or resume) the session",
    response=SessionOut,
    errors=(404, 409),
)
async def start_session(request: web.Request) -> SessionOut:
    session = await _session_from_path(request)
    if session.channel != "web":
        raise Conflict("Cloud API numbers are not started or stopped")
    await request.app[SESSIONS].start_session(session.id)
    return session_out(request, await _reload(request, session.id))


@router.post(
    "/api/v1/sessions/{session_id}/stop",
    summary="Stop the session (stays linked; start resumes it without a QR)",
    response=SessionOut,
    errors=(404, 409),
)
async def stop_session(request: web.Request) -> SessionOut:
    session = await _session_from_path(request)
    if session.channel != "web":
        raise Conflict("Cloud API numbers are not started or stopped")
    await request.app[SESSIONS].stop_session(session.id)
    return session_out(request, await _reload(request, session.id))


@router.post(
    "/api/v1/sessions/{session_id}/logout",
    summary="Unlink the device from WhatsApp and stop",
    response=SessionOut,
    errors=(404, 409),
)
async def logout_session(request: web.Request) -> SessionOut:
    session = await _session_from_path(request)
    if session.channel != "web":
        raise Conflict("Cloud API numbers are not linked devices; delete the session instead")
    await request.app[SESSIONS].logout(session.id)
    return session_out(request, await _reload(request, session.id))


@router.delete(
    "/api/v1/sessions/{session_id}",
    summary="Log out, remove the device from the store and delete the session",
    status=204,
    errors=(404,),
)
async def delete_session(request: web.Request) -> None:
    session = await _session_from_path(request)
    directory = request.app[SESSIONS]
    if session.jid and session.channel == "web":
        await directory.logout(session.id)
    await directory.forget(session.id)
    await sessions_db.delete(request.app[POOL], session.id)
    if session.channel == "cloud":
        await request.app[CLOUD].numbers.load()
    log.info("session deleted", session_id=session.id)


@router.get(
    "/api/v1/sessions/{session_id}/qr",
    summary="The current QR code to scan (replaced on every rotation)",
    response=QrOut,
    errors=(404, 409),
)
async def get_qr(request: web.Request) -> QrOut:
    session = await _session_from_path(request)
    if session.state == "connected":
        raise Conflict("the session is already connected", code="already_connected")
    qr = await request.app[SESSIONS].qr(session.id)
    if qr is None:
        raise Conflict(
            f"no QR code to show: the session is {session.state}"
            + (" (start it to get a new one)" if session.desired_state == "stopped" else ""),
            code="qr_unavailable",
        )
    return QrOut(qr=qr_data_url(qr.code), expires_at=qr.expires_at)


_PHONE = re.compile(r"^\+?[1-9]\d{7,14}$")


@router.post(
    "/api/v1/sessions/{session_id}/pair-phone",
    summary="Link by phone number instead of QR: returns the code to type on the phone",
    body=PairPhoneRequest,
    response=PairPhoneOut,
    errors=(404, 409),
)
async def pair_phone(request: web.Request, body: PairPhoneRequest) -> PairPhoneOut:
    phone = re.sub(r"[\s().-]", "", body.phone)
    if not _PHONE.match(phone):
        raise ApiError(
            400,
            "phone must be an international number with country code, e.g. +5215512345678",
            code="validation_error",
            details=[{"loc": ["phone"], "msg": "not a phone number", "type": "value_error"}],
        )
    session = await _session_from_path(request)
    if session.state == "connected":
        raise Conflict("the session is already linked and connected", code="already_connected")
    try:
        result = await request.app[SESSIONS].request(
            session.id, ipc.PairPhone(phone=phone.lstrip("+")), timeout=30
        )
    except SessionUnavailable as exc:
        raise Conflict("the session is not running: start it first", code="not_running") from exc
    except CommandFailed as exc:
        raise Conflict(f"pairing by phone failed: {exc}", code="pairing_failed") from exc
    return PairPhoneOut(code=str(result["code"]))


# -- compatibility ----------------------------------------------------------------------------


class CompatQrData(BaseModel):
    qr: str | None


class CompatQr(BaseModel):
    success: bool
    message: str
    connected: bool
    data: CompatQrData


@compat.get(
    "/api/whatsapp/qr",
    summary="The current system's QR endpoint (Bearer auth; ?sessionId= picks the session)",
    response=CompatQr,
    auth="public",
    errors=(401, 404),
)
async def compat_qr(request: web.Request) -> CompatQr:
    user = await compat_user(request)
    pool = request.app[POOL]
    directory = request.app[SESSIONS]
    wanted = request.query.get("sessionId")
    if wanted is not None:
        if not wanted.isdigit() or len(wanted) > 18:
            raise NotFound("session")
        session = await owned_session(request, user, int(wanted))
    else:
        mine = [s for s in await sessions_db.list_for(pool, user.id) if s.channel == "web"]
        if mine:
            session = mine[0]
        else:
            if request.app[SETTINGS].max_sessions_per_user < 1:
                raise Conflict("you may not add WhatsApp accounts", code="session_limit")
            session = await sessions_db.create(pool, owner_id=user.id, name="WhatsApp")
    if session.state == "connected":
        return CompatQr(
            success=True, message="already connected", connected=True, data=CompatQrData(qr=None)
        )
    if await directory.qr(session.id) is None and session.state not in (
        "starting",
        "qr_required",
    ):
        await directory.start_session(session.id)
    deadline = asyncio.get_running_loop().time() + QR_WAIT_SECONDS
    while (qr := await directory.qr(session.id)) is None:
        if asyncio.get_running_loop().time() > deadline:
            current = await _reload(request, session.id)
            return CompatQr(
                success=False,
                message=f"no QR code yet (session {current.state}); try again",
                connected=current.state == "connected",
                data=CompatQrData(qr=None),
            )
        await asyncio.sleep(0.1)
    return CompatQr(
        success=True,
        message="scan this QR code with WhatsApp (Linked devices)",
        connected=False,
        data=CompatQrData(qr=qr_data_url(qr.code)),
    )
