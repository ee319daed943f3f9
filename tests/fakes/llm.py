"""A fake OpenAI-compatible chat-completions server on 127.0.0.1.

`POST /v1/chat/completions` records every request (prompt, model, bearer token) and answers from
a script: each `script(...)` entry is used once, in order; when the script is empty the default
answer is given. An entry can answer text, ask for a person (`[HANDOFF]`), fail with an HTTP
status (429, 500, ...), or wait `delay` seconds first (a timeout on the gateway's side).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

HANDOFF = "[HANDOFF]"


@dataclass
class Reply:
    text: str = "Our opening hours are *9 to 6*, Monday to Friday."
    status: int = 200
    delay: float = 0.0


@dataclass
class FakeLLM:
    default: Reply = field(default_factory=Reply)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _script: list[Reply] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        self._script.extend(replies)

    def prompts(self) -> list[list[dict[str, str]]]:
        return [r["body"]["messages"] for r in self.requests]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.requests.append(
            {
                "body": body,
                "authorization": request.headers.get("Authorization"),
                "at": time.time(),
            }
        )
        reply = self._script.pop(0) if self._script else self.default
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status != 200:
            return web.json_response(
                {"error": {"message": "scripted failure", "type": "server_error"}},
                status=reply.status,
            )
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
