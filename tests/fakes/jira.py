"""A fake Jira on 127.0.0.1, faithful to what the real `jira` package calls (shared/CLOUD_API.md).

REST v2 (and the same under v3): `GET serverInfo` (with `versionNumbers`), `GET myself`,
`GET project/{key}`, `POST issue` -> 201 `{id, key, self}`, `GET issue/{key}`,
`GET|POST issue/{key}/comment` (POST -> 201), `POST issue/{key}/attachments` (multipart `file`,
needs `X-Atlassian-Token: no-check`, answers a JSON list), `GET|POST issue/{key}/transitions`
(POST -> 204), `GET search` and `GET|POST search/jql` by label. Errors carry
`errorMessages`/`errors`.

Faults: `fail(status, times, ops)` answers errors (429 with `Retry-After`, 5xx, 401), `down()`
/`up()` refuse everything with 503, `delay` slows every answer, `lose_answers` makes the next
POSTs take effect and then hang past the client's timeout (the answer is lost). `deliver()`
POSTs a webhook at a gateway, signed with `X-Hub-Signature` when a secret is given.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import aiohttp
from aiohttp import web

EMAIL = "bot@example.com"
API_TOKEN = "jira-api-token"
PAT = "jira-personal-access-token"
BOT_ACCOUNT = "557058:bot-account"
AGENT_ACCOUNT = "557058:agent-ana"

STATUSES = {
    "To Do": "new",
    "In Progress": "indeterminate",
    "Done": "done",
    "Cancelled": "done",
}
TRANSITIONS = [
    ("11", "Start progress", "In Progress"),
    ("21", "Resolve", "Done"),
    ("31", "Cancel", "Cancelled"),
    ("41", "Reopen", "To Do"),
]


@dataclass
class Fault:
    status: int
    times: int
    ops: set[str] | None
    retry_after: int | None = None


@dataclass
class FakeJira:
    deployment: str = "Cloud"
    project: str = "SUP"
    issues: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    op_times: list[tuple[str, float]] = field(default_factory=list)  # (op, monotonic time)
    retry_after_date: bool = False  # send Retry-After as an HTTP-date instead of seconds
    faults: list[Fault] = field(default_factory=list)
    delay: float = 0.0
    is_down: bool = False
    lose_answers: int = 0
    lose_seconds: float = 3.0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(10000))
    _keys: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    url: str = ""

    # -- life cycle

    async def start(self) -> str:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_route("*", "/rest/api/{v:[23]}/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- control

    def fail(
        self,
        status: int,
        times: int = 1,
        ops: set[str] | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.faults.append(Fault(status, times, ops, retry_after))

    def down(self) -> None:
        self.is_down = True

    def up(self) -> None:
        self.is_down = False

    def comments(self, key: str) -> list[dict[str, Any]]:
        return list(self.issues[key]["comments"])

    def issue_keys(self) -> list[str]:
        return list(self.issues)

    def set_status(self, key: str, name: str) -> None:
        self.issues[key]["status"] = name

    def add_agent_comment(
        self, key: str, body: str, *, author: str = AGENT_ACCOUNT, public: bool = True
    ) -> dict[str, Any]:
        comment = self._comment(key, body, author, "Ana Agent")
        comment["jsdPublic"] = public
        return comment

    # -- webhooks

    def comment_event(self, key: str, comment: dict[str, Any]) -> dict[str, Any]:
        return {
            "timestamp": 1700000000000,
            "webhookEvent": "comment_created",
            "comment": comment,
            "issue": self._issue_json(key),
        }

    def status_event(self, key: str, before: str, after: str) -> dict[str, Any]:
        self.set_status(key, after)
        return {
            "timestamp": 1700000000000,
            "webhookEvent": "jira:issue_updated",
            "issue_event_type_name": "issue_generic",
            "issue": self._issue_json(key),
            "changelog": {
                "id": str(next(self._ids)),
                "items": [
                    {
                        "field": "status",
                        "fieldtype": "jira",
                        "fromString": before,
                        "toString": after,
                    }
                ],
            },
        }

    @staticmethod
    def sign(secret: str, body: bytes) -> str:
        return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()

    async def deliver(
        self,
        url: str,
        event: dict[str, Any],
        *,
        secret: str | None = None,
        identifier: str | None = None,
        signature: str | None = None,
    ) -> tuple[int, Any]:
        body = json.dumps(event).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Atlassian-Webhook-Identifier": identifier or str(uuid.uuid4()),
        }
        if signature is not None:
            headers["X-Hub-Signature"] = signature
        elif secret is not None:
            headers["X-Hub-Signature"] = self.sign(secret, body)
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers) as resp,
        ):
            try:
                answer = await resp.json()
            except (aiohttp.ContentTypeError, ValueError):
                answer = await resp.text()
            return resp.status, answer

    # -- the server

    def _auth(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            import base64

            user, _, token = base64.b64decode(header[6:]).decode().partition(":")
            return BOT_ACCOUNT if (user, token) == (EMAIL, API_TOKEN) else None
        if header == f"Bearer {PAT}":
            return BOT_ACCOUNT
        return None

    def _error(
        self, status: int, *messages: str, errors: dict[str, str] | None = None
    ) -> web.Response:
        return web.json_response(
            {"errorMessages": list(messages), "errors": errors or {}}, status=status
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"].rstrip("/")
        op = self._op(request.method, path)
        self.calls.append((request.method, path))
        self.op_times.append((op, time.monotonic()))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.is_down:
            return self._error(503, "Service unavailable")
        for fault in self.faults:
            if fault.times > 0 and (fault.ops is None or op in fault.ops):
                fault.times -= 1
                resp = self._error(fault.status, f"injected {fault.status}")
                if fault.retry_after is not None:
                    resp.headers["Retry-After"] = (
                        formatdate(time.time() + fault.retry_after, usegmt=True)
                        if self.retry_after_date
                        else str(fault.retry_after)
                    )
                return resp
        if path == "serverInfo":
            return web.json_response(
                {
                    "baseUrl": self.url,
                    "version": "1001.0.0-SNAPSHOT" if self.deployment == "Cloud" else "9.12.0",
                    "versionNumbers": [1001, 0, 0] if self.deployment == "Cloud" else [9, 12, 0],
                    "deploymentType": self.deployment,
                    "buildNumber": 100250,
                    "serverTitle": "Fake Jira",
                }
            )
        account = self._auth(request)
        if account is None:
            return self._error(401, "You are not authenticated.")
        try:
            response = await self._route(request, op, path)
        except KeyError:
            return self._error(404, "Issue does not exist or you do not have permission to see it.")
        if (
            request.method == "POST"
            and self.lose_answers > 0
            and op in ("create_issue", "add_comment")
        ):
            self.lose_answers -= 1
            await asyncio.sleep(self.lose_seconds)  # done, but the client stops waiting
        return response

    @staticmethod
    def _op(method: str, path: str) -> str:
        if path == "issue" and method == "POST":
            return "create_issue"
        if path.endswith("/comment"):
            return "add_comment" if method == "POST" else "get_comments"
        if path.endswith("/attachments"):
            return "add_attachment"
        if path.endswith("/transitions"):
            return "transition" if method == "POST" else "transitions"
        if path.startswith("search"):
            return "search"
        if path.startswith("issue/"):
            return "get_issue"
        return path

    async def _route(self, request: web.Request, op: str, path: str) -> web.StreamResponse:
        if path == "myself":
            return web.json_response(
                {
                    "accountId": BOT_ACCOUNT,
                    "key": "bot",
                    "name": "bot",
                    "displayName": "wagate bot",
                    "emailAddress": EMAIL,
                    "active": True,
                }
            )
        if path == "field":
            return web.json_response(
                [
                    {"id": f, "key": f, "name": f.title(), "custom": False, "clauseNames": [f]}
                    for f in ("summary", "status", "labels", "description", "attachment")
                ]
            )
        if path.startswith("project/"):
            key = path.split("/")[1]
            if key != self.project:
                return self._error(404, f"No project could be found with key '{key}'.")
            return web.json_response({"id": "10000", "key": key, "name": "Support"})
        if op == "create_issue":
            return await self._create(request)
        if op == "search":
            return await self._search(request)
        match = re.fullmatch(r"issue/([^/]+)(?:/(comment|attachments|transitions))?", path)
        if not match:
            return self._error(404, f"no route {path}")
        key, sub = match.group(1), match.group(2)
        key = self._key_of(key)
        issue = self.issues[key]
        if sub is None:
            return web.json_response(self._issue_json(key))
        if sub == "comment":
            if request.method == "GET":
                return web.json_response(
                    {
                        "startAt": 0,
                        "maxResults": 5000,
                        "total": len(issue["comments"]),
                        "comments": issue["comments"],
                    }
                )
            body = await request.json()
            if not body.get("body"):
                return self._error(400, errors={"comment": "Comment body can not be empty!"})
            comment = self._comment(key, body["body"], BOT_ACCOUNT, "wagate bot")
            return web.json_response(comment, status=201)
        if sub == "attachments":
            if request.headers.get("X-Atlassian-Token") != "no-check":
                return self._error(403, "XSRF check failed")
            reader = await request.multipart()
            created = []
            async for part in reader:
                if part.name != "file":  # type: ignore[union-attr]
                    continue
                data = await part.read()  # type: ignore[union-attr]
                if not data:
                    return self._error(400, "empty file")
                attachment = {
                    "id": str(next(self._ids)),
                    "filename": part.filename,  # type: ignore[union-attr]
                    "size": len(data),
                    "mimeType": "application/octet-stream",
                    "self": f"{self.url}/rest/api/2/attachment/x",
                    "content": f"{self.url}/secure/attachment/x",
                }
                issue["attachments"].append({**attachment, "data": data})
                created.append(attachment)
            return web.json_response(created)
        if request.method == "GET":
            return web.json_response(
                {
                    "transitions": [
                        {
                            "id": tid,
                            "name": name,
                            "to": {
                                "name": to,
                                "statusCategory": {"key": STATUSES[to]},
                            },
                        }
                        for tid, name, to in TRANSITIONS
                        if to != issue["status"]
                    ]
                }
            )
        body = await request.json()
        tid = str((body.get("transition") or {}).get("id"))
        found = [t for t in TRANSITIONS if t[0] == tid and t[2] != issue["status"]]
        if not found:
            return self._error(400, errors={"transition": "Transition id is not valid"})
        issue["status"] = found[0][2]
        issue["transitions"].append(found[0][2])
        return web.Response(status=204)

    def _key_of(self, key_or_id: str) -> str:
        if key_or_id in self.issues:
            return key_or_id
        for key, issue in self.issues.items():
            if issue["id"] == key_or_id:
                return key
        raise KeyError(key_or_id)

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        fields = body.get("fields") or {}
        project = (fields.get("project") or {}).get("key")
        if project != self.project:
            return self._error(400, errors={"project": "valid project is required"})
        if not fields.get("summary"):
            return self._error(400, errors={"summary": "You must specify a summary of the issue."})
        key = f"{self.project}-{next(self._keys)}"
        issue_id = str(next(self._ids))
        self.issues[key] = {
            "id": issue_id,
            "key": key,
            "fields": fields,
            "status": "To Do",
            "comments": [],
            "attachments": [],
            "transitions": [],
        }
        return web.json_response(
            {"id": issue_id, "key": key, "self": f"{self.url}/rest/api/2/issue/{issue_id}"},
            status=201,
        )

    async def _search(self, request: web.Request) -> web.Response:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST":
            params.update(await request.json())
        jql = str(params.get("jql", ""))
        label = re.search(r'labels\s*=\s*"([^"]+)"', jql)
        found = [
            self._issue_json(k)
            for k, i in self.issues.items()
            if label is None or label.group(1) in (i["fields"].get("labels") or [])
        ]
        return web.json_response(
            {"startAt": 0, "maxResults": 50, "total": len(found), "issues": found, "isLast": True}
        )

    def _comment(self, key: str, body: str, author: str, name: str) -> dict[str, Any]:
        comment = {
            "id": str(next(self._ids)),
            "self": f"{self.url}/rest/api/2/issue/{key}/comment/x",
            "body": body,
            "author": {"accountId": author, "displayName": name, "active": True},
            "updateAuthor": {"accountId": author, "displayName": name},
            "created": "2024-01-01T00:00:00.000+0000",
            "updated": "2024-01-01T00:00:00.000+0000",
            "jsdPublic": True,
        }
        self.issues[key]["comments"].append(comment)
        return comment

    def _issue_json(self, key: str) -> dict[str, Any]:
        issue = self.issues[key]
        status = issue["status"]
        return {
            "id": issue["id"],
            "key": key,
            "self": f"{self.url}/rest/api/2/issue/{issue['id']}",
            "fields": {
                **issue["fields"],
                "status": {
                    "name": status,
                    "statusCategory": {"key": STATUSES[status], "name": status},
                },
                "attachment": [
                    {k: v for k, v in a.items() if k != "data"} for a in issue["attachments"]
                ],
                "comment": {"comments": issue["comments"], "total": len(issue["comments"])},
            },
        }
