"""`/api/v1/webhooks`: outgoing webhooks, their recent deliveries, test events and replays.

An operator sees only their own webhooks (another user's id is a 404); admins see all. The
signing secret is shown once, in the answer to the creation; it is kept encrypted.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, Field

from db import sessions as sessions_db
from db import webhooks as webhooks_db
from db.users import User
from db.webhooks import Webhook
from gateway.auth import current_user
from gateway.errors import ApiError, NotFound
from gateway.keys import POOL, SETTINGS, WEBHOOKS
from gateway.routing import ApiRouter, path_int
from gateway.targets import UrlRefused, check_url
from gateway.webhooks import EventName, notify_changed

router = ApiRouter("webhooks")
log = structlog.get_logger(__name__)

SECRET_PREFIX = "whsec_"


class WebhookCreate(BaseModel):
    url: str = Field(
        min_length=1,
        max_length=2048,
        description="http:// or https:// URL that receives a POST per event",
        examples=["https://example.com/wagate-hook"],
    )
    events: list[EventName] = Field(
        default=["*"], min_length=1, max_length=20, description='Event names, or "*" for all'
    )
    session_id: int | None = Field(
        default=None, description="Only events of this WhatsApp account (default: all yours)"
    )
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        description="Signing secret; generated (and shown once) when not given",
    )
    enabled: bool = True
    description: str | None = Field(default=None, max_length=200)


class WebhookPatch(BaseModel):
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    events: list[EventName] | None = Field(default=None, min_length=1, max_length=20)
    session_id: int | None = Field(
        default=None, description="Only this account's events; null for all of yours"
    )
    secret: str | None = Field(
        default=None, min_length=16, max_length=256, description="A new signing secret"
    )
    enabled: bool | None = Field(
        default=None,
        description="true resumes a failing or disabled webhook where it stopped; false pauses",
    )
    description: str | None = Field(default=None, max_length=200)


class WebhookOut(BaseModel):
    id: int
    user_id: int
    url: str
    events: list[str]
    session_id: int | None
    description: str | None
    enabled: bool
    state: str = Field(description="active, failing (retries ran out: paused) or disabled")
    last_seq: int = Field(description="The last event of your log this webhook is done with")
    latest_seq: int = Field(description="The last event of your log")
    attempts: int = Field(description="Failed attempts of the event now being retried")
    next_attempt_at: datetime | None
    failing_since: datetime | None
    last_error: str | None
    last_status: int | None
    last_delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The signing secret; shown this once only")


class WebhookList(BaseModel):
    items: list[WebhookOut]


class DeliveryOut(BaseModel):
    delivery_id: str = Field(description="X-Wagate-Delivery: the same on every retry")
    seq: int | None = Field(description="Event sequence number (null for test events)")
    event: str
    attempt: int
    status_code: int | None
    latency_ms: int | None
    delivered: bool
    error: str | None
    created_at: datetime


class DeliveryList(BaseModel):
    items: list[DeliveryOut] = Field(description="Most recent attempt first")


class DeliveryQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=200)


class ReplayQuery(BaseModel):
    from_seq: int | None = Field(
        default=None,
        ge=1,
        le=2**62,
        description="Send again from this event on (default: from the first not yet delivered)",
    )


class TestDelivery(BaseModel):
    delivery_id: str


async def _latest(request: web.Request, user_ids: list[int]) -> dict[int, int]:
    return await webhooks_db.latest_seqs(request.app[POOL], sorted(set(user_ids)))


def webhook_out(hook: Webhook, latest: dict[int, int]) -> WebhookOut:
    values = {k: v for k, v in hook.__dict__.items() if k in WebhookOut.model_fields}
    return WebhookOut(**values, latest_seq=max(latest.get(hook.user_id, 0), hook.last_seq))


async def _one_out(request: web.Request, hook: Webhook) -> WebhookOut:
    return webhook_out(hook, await _latest(request, [hook.user_id]))


async def owned_webhook(request: web.Request, user: User, webhook_id: int) -> Webhook:
    hook = await webhooks_db.get(request.app[POOL], webhook_id)
    if hook is None or (hook.user_id != user.id and not user.is_admin):
        raise NotFound("webhook")
    return hook


async def _from_path(request: web.Request) -> Webhook:
    return await owned_webhook(request, current_user(request), path_int(request, "webhook_id"))


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        400,
        f"{field}: {message}",
        code="validation_error",
        details=[{"loc": [field], "msg": message, "type": "value_error"}],
    )


def _url(request: web.Request, url: str) -> str:
    try:
        return check_url(url, allow_private=request.app[SETTINGS].webhooks_allow_private)
    except UrlRefused as exc:
        raise _invalid("url", str(exc)) from exc


async def _session_filter(request: web.Request, owner_id: int, session_id: int | None) -> None:
    if session_id is None:
        return
    session = await sessions_db.get(request.app[POOL], session_id)
    if session is None or session.owner_id != owner_id:
        raise _invalid("session_id", "no such WhatsApp account of the webhook's owner")


async def _changed(request: web.Request, webhook_id: int) -> None:
    await notify_changed(request.app[POOL], webhook_id)
    request.app[WEBHOOKS].changed()


@router.post(
    "/api/v1/webhooks",
    summary="Add a webhook (the secret is in this answer only)",
    body=WebhookCreate,
    response=WebhookCreated,
    status=201,
)
async def create_webhook(request: web.Request, body: WebhookCreate) -> WebhookCreated:
    user = current_user(request)
    url = _url(request, body.url)
    await _session_filter(request, user.id, body.session_id)
    secret = body.secret or SECRET_PREFIX + secrets.token_urlsafe(32)
    hook = await webhooks_db.create(
        request.app[POOL],
        user_id=user.id,
        url=url,
        events=sorted(set(body.events)),
        session_id=body.session_id,
        description=body.description,
        secret_encrypted=request.app[WEBHOOKS].box.seal(secret),
        enabled=body.enabled,
    )
    await _changed(request, hook.id)
    log.info("webhook created", webhook_id=hook.id)
    out = await _one_out(request, hook)
    return WebhookCreated(**out.model_dump(), secret=secret)


@router.get("/api/v1/webhooks", summary="Your webhooks", response=WebhookList)
async def list_webhooks(request: web.Request) -> WebhookList:
    user = current_user(request)
    found = await webhooks_db.list_for(request.app[POOL], None if user.is_admin else user.id)
    latest = await _latest(request, [h.user_id for h in found])
    return WebhookList(items=[webhook_out(h, latest) for h in found])


@router.get(
    "/api/v1/webhooks/{webhook_id}",
    summary="One webhook: its state and how far it got",
    response=WebhookOut,
    errors=(404,),
)
async def get_webhook(request: web.Request) -> WebhookOut:
    return await _one_out(request, await _from_path(request))


@router.patch(
    "/api/v1/webhooks/{webhook_id}",
    summary="Change the URL, filter, secret; enable (resume) or disable",
    body=WebhookPatch,
    response=WebhookOut,
    errors=(404,),
)
async def patch_webhook(request: web.Request, body: WebhookPatch) -> WebhookOut:
    hook = await _from_path(request)
    given = body.model_fields_set
    changes: dict[str, Any] = {}
    if body.url is not None:
        changes["url"] = _url(request, body.url)
    if body.events is not None:
        changes["events"] = sorted(set(body.events))
    if "session_id" in given:
        await _session_filter(request, hook.user_id, body.session_id)
        changes["session_id"] = body.session_id
    if "description" in given:
        changes["description"] = body.description
    if body.secret is not None:
        changes["secret_encrypted"] = request.app[WEBHOOKS].box.seal(body.secret)
    if body.enabled is not None:
        changes["enabled"] = body.enabled
    updated = await webhooks_db.update(request.app[POOL], hook.id, **changes)
    if updated is None:
        raise NotFound("webhook")
    await _changed(request, hook.id)
    return await _one_out(request, updated)


@router.delete(
    "/api/v1/webhooks/{webhook_id}",
    summary="Remove a webhook and its delivery history",
    status=204,
    errors=(404,),
)
async def delete_webhook(request: web.Request) -> None:
    hook = await _from_path(request)
    await webhooks_db.delete(request.app[POOL], hook.id)
    await _changed(request, hook.id)
    log.info("webhook deleted", webhook_id=hook.id)


@router.get(
    "/api/v1/webhooks/{webhook_id}/deliveries",
    summary="Recent delivery attempts: status code, latency, attempt number",
    query=DeliveryQuery,
    response=DeliveryList,
    errors=(404,),
)
async def list_deliveries(request: web.Request, query: DeliveryQuery) -> DeliveryList:
    hook = await _from_path(request)
    rows = await webhooks_db.deliveries(request.app[POOL], hook.id, query.limit)
    return DeliveryList(items=[DeliveryOut.model_validate(r) for r in rows])


@router.post(
    "/api/v1/webhooks/{webhook_id}/replay",
    summary="Send the event log again from a sequence number (resumes a paused webhook)",
    query=ReplayQuery,
    response=WebhookOut,
    status=202,
    errors=(404,),
)
async def replay_webhook(request: web.Request, query: ReplayQuery) -> WebhookOut:
    hook = await _from_path(request)
    after = hook.last_seq if query.from_seq is None else query.from_seq - 1
    updated = await webhooks_db.replay(request.app[POOL], hook.id, after)
    if updated is None:
        raise NotFound("webhook")
    await _changed(request, hook.id)
    log.info("webhook replay", webhook_id=hook.id, after_seq=after)
    return await _one_out(request, updated)


@router.post(
    "/api/v1/webhooks/{webhook_id}/test",
    summary="Send a webhook-test event to this webhook now (see its deliveries)",
    response=TestDelivery,
    status=202,
    errors=(404,),
)
async def send_test_event(request: web.Request) -> TestDelivery:
    hook = await _from_path(request)
    return TestDelivery(delivery_id=request.app[WEBHOOKS].send_test(hook))
