"""CloudWebhookHandler: Meta's webhook at `/api/whatsapp/webhook` and
`/api/integrations/whatsapp/webhook`.

GET answers Meta's verification. POST checks `X-Hub-Signature-256` over the raw bytes before
anything is parsed, then commits the raw body (group commit, see `gateway.cloud.inbox`) and only
then answers 200; the processing happens from the table.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from db.cloud import InboxRow
from gateway.cloud import translate
from gateway.errors import ApiError
from gateway.keys import CLOUD, METRICS
from gateway.routing import ApiRouter, RouteSpec

MAX_BODY_BYTES = 3 * 1024 * 1024
PATHS = ("/api/whatsapp/webhook", "/api/integrations/whatsapp/webhook")

router = ApiRouter("cloud-webhook")


class WebhookVerifyQuery(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    mode: str | None = Field(default=None, alias="hub.mode", description="`subscribe`")
    verify_token: str | None = Field(
        default=None, alias="hub.verify_token", description="The verify token of a number"
    )
    challenge: str | None = Field(
        default=None, alias="hub.challenge", description="Echoed back as the body on success"
    )


class WebhookPayload(BaseModel):
    """Meta's envelope (`object`, `entry[].changes[].value`), signed with the app secret in
    `X-Hub-Signature-256: sha256=<hex>`; unknown keys are kept."""

    model_config = ConfigDict(extra="allow")

    object: str = Field(description="`whatsapp_business_account`")
    entry: list[dict[str, Any]]


class WebhookAnswer(BaseModel):
    success: bool


def _refused(status: int, code: str, message: str) -> ApiError:
    return ApiError(status, message, code=code)


async def verify(request: web.Request) -> web.StreamResponse:
    """Meta's subscription check: 200 with exactly the challenge, or 403."""
    service = request.app[CLOUD]
    mode = request.query.get("hub.mode")
    token = request.query.get("hub.verify_token")
    challenge = request.query.get("hub.challenge")
    ok = mode == "subscribe" and challenge is not None
    if ok and not service.numbers.verify_token_matches(token):
        ok = await service.numbers.maybe_reload() and service.numbers.verify_token_matches(token)
    if not ok or challenge is None:
        service.webhooks.labels("verify_refused").inc()
        raise _refused(403, "forbidden", "verification refused")
    service.webhooks.labels("verified").inc()
    return web.Response(text=challenge, content_type="text/plain")


async def _body(request: web.Request) -> bytes:
    length = request.content_length
    if length is not None:
        if length > MAX_BODY_BYTES:
            raise _refused(413, "payload_too_large", f"body is larger than {MAX_BODY_BYTES} bytes")
        return await request.content.readexactly(length) if length else b""
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(65536):
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise _refused(413, "payload_too_large", f"body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def receive(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    service = request.app[CLOUD]
    try:
        body = await _body(request)
    except ApiError:
        service.webhooks.labels("too_large").inc()
        raise
    signature = request.headers.get("X-Hub-Signature-256")
    # Checked over the raw bytes before anything is parsed. A number added by another
    # gateway process: look again, at most once a second.
    matched = service.numbers.matching_secrets(body, signature)
    if not matched and signature and await service.numbers.maybe_reload():
        matched = service.numbers.matching_secrets(body, signature)
    if not matched:
        service.webhooks.labels("bad_signature").inc()
        raise _refused(401, "bad_signature", "missing or wrong X-Hub-Signature-256")
    try:
        payload = json.loads(body)
        text = body.decode()
    except (ValueError, UnicodeDecodeError) as exc:
        service.webhooks.labels("invalid").inc()
        raise _refused(400, "invalid_json", "the body is not JSON") from exc
    if not isinstance(payload, dict) or payload.get("object") != "whatsapp_business_account":
        service.webhooks.labels("invalid").inc()
        raise _refused(400, "invalid_payload", "not a whatsapp_business_account webhook")
    if "\x00" in text:
        text = text.replace("\x00", "")
    ids = translate.phone_number_ids(payload)
    numbers = [service.numbers.by_phone_number_id(i) for i in ids]
    if ids and not any(numbers) and await service.numbers.maybe_reload():
        numbers = [service.numbers.by_phone_number_id(i) for i in ids]
    known = next((n for n in numbers if n is not None), None)
    if known is None and not ids:
        # Account-level fields (template status updates) name the WhatsApp Business Account.
        wabas = translate.waba_ids(payload)
        owners = [n for w in wabas for n in service.numbers.by_waba_id(w)]
        if wabas and not owners and await service.numbers.maybe_reload():
            owners = [n for w in wabas for n in service.numbers.by_waba_id(w)]
        signed = [n for n in owners if service.numbers.signed_for(n, matched)]
        known = signed[0] if signed else None
        forged = bool(owners) and not signed
    else:
        # Every known number the payload names must be one whose own app secret signed
        # it; otherwise one tenant's secret could write into another tenant's inbox.
        forged = any(not service.numbers.signed_for(n, matched) for n in numbers if n is not None)
    if forged:
        service.webhooks.labels("bad_signature").inc()
        raise _refused(
            401, "bad_signature", "X-Hub-Signature-256 is not made with this number's app secret"
        )
    row = InboxRow(
        event_at=translate.oldest_timestamp(payload),
        phone_number_id=ids[0] if ids else None,
        session_id=known.session_id if known else None,
        body=text,
        state="pending" if known else "unknown_number",
    )
    if known is not None:
        service.parsed(text, payload)
    try:
        await service.committer.commit(row)
    except BaseException:
        service.not_parsed(text)
        raise
    service.webhooks.labels("stored" if known else "unknown_number").inc()
    request.app[METRICS].cloud_webhook.observe(time.perf_counter() - started)
    return web.json_response({"success": True})


def _register() -> None:
    for index, path in enumerate(PATHS):
        suffix = "" if index == 0 else "_integrations"
        for method, handler, spec in (
            (
                "GET",
                verify,
                RouteSpec(
                    method="GET",
                    path=path,
                    summary="Cloud API webhook verification (Meta's hub.challenge)",
                    tag="cloud",
                    auth="public",
                    body=None,
                    query=WebhookVerifyQuery,
                    response=None,
                    status=200,
                    errors=(403,),
                    operation_id=f"cloud_webhook_verify{suffix}",
                    description="200 with exactly `hub.challenge` as a text/plain body when "
                    "`hub.mode=subscribe` and `hub.verify_token` is a configured number's "
                    "verify token; 403 otherwise.",
                ),
            ),
            (
                "POST",
                receive,
                RouteSpec(
                    method="POST",
                    path=path,
                    summary="Cloud API webhook events (signed by Meta)",
                    tag="cloud",
                    auth="public",
                    body=WebhookPayload,
                    query=None,
                    response=WebhookAnswer,
                    status=200,
                    errors=(400, 401, 413),
                    operation_id=f"cloud_webhook_receive{suffix}",
                    description="`X-Hub-Signature-256` is checked over the raw body first (401). "
                    "The body is committed before the 200; processing follows from the table.",
                ),
            ),
        ):
            handler.wagate_auth = "public"  # type: ignore[attr-defined]
            handler.wagate_quiet_log = True  # type: ignore[attr-defined]
            router.table.route(method, path)(handler)
            router.specs.append(spec)


_register()
