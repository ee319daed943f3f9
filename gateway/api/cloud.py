"""Cloud API numbers: token check, message templates, and the former system's send route.

Every route takes a session id the caller must own (another operator's is a 404) and refuses a
WhatsApp Web session with 409.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from db import cloud as cloud_db
from db import conversations as conversations_db
from db import sessions as sessions_db
from db.sessions import Session
from gateway import messaging
from gateway.api.sessions import owned_session
from gateway.auth import compat_user, current_user
from gateway.cloud import templates as cloud_templates
from gateway.cloud import translate
from gateway.cloud.graph import GraphError
from gateway.cloud.numbers import CloudNumber
from gateway.errors import ApiError, Conflict, NotFound
from gateway.keys import CLOUD, POOL
from gateway.routing import ApiRouter, path_int

router = ApiRouter("cloud")
compat = ApiRouter("compatibility")
log = structlog.get_logger(__name__)


class TokenCheck(BaseModel):
    ok: bool
    message: str
    state: str


class TemplateOut(BaseModel):
    id: int
    template_id: str | None
    name: str
    language: str
    category: str | None
    status: str
    components: list[dict[str, Any]]
    rejected_reason: str | None
    synced_at: datetime


class TemplateList(BaseModel):
    items: list[TemplateOut]
    synced: bool = Field(description="Whether the list was refreshed from Meta just now")
    error: str | None = Field(default=None, description="Why the refresh failed, if it did")


class TemplateQuery(BaseModel):
    status: str | None = Field(default=None, max_length=40, description="APPROVED, PENDING, ...")
    category: str | None = Field(default=None, max_length=40, description="UTILITY, MARKETING, ...")
    language: str | None = Field(default=None, max_length=20, description="en, es, pt_BR, ...")
    sync: bool = Field(default=True, description="Refresh from Meta first")


class TemplateCreate(BaseModel):
    name: str = Field(min_length=1, max_length=512, pattern=r"^[a-z0-9_]+$")
    category: Literal["UTILITY", "MARKETING", "AUTHENTICATION"]
    language: str = Field(min_length=2, max_length=20)
    components: list[dict[str, Any]] = Field(max_length=20)

    @field_validator("components")
    @classmethod
    def _meta_accepts_the_body(cls, components: list[dict[str, Any]]) -> list[dict[str, Any]]:
        problem = cloud_templates.template_problem(components)
        if problem:
            raise ValueError(f"Meta would refuse this template: {problem}")
        return components


class RegisteredDefaults(BaseModel):
    created: list[TemplateOut]
    failed: list[dict[str, str]]


async def cloud_session(request: web.Request) -> tuple[Session, CloudNumber]:
    session = await owned_session(request, current_user(request), path_int(request, "session_id"))
    number = request.app[CLOUD].number(session.id) if session.channel == "cloud" else None
    if number is None:
        raise Conflict("this is not a Cloud API number", code="not_cloud")
    return session, number


def _template_out(row: cloud_db.TemplateRow) -> TemplateOut:
    return TemplateOut(**{k: getattr(row, k) for k in TemplateOut.model_fields})


@router.post(
    "/api/v1/sessions/{session_id}/test",
    summary="Cloud API: check the number's access token against the Graph API",
    response=TokenCheck,
    errors=(404, 409),
)
async def test_number(request: web.Request) -> TokenCheck:
    session, _ = await cloud_session(request)
    ok, message = await request.app[CLOUD].check_token(session.id)
    found = await request.app[POOL].fetchval("SELECT state FROM sessions WHERE id = $1", session.id)
    return TokenCheck(ok=ok, message=message, state=str(found))


@router.get(
    "/api/v1/sessions/{session_id}/templates",
    summary="Cloud API: the number's message templates (synced from Meta)",
    query=TemplateQuery,
    response=TemplateList,
    errors=(404, 409),
)
async def list_templates(request: web.Request, query: TemplateQuery) -> TemplateList:
    session, number = await cloud_session(request)
    synced, error = False, None
    if query.sync:
        try:
            await cloud_templates.sync(request.app[CLOUD], number)
            synced = True
        except (GraphError, ValueError) as exc:
            error = str(exc)
    rows = await cloud_db.list_templates(
        request.app[POOL],
        session.id,
        status=query.status,
        category=query.category,
        language=query.language,
    )
    return TemplateList(items=[_template_out(r) for r in rows], synced=synced, error=error)


@router.post(
    "/api/v1/sessions/{session_id}/templates",
    summary="Cloud API: submit a message template to Meta for approval",
    body=TemplateCreate,
    response=TemplateOut,
    status=201,
    errors=(404, 409, 502),
)
async def create_template(request: web.Request, body: TemplateCreate) -> TemplateOut:
    _, number = await cloud_session(request)
    try:
        row = await cloud_templates.create(request.app[CLOUD], number, body.model_dump())
    except GraphError as exc:
        raise ApiError(502, f"Meta refused the template: {exc}", code="graph_error") from exc
    except ValueError as exc:
        raise Conflict(str(exc), code="no_waba") from exc
    return _template_out(row)


@router.post(
    "/api/v1/sessions/{session_id}/templates/register-defaults",
    summary="Cloud API: submit the support templates (ticket_created, ...) in es, pt_BR, en",
    response=RegisteredDefaults,
    errors=(404, 409),
)
async def register_defaults(request: web.Request) -> RegisteredDefaults:
    _, number = await cloud_session(request)
    try:
        created, failed = await cloud_templates.register_defaults(request.app[CLOUD], number)
    except ValueError as exc:
        raise Conflict(str(exc), code="no_waba") from exc
    return RegisteredDefaults(created=[_template_out(r) for r in created], failed=failed)


# -- Coexistence ----------------------------------------------------------------------------


class CoexistenceSync(BaseModel):
    sync_type: Literal["smb_app_state_sync", "history"] | None = Field(
        default=None,
        description="`smb_app_state_sync` (contacts), `history`, or omitted for both",
    )


class CoexistenceSyncResult(BaseModel):
    started: list[str] = Field(description="The syncs Meta accepted to start")


@router.post(
    "/api/v1/sessions/{session_id}/coexistence-sync",
    summary="Cloud API (Coexistence): ask Meta for the Business app's contacts and/or history",
    description="`POST /{phone_number_id}/smb_app_data` once per sync type; Meta allows it "
    "within 24 hours of onboarding the number. What follows arrives by webhook "
    "(`smb_app_state_sync`, `history`) and lands like any other webhook. 502 with Meta's error "
    "when it refuses.",
    body=CoexistenceSync,
    response=CoexistenceSyncResult,
    errors=(404, 409, 502),
)
async def coexistence_sync(request: web.Request, body: CoexistenceSync) -> CoexistenceSyncResult:
    session, number = await cloud_session(request)
    service = request.app[CLOUD]
    started: list[str] = []
    for sync_type in [body.sync_type] if body.sync_type else ["smb_app_state_sync", "history"]:
        try:
            await service.graph.start_sync(number.phone_number_id, number.access_token, sync_type)
        except GraphError as exc:
            done = f" ({', '.join(started)} started)" if started else ""
            raise ApiError(
                502, f"Meta refused the {sync_type} sync{done}: {exc}", code="graph_error"
            ) from exc
        started.append(sync_type)
        log.info("coexistence sync started", session_id=session.id, sync_type=sync_type)
    return CoexistenceSyncResult(started=started)


# -- sending templates ------------------------------------------------------------------------


class TemplateSend(BaseModel):
    name: str = Field(min_length=1, max_length=512)
    language: str = Field(min_length=2, max_length=20, description="e.g. en_US, es, pt_BR")
    components: list[dict[str, Any]] = Field(
        default_factory=list, max_length=20, description="Meta's template components"
    )


class QueuedMessage(BaseModel):
    id: int
    conversation_id: int
    status: str
    message_type: str


@router.post(
    "/api/v1/conversations/{conversation_id}/template",
    summary="Cloud API: send a template message (allowed outside the 24-hour window)",
    body=TemplateSend,
    response=QueuedMessage,
    status=202,
    errors=(404, 409),
)
async def send_template(request: web.Request, body: TemplateSend) -> QueuedMessage:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        raise ApiError(400, "Idempotency-Key must be 1 to 200 characters", code="validation_error")
    message, _ = await messaging.send_template(
        request.app,
        current_user(request),
        path_int(request, "conversation_id"),
        body.model_dump(),
        idempotency_key=key,
    )
    return QueuedMessage(
        id=message["id"],
        conversation_id=message["conversation_id"],
        status=message["status"],
        message_type=message["message_type"],
    )


# -- the former system's send route -------------------------------------------------------------


class CompatContent(BaseModel):
    text: str | None = Field(default=None, max_length=4096)
    templateName: str | None = Field(default=None, max_length=512)
    languageCode: str | None = Field(default=None, max_length=20)
    components: list[dict[str, Any]] = Field(default_factory=list, max_length=20)


class CompatSend(BaseModel):
    to: str = Field(min_length=8, max_length=20, pattern=r"^\+?\d+$")
    type: Literal["text", "template"] = "text"
    content: CompatContent
    ticketId: str | None = Field(default=None, max_length=100)
    sessionId: int | None = Field(default=None, ge=1, le=2**62)


class CompatSent(BaseModel):
    success: bool
    messageId: int


@compat.post(
    "/api/integrations/whatsapp/send",
    summary="The former system's send route (Cloud API numbers; Bearer auth)",
    body=CompatSend,
    response=CompatSent,
    auth="public",
    errors=(401, 404, 409, 422),
)
async def compat_send(request: web.Request, body: CompatSend) -> CompatSent:
    user = await compat_user(request)
    pool = request.app[POOL]
    mine = [
        s
        for s in await sessions_db.list_for(pool, None if user.is_admin else user.id)
        if s.channel == "cloud" and (body.sessionId is None or s.id == body.sessionId)
    ]
    if not mine:
        raise NotFound("Cloud API number")
    session = mine[0]
    chat = translate.jid(body.to)
    async with pool.acquire() as conn, conn.transaction():
        ids, _ = await conversations_db.upsert_many(
            conn,
            session.id,
            [
                conversations_db.ChatTouch(
                    external_id=chat,
                    kind="direct",
                    contact_name=None,
                    wa_user_id=chat.split("@")[0],
                    lid=None,
                    last_message_at=datetime.now(UTC),
                )
            ],
        )
    conversation_id = ids[chat]
    if body.type == "template":
        if not body.content.templateName or not body.content.languageCode:
            raise ApiError(
                400, "a template needs templateName and languageCode", code="validation_error"
            )
        message, _ = await messaging.send_template(
            request.app,
            user,
            conversation_id,
            {
                "name": body.content.templateName,
                "language": body.content.languageCode,
                "components": body.content.components,
            },
        )
    else:
        if not body.content.text:
            raise ApiError(400, "a text message needs content.text", code="validation_error")
        message, _ = await messaging.send_text(
            request.app, user, conversation_id, body.content.text
        )
    log.info("compat send queued", message_id=message["id"], ticket_id=body.ticketId)
    return CompatSent(success=True, messageId=message["id"])
