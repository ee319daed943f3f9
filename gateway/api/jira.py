"""`/api/v1/jira`: each operator's Jira connection, its status, the tickets of bridged chats,
and the webhook Jira calls (`/api/v1/jira/webhook/{token}`, the token names the operator).

Secrets (API token or personal access token, webhook secret) are sealed at rest and never
answered back; the webhook URL is.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime
from typing import Any, Literal

import structlog
from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from db import jira as jira_db
from db import sessions as sessions_db
from db.jira import Connection, Ticket
from gateway.auth import current_user
from gateway.errors import ApiError, NotFound
from gateway.jira_bridge import signature_ok, token_hash
from gateway.jira_client import JiraFailure
from gateway.keys import JIRA, POOL
from gateway.routing import ApiRouter

router = ApiRouter("jira")
log = structlog.get_logger(__name__)

WEBHOOK_PATH = "/api/v1/jira/webhook/"


class JiraConnectionIn(BaseModel):
    base_url: str = Field(
        min_length=8,
        max_length=500,
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="Jira site, e.g. https://example.atlassian.net",
    )
    auth_kind: Literal["cloud", "pat"] = Field(
        description="cloud: e-mail + API token; pat: Server/Data Center personal access token"
    )
    email: str | None = Field(default=None, max_length=320, description="Cloud: the e-mail")
    token: str | None = Field(
        default=None,
        min_length=1,
        max_length=2000,
        description="API token or personal access token (omit to keep the saved one)",
    )
    project_key: str = Field(min_length=1, max_length=50, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    issue_type: str = Field(default="Task", min_length=1, max_length=100)
    webhook_secret: str | None = Field(
        default=None,
        max_length=500,
        description="Secret of the Jira webhook (omit to keep; empty string to remove)",
    )
    enabled: bool = True
    auto_bridge_session_ids: list[int] = Field(
        default=[], max_length=100, description="Bridge every new 1:1 chat of these sessions"
    )
    reopen_resolved: bool = Field(
        default=False,
        description="A message to a resolved ticket reopens it (false: opens a new ticket)",
    )
    status_notices: bool = Field(default=True, description="Tell customers of status changes")
    status_notice_text: str | None = Field(
        default=None, max_length=500, description="Own notice text ({key}, {status})"
    )
    language: Literal["en", "es", "pt"] = Field(
        default="en", description="Language of notices when the customer's is not known"
    )

    @field_validator("auto_bridge_session_ids")
    @classmethod
    def _small_ids(cls, value: list[int]) -> list[int]:
        if any(not 0 < v < 2**62 for v in value):
            raise ValueError("not a session id")
        return sorted(set(value))


class JiraConnectionOut(BaseModel):
    base_url: str
    auth_kind: str
    email: str | None
    has_token: bool
    project_key: str
    issue_type: str
    has_webhook_secret: bool
    webhook_url: str = Field(description="Give Jira this URL (path) for its webhook")
    enabled: bool
    auto_bridge_session_ids: list[int]
    reopen_resolved: bool
    status_notices: bool
    status_notice_text: str | None
    language: str
    state: str = Field(description="active, or rejected (Jira refused the credentials)")
    last_error: str | None
    account_id: str | None
    account_name: str | None
    server_title: str | None
    updated_at: datetime


class JiraStatus(BaseModel):
    configured: bool
    enabled: bool = False
    state: str = Field(default="unconfigured", description="unconfigured, active or rejected")
    message: str | None = Field(default=None, description="What the operator should know")
    last_error: str | None = None
    failing_since: datetime | None = None
    account_name: str | None = None
    jobs_waiting: int = 0
    jobs_failed: int = 0
    events_behind: int = 0
    tickets_open: int = 0
    tickets_total: int = 0


class JiraTestResult(BaseModel):
    ok: bool
    server_title: str | None = None
    version: str | None = None
    deployment: str | None = None
    account_id: str | None = None
    account_name: str | None = None
    error: str | None = None
    kind: str | None = None


class TicketOut(BaseModel):
    id: int
    session_id: int
    conversation_id: int
    phone: str | None
    project_key: str
    issue_key: str | None
    state: str
    status: str | None
    status_category: str | None
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None


class TicketList(BaseModel):
    items: list[TicketOut]


class TicketQuery(BaseModel):
    session_id: int | None = Field(default=None, ge=1, le=2**62)
    conversation_id: int | None = Field(default=None, ge=1, le=2**62)
    state: Literal["pending", "open", "closed"] | None = None
    limit: int = Field(default=100, ge=1, le=500)


class JiraWebhookAnswer(BaseModel):
    outcome: str


def _out(request: web.Request, c: Connection) -> JiraConnectionOut:
    token = request.app[JIRA].box.open(c.webhook_token_sealed)
    return JiraConnectionOut(
        base_url=c.base_url,
        auth_kind=c.auth_kind,
        email=c.email,
        has_token=bool(c.token_sealed),
        project_key=c.project_key,
        issue_type=c.issue_type,
        has_webhook_secret=c.webhook_secret_sealed is not None,
        webhook_url=WEBHOOK_PATH + token,
        enabled=c.enabled,
        auto_bridge_session_ids=c.auto_bridge_sessions,
        reopen_resolved=c.reopen_resolved,
        status_notices=c.status_notices,
        status_notice_text=c.status_notice_text,
        language=c.language,
        state=c.state,
        last_error=c.last_error,
        account_id=c.account_id,
        account_name=c.account_name,
        server_title=c.server_title,
        updated_at=c.updated_at,
    )


async def _own(request: web.Request) -> Connection:
    found = await jira_db.get(request.app[POOL], current_user(request).id)
    if found is None:
        raise NotFound("Jira connection")
    return found


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        400,
        f"{field}: {message}",
        code="validation_error",
        details=[{"loc": [field], "msg": message, "type": "value_error"}],
    )


async def save_connection(
    app: web.Application, user_id: int, body: JiraConnectionIn, existing: Connection | None
) -> Connection:
    box = app[JIRA].box
    if body.token:
        token_sealed = box.seal(body.token)
    elif existing is not None:
        token_sealed = existing.token_sealed
    else:
        raise _invalid("token", "a token is required")
    if body.auth_kind == "cloud" and not body.email:
        raise _invalid("email", "Jira Cloud needs the e-mail of the integration account")
    if body.webhook_secret is None:
        secret_sealed = existing.webhook_secret_sealed if existing else None
    else:
        secret_sealed = box.seal(body.webhook_secret) if body.webhook_secret else None
    if existing is not None:
        hook_hash, hook_sealed = existing.webhook_token_hash, existing.webhook_token_sealed
    else:
        token = secrets.token_urlsafe(24)
        hook_hash, hook_sealed = token_hash(token), box.seal(token)
    for sid in body.auto_bridge_session_ids:
        session = await sessions_db.get(app[POOL], sid)
        if session is None or session.owner_id != user_id:
            raise _invalid("auto_bridge_session_ids", f"no WhatsApp account {sid} of yours")
    saved = await jira_db.upsert(
        app[POOL],
        user_id,
        base_url=body.base_url.rstrip("/"),
        auth_kind=body.auth_kind,
        email=body.email,
        token_sealed=token_sealed,
        project_key=body.project_key.upper(),
        issue_type=body.issue_type,
        webhook_secret_sealed=secret_sealed,
        webhook_token_hash=hook_hash,
        webhook_token_sealed=hook_sealed,
        enabled=body.enabled,
        auto_bridge_sessions=body.auto_bridge_session_ids,
        reopen_resolved=body.reopen_resolved,
        status_notices=body.status_notices,
        status_notice_text=body.status_notice_text or None,
        language=body.language,
    )
    app[JIRA].changed()
    return saved


@router.get(
    "/api/v1/jira/connection",
    summary="Your Jira connection (secrets are never shown)",
    response=JiraConnectionOut,
    errors=(404,),
)
async def get_connection(request: web.Request) -> JiraConnectionOut:
    return _out(request, await _own(request))


@router.route(
    "PUT",
    "/api/v1/jira/connection",
    summary="Connect Jira or change the connection (site, credentials, project, rules)",
    body=JiraConnectionIn,
    response=JiraConnectionOut,
    errors=(400,),
)
async def put_connection(request: web.Request, body: JiraConnectionIn) -> JiraConnectionOut:
    user = current_user(request)
    existing = await jira_db.get(request.app[POOL], user.id)
    saved = await save_connection(request.app, user.id, body, existing)
    log.info("jira connection saved", user_id=user.id)
    return _out(request, saved)


@router.delete(
    "/api/v1/jira/connection",
    summary="Disconnect Jira (tickets stay in Jira; the mappings go)",
    status=204,
    errors=(404,),
)
async def delete_connection(request: web.Request) -> None:
    user = current_user(request)
    if not await jira_db.delete(request.app[POOL], user.id):
        raise NotFound("Jira connection")
    request.app[JIRA].changed()


@router.post(
    "/api/v1/jira/test",
    summary="Check the connection: server info and the integration account",
    response=JiraTestResult,
    errors=(404,),
)
async def test_connection(request: web.Request) -> JiraTestResult:
    connection = await _own(request)
    try:
        found = await request.app[JIRA].check(connection)
    except JiraFailure as exc:
        return JiraTestResult(ok=False, error=str(exc), kind=exc.kind)
    server, account = found["server"], found["account"]
    return JiraTestResult(
        ok=True,
        server_title=server.get("serverTitle"),
        version=server.get("version"),
        deployment=server.get("deploymentType"),
        account_id=str(account.get("accountId") or account.get("key") or account.get("name")),
        account_name=account.get("displayName") or account.get("name"),
    )


@router.get("/api/v1/jira/status", summary="How the bridge is doing", response=JiraStatus)
async def get_status(request: web.Request) -> JiraStatus:
    user = current_user(request)
    pool = request.app[POOL]
    connection = await jira_db.get(pool, user.id)
    if connection is None:
        return JiraStatus(configured=False)
    waiting, failed = await jira_db.pending_jobs(pool, user.id)
    latest = await pool.fetchval("SELECT last_seq FROM event_counters WHERE user_id = $1", user.id)
    counts = await jira_db.ticket_counts(pool, user.id)
    message = None
    if connection.state == "rejected":
        message = "credentials rejected: Jira answered 401/403; fix them and test the connection"
    elif not connection.enabled:
        message = "the bridge is switched off"
    return JiraStatus(
        configured=True,
        enabled=connection.enabled,
        state=connection.state,
        message=message,
        last_error=connection.last_error,
        failing_since=connection.failing_since,
        account_name=connection.account_name,
        jobs_waiting=waiting,
        jobs_failed=failed,
        events_behind=max(0, int(latest or 0) - connection.last_seq),
        tickets_open=counts.get("open", 0) + counts.get("pending", 0),
        tickets_total=sum(counts.values()),
    )


def _ticket_out(t: Ticket) -> TicketOut:
    return TicketOut(**{k: v for k, v in t.__dict__.items() if k in TicketOut.model_fields})


@router.get(
    "/api/v1/jira/tickets",
    summary="Tickets of your bridged chats (the chat -> issue key mapping)",
    query=TicketQuery,
    response=TicketList,
)
async def list_tickets(request: web.Request, query: TicketQuery) -> TicketList:
    found = await jira_db.list_tickets(
        request.app[POOL],
        current_user(request).id,
        session_id=query.session_id,
        conversation_id=query.conversation_id,
        state=query.state,
        limit=query.limit,
    )
    return TicketList(items=[_ticket_out(t) for t in found])


@router.post(
    "/api/v1/jira/webhook/{token}",
    summary="Jira's webhook (comment_created, jira:issue_updated); signed when a secret is set",
    response=JiraWebhookAnswer,
    auth="public",
    errors=(400, 401, 404),
)
async def jira_webhook(request: web.Request) -> JiraWebhookAnswer:
    token = request.match_info["token"]
    connection = await jira_db.by_token_hash(request.app[POOL], token_hash(token))
    if connection is None:
        raise NotFound("webhook")
    raw = await request.read()
    bridge = request.app[JIRA]
    if connection.webhook_secret_sealed is not None:
        secret = bridge.box.open(connection.webhook_secret_sealed)
        if not signature_ok(secret, raw, request.headers.get("X-Hub-Signature")):
            log.warning("jira webhook with a bad signature", user_id=connection.user_id)
            raise ApiError(401, "the signature does not match", code="bad_signature")
    try:
        body: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "the body is not JSON", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "the body is not a JSON object", code="invalid_json")
    identifier = request.headers.get("X-Atlassian-Webhook-Identifier") or (
        "sha256:" + hashlib.sha256(raw).hexdigest()
    )
    if "\x00" in identifier or len(identifier) > 200:
        raise ApiError(400, "bad X-Atlassian-Webhook-Identifier", code="bad_identifier")
    if not connection.enabled:
        return JiraWebhookAnswer(outcome="ignored: the bridge is switched off")
    outcome = await bridge.take_webhook(connection, identifier, body)
    log.info("jira webhook", user_id=connection.user_id, outcome=outcome)
    return JiraWebhookAnswer(outcome=outcome)
