"""A fake Graph API (WhatsApp Cloud API) on 127.0.0.1, shaped after shared/CLOUD_API.md.

- `POST /{v}/{phone_number_id}/messages`: records the message, answers a `wamid`;
  `POST .../media` stores an upload; `GET /{v}/{media_id}` answers a download URL that lives
  five minutes and needs the same bearer token; `GET|POST /{v}/{waba_id}/message_templates`;
  `GET /{v}/{phone_number_id}`: the number.
- Every call needs `Authorization: Bearer <a token we know>`; otherwise error 190.
- `fail(code, ...)` makes the next sends (optionally to one recipient) answer a Graph error.
- `payload(...)`, `sign(...)` and `emit(...)` build Meta's webhook envelopes and POST them,
  signed, at a gateway.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

VERSION = "v21.0"
PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
WABA_ID = "102290129340398"
TOKEN = "EAAG-test-access-token"
APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"

ERROR_TEXT = {
    190: ("OAuthException", "Error validating access token: Session has expired"),
    130429: ("OAuthException", "Rate limit hit"),
    131056: ("OAuthException", "(Business Account, Consumer Account) pair rate limit hit"),
    131047: ("OAuthException", "Re-engagement message"),
    131026: ("OAuthException", "Message undeliverable"),
    132001: ("OAuthException", "Template name does not exist in the translation"),
}


@dataclass
class Failure:
    code: int
    times: int
    recipient: str | None
    status: int = 400


@dataclass
class FakeGraph:
    tokens: set[str] = field(default_factory=lambda: {TOKEN})
    sent: list[dict[str, Any]] = field(default_factory=list)
    send_times: list[float] = field(default_factory=list)
    uploads: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    templates: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    read_marks: list[str] = field(default_factory=list)
    syncs: list[dict[str, Any]] = field(default_factory=list)
    url_life: float = 300.0
    base: str = ""
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _urls: dict[str, tuple[str, float]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_get("/download/{key}", self._download)
        app.router.add_route("*", "/{version}/{node}", self._node)
        app.router.add_route("*", "/{version}/{node}/{edge}", self._edge)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        return self.base

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- test controls ---------------------------------------------------------------------

    def add_media(self, data: bytes, mime: str) -> str:
        media_id = f"{next(self._ids):015d}"
        self.media[media_id] = (data, mime)
        return media_id

    def fail(
        self, code: int, *, times: int = 1, recipient: str | None = None, status: int = 400
    ) -> None:
        self.failures.append(Failure(code, times, recipient, status))

    # -- handlers --------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.tokens

    @staticmethod
    def _error(code: int, status: int = 400, details: str = "") -> web.Response:
        kind, message = ERROR_TEXT.get(code, ("OAuthException", "error"))
        body = {
            "error": {
                "message": f"({'#'}{code}) {message}",
                "type": kind,
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": details or message},
                "fbtrace_id": "AbCdEf",
            }
        }
        return web.json_response(body, status=401 if code == 190 else status)

    async def _node(self, request: web.Request) -> web.StreamResponse:
        self.calls.append((request.method, request.path))
        if not self._authorized(request):
            return self._error(190)
        node = request.match_info["node"]
        if node in self.media and request.method == "GET":
            data, mime = self.media[node]
            key = hashlib.sha256(f"{node}{time.monotonic()}".encode()).hexdigest()[:24]
            self._urls[key] = (node, time.monotonic() + self.url_life)
            return web.json_response(
                {
                    "url": f"{self.base}/download/{key}",
                    "mime_type": mime,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "file_size": len(data),
                    "id": node,
                    "messaging_product": "whatsapp",
                }
            )
        if node == PHONE_NUMBER_ID:
            return web.json_response(
                {
                    "id": node,
                    "display_phone_number": "+1 555-078-3881",
                    "verified_name": "Test Business",
                    "quality_rating": "GREEN",
                }
            )
        return self._error(100, 400, "Unsupported get request")

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.Response(status=401)
        found = self._urls.get(request.match_info["key"])
        if found is None or found[1] < time.monotonic():
            return web.Response(status=404)
        data, mime = self.media[found[0]]
        return web.Response(body=data, content_type=mime.split(";")[0])

    async def _edge(self, request: web.Request) -> web.StreamResponse:
        self.calls.append((request.method, request.path))
        if not self._authorized(request):
            return self._error(190)
        edge = request.match_info["edge"]
        if edge == "messages" and request.method == "POST":
            return await self._send(request)
        if edge == "media" and request.method == "POST":
            form = await request.post()
            upload = form.get("file")
            if not isinstance(upload, web.FileField):
                return self._error(100, 400, "file is required")
            media_id = f"{next(self._ids):015d}"
            self.uploads[media_id] = (upload.file.read(), str(form.get("type") or ""))
            self.media[media_id] = self.uploads[media_id]
            return web.json_response({"id": media_id})
        if edge == "message_templates":
            if request.method == "GET":
                return web.json_response({"data": self.templates, "paging": {}})
            body = await request.json()
            refusal = _dangling_variable(body)
            if refusal:
                return self._error(100, 400, refusal)
            template_id = f"{next(self._ids):015d}"
            self.templates.append({**body, "id": template_id, "status": "PENDING"})
            return web.json_response(
                {"id": template_id, "status": "PENDING", "category": body.get("category")}
            )
        if edge == "smb_app_data":
            self.syncs.append(await request.json())
            return web.json_response({"success": True})
        return self._error(100, 400, "Unsupported request")

    async def _send(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("status") == "read":
            self.read_marks.append(str(body.get("message_id")))
            return web.json_response({"success": True})
        to = str(body.get("to", ""))
        for failure in list(self.failures):
            if failure.recipient is None or failure.recipient == to:
                failure.times -= 1
                if failure.times <= 0:
                    self.failures.remove(failure)
                return self._error(failure.code, failure.status)
        wamid = f"wamid.FAKE{next(self._ids):010d}"
        self.sent.append({**body, "_id": wamid})
        self.send_times.append(time.monotonic())
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": wamid, "message_status": "accepted"}],
            }
        )


# -- webhooks at the gateway --------------------------------------------------------------------


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def envelope(
    value: dict[str, Any],
    *,
    field_name: str = "messages",
    phone_number_id: str = PHONE_NUMBER_ID,
) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "changes": [
                    {
                        "field": field_name,
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": DISPLAY_NUMBER,
                                "phone_number_id": phone_number_id,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def inbound(
    *messages: dict[str, Any], name: str = "Sheena", wa_id: str = "16505551234", **kw: Any
) -> dict[str, Any]:
    return envelope(
        {
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": list(messages),
        },
        **kw,
    )


_counter = itertools.count(1)


def msg(kind: str, body: Any = None, *, ts: int | None = None, **extra: Any) -> dict[str, Any]:
    """One `messages[]` item from 16505551234 (override with from=...)."""
    item: dict[str, Any] = {
        "from": "16505551234",
        "id": f"wamid.IN{next(_counter):08d}",
        "timestamp": str(ts if ts is not None else int(time.time())),
        "type": kind,
    }
    if body is not None:
        item[kind] = body
    item.update(extra)
    return item


def statuses(*items: dict[str, Any]) -> dict[str, Any]:
    return envelope({"statuses": list(items)})


def status(
    wamid: str, state: str, *, ts: int | None = None, errors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": wamid,
        "status": state,
        "timestamp": str(ts if ts is not None else int(time.time())),
        "recipient_id": "16505551234",
    }
    if errors:
        item["errors"] = errors
    return item


def _dangling_variable(template: dict[str, Any]) -> str | None:
    """Meta's review: a BODY may not start or end with a {{n}} variable (text around it)."""
    for component in template.get("components") or []:
        if component.get("type") != "BODY":
            continue
        text = str(component.get("text") or "").strip()
        start = re.match(r"^\{\{\d+\}\}", text)
        end = re.search(r"\{\{\d+\}\}$", text)
        if start or end:
            return "Variables can't be at the start or end of the template."
    return None


async def emit(
    http: Any,
    payload: dict[str, Any] | bytes,
    *,
    path: str = "/api/whatsapp/webhook",
    secret: str | None = APP_SECRET,
    signature: str | None = None,
) -> Any:
    """POST a webhook at a gateway (an aiohttp TestClient or a session with a base URL)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    elif secret is not None:
        headers["X-Hub-Signature-256"] = sign(body, secret)
    data: Any = io.BytesIO(body) if len(body) > 1024 * 1024 else body
    return await http.post(path, data=data, headers=headers)


__all__ = ["FakeGraph", "aiohttp", "emit", "envelope", "inbound", "msg", "sign", "status"]
