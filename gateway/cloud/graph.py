"""GraphClient: the few Graph API calls wagate makes, with Meta's errors translated into
`GraphError` at this boundary.

Every call takes the number's access token; the base URL and version come from settings, so a
test double on 127.0.0.1 stands in for graph.facebook.com.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# Meta's error codes wagate acts on.
AUTH_EXPIRED = 190
THROUGHPUT = 130429
SPAM_LIMIT = 131048
PAIR_RATE_LIMIT = 131056
WINDOW_CLOSED = 131047


class GraphError(Exception):
    """The Graph API refused a call (its `error` object), or could not be reached (code 0)."""

    def __init__(
        self, code: int, message: str, *, status: int = 0, details: str | None = None
    ) -> None:
        super().__init__(f"({code}) {message}" + (f": {details}" if details else ""))
        self.code = code
        self.message = message
        self.status = status
        self.details = details

    @property
    def unreachable(self) -> bool:
        return self.code == 0


@dataclass(frozen=True)
class MediaUrl:
    url: str
    mime_type: str | None
    sha256: str | None
    file_size: int | None


@dataclass
class GraphClient:
    http: aiohttp.ClientSession
    base_url: str
    version: str
    timeout: float = 30.0
    calls: dict[str, int] = field(default_factory=dict)

    def _url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}/{self.version}/{path.lstrip('/')}"

    async def _call(
        self,
        method: str,
        path_or_url: str,
        token: str,
        *,
        json_body: Any = None,
        data: Any = None,
        params: dict[str, str] | None = None,
        absolute: bool = False,
    ) -> Any:
        url = path_or_url if absolute else self._url(path_or_url)
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with self.http.request(
                method,
                url,
                headers=headers,
                json=json_body,
                data=data,
                params=params,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise _error_of(resp.status, body)
                if resp.content_type == "application/json":
                    return json.loads(body) if body else {}
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GraphError(0, f"Graph API unreachable: {type(exc).__name__} {exc}") from exc

    async def check(self, phone_number_id: str, token: str) -> dict[str, Any]:
        """The number as Meta sees it (`display_phone_number`, `verified_name`, ...)."""
        found = await self._call("GET", phone_number_id, token)
        return dict(found) if isinstance(found, dict) else {}

    async def send(self, phone_number_id: str, token: str, message: dict[str, Any]) -> str:
        """Send one message; the `wamid` Meta gave it."""
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", **message}
        answer = await self._call("POST", f"{phone_number_id}/messages", token, json_body=body)
        try:
            return str(answer["messages"][0]["id"])
        except (KeyError, IndexError, TypeError) as exc:
            raise GraphError(-1, f"unexpected answer to a send: {answer!r}"[:300]) from exc

    async def mark_read(self, phone_number_id: str, token: str, wa_message_id: str) -> None:
        body = {"messaging_product": "whatsapp", "status": "read", "message_id": wa_message_id}
        await self._call("POST", f"{phone_number_id}/messages", token, json_body=body)

    async def upload(
        self, phone_number_id: str, token: str, data: bytes, mime: str, filename: str
    ) -> str:
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", mime)
        form.add_field("file", data, filename=filename, content_type=mime)
        answer = await self._call("POST", f"{phone_number_id}/media", token, data=form)
        return str(answer["id"])

    async def media_url(self, media_id: str, token: str) -> MediaUrl:
        found = await self._call("GET", media_id, token)
        return MediaUrl(
            url=str(found["url"]),
            mime_type=found.get("mime_type"),
            sha256=found.get("sha256"),
            file_size=found.get("file_size"),
        )

    async def download(self, url: str, token: str) -> bytes:
        body = await self._call("GET", url, token, absolute=True)
        return body if isinstance(body, bytes) else json.dumps(body).encode()

    async def templates(self, waba_id: str, token: str) -> list[dict[str, Any]]:
        """Every template of the account (follows `paging.next`)."""
        found: list[dict[str, Any]] = []
        page = await self._call(
            "GET", f"{waba_id}/message_templates", token, params={"limit": "100"}
        )
        while True:
            found.extend(page.get("data", []))
            nxt = (page.get("paging") or {}).get("next")
            if not nxt or len(found) > 10_000:
                return found
            page = await self._call("GET", str(nxt), token, absolute=True)

    async def create_template(
        self, waba_id: str, token: str, template: dict[str, Any]
    ) -> dict[str, Any]:
        answer = await self._call("POST", f"{waba_id}/message_templates", token, json_body=template)
        return dict(answer)

    async def start_sync(self, phone_number_id: str, token: str, sync_type: str) -> None:
        """Coexistence: ask Meta for the Business app's contacts or history (once)."""
        body = {"messaging_product": "whatsapp", "sync_type": sync_type}
        await self._call("POST", f"{phone_number_id}/smb_app_data", token, json_body=body)


def _error_of(status: int, body: bytes) -> GraphError:
    try:
        error = json.loads(body)["error"]
        details = (error.get("error_data") or {}).get("details")
        return GraphError(
            int(error.get("code", -1)),
            str(error.get("message", "")),
            status=status,
            details=str(details) if details else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return GraphError(-1, f"HTTP {status}: {body[:200]!r}", status=status)
