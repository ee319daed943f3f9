"""The `jira` package behind our own boundary: every call on a dedicated thread pool, its own
retries switched off (ours, from the outbox, are the only ones), its errors translated into
`JiraFailure` with a kind the bridge acts on, each call timed into the wagate_jira_* metrics.

The package is synchronous (requests) and, left to itself, sleeps and retries 429s and
connection errors for up to a minute, POSTs included: a timed-out comment could be posted
twice. Here `max_retries=0`, and a retried comment is looked for on the issue first.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import requests
import structlog
from jira import JIRA, JIRAError
from requests.adapters import HTTPAdapter

from gateway.metrics import Metrics

log = structlog.get_logger(__name__)

T = TypeVar("T")
FailureKind = Literal["transient", "rate_limited", "rejected", "invalid", "not_found"]


class JiraFailure(Exception):
    """A Jira call failed. `kind`: transient (5xx, timeout, connection) and rate_limited
    (429, wait `retry_after`) are retried; rejected (401/403) parks the operator's bridge;
    invalid (other 4xx) and not_found can not succeed as they are."""

    def __init__(
        self, kind: FailureKind, message: str, status: int | None = None, retry_after: float = 0
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class JiraCredentials:
    base_url: str
    auth_kind: str  # "cloud" (e-mail + API token) or "pat" (Server/Data Center)
    email: str | None
    token: str


@dataclass(frozen=True)
class CreatedIssue:
    key: str
    id: str
    status: str | None
    status_category: str | None


def retry_after_seconds(header: str | None, now: float | None = None) -> float:
    """`Retry-After` as seconds to wait: delta-seconds or an HTTP-date (RFC 9110); 0 when
    missing or unreadable, never negative, at most an hour."""
    if not header:
        return 0.0
    header = header.strip()
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return 0.0
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), 3600.0)


def _error_text(exc: JIRAError) -> str:
    response = exc.response
    if response is not None:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            parts = [str(m) for m in body.get("errorMessages") or []]
            parts += [f"{k}: {v}" for k, v in (body.get("errors") or {}).items()]
            if parts:
                return "; ".join(parts)[:500]
    return (exc.text or f"HTTP {exc.status_code}")[:500]


def translate(exc: BaseException) -> JiraFailure:
    if isinstance(exc, JiraFailure):
        return exc
    if isinstance(exc, JIRAError):
        status = exc.status_code
        text = _error_text(exc)
        if status in (401, 403):
            return JiraFailure("rejected", f"credentials rejected (HTTP {status}): {text}", status)
        if status == 429:
            header = exc.response.headers.get("Retry-After") if exc.response is not None else None
            retry_after = retry_after_seconds(header)
            return JiraFailure("rate_limited", f"rate limited: {text}", 429, retry_after)
        if status == 404:
            return JiraFailure("not_found", f"not found: {text}", 404)
        if status is None or status >= 500 or status in (408, 409, 425):
            return JiraFailure("transient", f"HTTP {status}: {text}", status)
        return JiraFailure("invalid", f"HTTP {status}: {text}", status)
    if isinstance(exc, requests.Timeout | TimeoutError):
        return JiraFailure("transient", f"timed out: {exc}")
    if isinstance(exc, requests.RequestException | OSError):
        return JiraFailure("transient", f"{type(exc).__name__}: {exc}"[:500])
    return JiraFailure("transient", f"{type(exc).__name__}: {exc}"[:500])


def _metric_kind(failure: JiraFailure) -> str:
    if failure.kind == "rate_limited":
        return "rate_limited"
    if failure.kind == "rejected":
        return "auth"
    if failure.status is not None:
        return f"http_{failure.status // 100}xx"
    return "timeout" if "timed out" in str(failure) else "connection"


class JiraThreads:
    """The dedicated thread pool every Jira call runs on (never the event loop's default)."""

    def __init__(self, size: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="jira")
        self.size = size

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class JiraClient:
    """One operator's Jira site. Thread-safe: calls may run on several pool threads at once."""

    def __init__(
        self,
        credentials: JiraCredentials,
        threads: JiraThreads,
        *,
        timeout: float = 20.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.credentials = credentials
        self._threads = threads
        self._timeout = timeout
        self._metrics = metrics
        self._jira: JIRA | None = None
        self._lock = threading.Lock()

    def _client(self) -> JIRA:
        with self._lock:
            if self._jira is None:
                c = self.credentials
                auth: dict[str, Any] = (
                    {"basic_auth": (c.email or "", c.token)}
                    if c.auth_kind == "cloud"
                    else {"token_auth": c.token}
                )
                jira = JIRA(
                    server=c.base_url,
                    max_retries=0,
                    timeout=self._timeout,
                    logging=False,
                    options={"check_update": False},
                    **auth,
                )
                adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self._threads.size)
                jira._session.mount("http://", adapter)
                jira._session.mount("https://", adapter)
                self._jira = jira
            return self._jira

    def close(self) -> None:
        with self._lock:
            if self._jira is not None:
                self._jira.close()  # type: ignore[no-untyped-call]
                self._jira = None

    async def _run(self, operation: str, fn: Callable[[JIRA], T]) -> T:
        def call() -> T:
            return fn(self._client())

        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._threads.executor, call)
        except Exception as exc:
            failure = translate(exc)
            if self._metrics is not None:
                self._metrics.jira_request.labels(operation, "error").observe(
                    time.monotonic() - started
                )
                self._metrics.jira_errors.labels(operation, _metric_kind(failure)).inc()
            if failure.kind == "rejected":
                self.close()  # a fresh client (and a fresh serverInfo) after new credentials
            raise failure from exc
        if self._metrics is not None:
            self._metrics.jira_request.labels(operation, "ok").observe(time.monotonic() - started)
        return result

    # -- the calls the bridge makes

    async def server_info(self) -> dict[str, Any]:
        return await self._run("server_info", lambda j: dict(j.server_info()))

    async def myself(self) -> dict[str, Any]:
        return await self._run("myself", lambda j: dict(j.myself()))

    async def create_issue(self, fields: dict[str, Any]) -> CreatedIssue:
        def create(j: JIRA) -> CreatedIssue:
            issue = j.create_issue(fields=fields, prefetch=True)
            raw = issue.raw
            status = (raw.get("fields") or {}).get("status") or {}
            category = (status.get("statusCategory") or {}).get("key")
            return CreatedIssue(str(raw["key"]), str(raw["id"]), status.get("name"), category)

        return await self._run("create_issue", create)

    async def find_by_label(self, project_key: str, label: str) -> CreatedIssue | None:
        def find(j: JIRA) -> CreatedIssue | None:
            found = j.search_issues(
                f'project = "{project_key}" AND labels = "{label}" ORDER BY created ASC',
                maxResults=1,
                fields=["status"],
                json_result=True,
            )
            issues = found.get("issues") or [] if isinstance(found, dict) else []
            if not issues:
                return None
            raw = issues[0]
            status = (raw.get("fields") or {}).get("status") or {}
            category = (status.get("statusCategory") or {}).get("key")
            return CreatedIssue(str(raw["key"]), str(raw["id"]), status.get("name"), category)

        return await self._run("search", find)

    async def issue_status(self, key: str) -> tuple[str | None, str | None]:
        def get(j: JIRA) -> tuple[str | None, str | None]:
            raw = j.issue(key, fields="status").raw
            status = (raw.get("fields") or {}).get("status") or {}
            return status.get("name"), (status.get("statusCategory") or {}).get("key")

        return await self._run("get_issue", get)

    async def add_comment(self, key: str, body: str) -> str:
        return await self._run("add_comment", lambda j: str(j.add_comment(key, body).id))

    async def comments(self, key: str) -> list[tuple[str, str]]:
        def fetch(j: JIRA) -> list[tuple[str, str]]:
            return [(str(c.id), str(getattr(c, "body", "") or "")) for c in j.comments(key)]

        return await self._run("get_comments", fetch)

    async def attachment_names(self, key: str) -> list[str]:
        def fetch(j: JIRA) -> list[str]:
            raw = j.issue(key, fields="attachment").raw
            items = (raw.get("fields") or {}).get("attachment") or []
            return [str(a.get("filename")) for a in items]

        return await self._run("get_issue", fetch)

    async def add_attachment(self, key: str, path: Path, filename: str) -> str:
        def upload(j: JIRA) -> str:
            with path.open("rb") as handle:
                return str(j.add_attachment(key, handle, filename=filename).id)

        return await self._run("add_attachment", upload)

    async def transitions(self, key: str) -> list[dict[str, Any]]:
        return await self._run(
            "transitions", lambda j: [dict(t) for t in j.transitions(key, expand="transitions")]
        )

    async def transition(self, key: str, transition_id: str) -> None:
        await self._run("transition", lambda j: j.transition_issue(key, transition_id))
