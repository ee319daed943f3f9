"""Prometheus metrics of the gateway, in a registry owned by the application.

Every family wagate exports is defined here (README "Metrics" lists them); features observe
them. Families for parts not built yet (Jira, the AI responder, outgoing webhooks, the Cloud API
webhook) are defined already so that those parts only have to observe them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from db import outbox as outbox_db
from sessions.store import Changes
from sessions.supervisor import SessionSupervisor

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Refresher = Callable[[], Awaitable[None]]

# `channel` label of message counters: WhatsApp Web sessions now, the Cloud API later.
CHANNEL_WEB = "web"
CHANNEL_CLOUD = "cloud"

COMMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        self.build_info = Gauge(
            "wagate_build_info", "wagate version", ["version"], registry=registry
        )
        self.build_info.labels(version=version).set(1)
        ProcessCollector(registry=registry)  # process_*: the gateway process's own RSS, CPU, fds
        self.http_requests = Counter(
            "wagate_http_requests_total",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_latency = Histogram(
            "wagate_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.logins = Counter(
            "wagate_logins_total",
            "Login attempts by outcome",
            ["outcome"],
            registry=registry,
        )
        # -- messages and storage --------------------------------------------------------
        self.messages = Counter(
            "wagate_messages",
            "Messages by channel (web, cloud), direction (in: received and stored live; out: "
            "accepted by WhatsApp from the gateway, or typed on the phone) and message type; "
            "history imports are not counted here",
            ["channel", "direction", "type"],
            registry=registry,
        )
        self.event_commit = Histogram(
            "wagate_event_commit_seconds",
            "Seconds from a WhatsApp event reaching the worker (its spool write) to its "
            "database commit, by ingest queue (live, history); replays are not observed",
            ["queue"],
            registry=registry,
            buckets=COMMIT_BUCKETS,
        )
        self.housekeeping_deleted = Counter(
            "wagate_housekeeping_deleted_rows",
            "Finished bookkeeping rows deleted by housekeeping, by table",
            ["table"],
            registry=registry,
        )
        self.outbox_items = Counter(
            "wagate_outbox_items",
            "Outbox items finished by kind and outcome (done, retry, failed)",
            ["kind", "outcome"],
            registry=registry,
        )
        # -- webhooks (issue 11 and the Cloud API path observe these) ---------------------
        self.webhook_delivery = Histogram(
            "wagate_webhook_delivery_seconds",
            "Seconds per outgoing webhook delivery attempt, by outcome",
            ["outcome"],
            registry=registry,
            buckets=CALL_BUCKETS,
        )
        self.cloud_webhook = Histogram(
            "wagate_cloud_webhook_seconds",
            "Seconds to handle one incoming Cloud API webhook request",
            registry=registry,
            buckets=COMMIT_BUCKETS,
        )
        # -- bridges (Jira and the AI responder observe these) ----------------------------
        self.jira_request = Histogram(
            "wagate_jira_request_seconds",
            "Seconds per Jira API call, by operation (e.g. create_issue, add_comment) and "
            "outcome (ok, error)",
            ["operation", "outcome"],
            registry=registry,
            buckets=CALL_BUCKETS,
        )
        self.jira_errors = Counter(
            "wagate_jira_errors",
            "Failed Jira API calls, by operation and error kind (e.g. http_4xx, http_5xx, "
            "timeout, network)",
            ["operation", "kind"],
            registry=registry,
        )
        self.ai_request = Histogram(
            "wagate_ai_request_seconds",
            "Seconds per AI (LLM) call, by provider and outcome (ok, error)",
            ["provider", "outcome"],
            registry=registry,
            buckets=CALL_BUCKETS,
        )
        self.ai_errors = Counter(
            "wagate_ai_errors",
            "Failed AI (LLM) calls, by provider and error kind (e.g. http_4xx, http_5xx, "
            "timeout, network, rate_limited)",
            ["provider", "kind"],
            registry=registry,
        )
        self._refreshers: list[Refresher] = []

    # -- observers -----------------------------------------------------------------------

    def committed(self, session_id: int, queue: str, delays: list[float], changes: Changes) -> None:
        """`IngestObserver` of the session supervisor: latency and messages of one commit."""
        histogram = self.event_commit.labels(queue)
        for delay in delays:
            histogram.observe(max(0.0, delay))
        for message in changes.new_messages:
            if message.get("from_history"):
                continue
            direction = "in" if message.get("direction") == "inbound" else "out"
            self.messages.labels(CHANNEL_WEB, direction, message.get("message_type", "")).inc()

    def message_sent(self, channel: str, message_type: str) -> None:
        self.messages.labels(channel, "out", message_type).inc()

    # -- values read at scrape time --------------------------------------------------------

    def add_refresher(self, refresher: Refresher) -> None:
        """Something to bring up to date before each scrape (e.g. a cached SQL query)."""
        self._refreshers.append(refresher)

    async def refresh(self) -> None:
        for refresher in self._refreshers:
            try:
                await refresher()
            except Exception as exc:  # a scrape must answer even when a source fails
                log.warning("metrics source failed", error=f"{type(exc).__name__}: {exc}")


def route_label(request: web.Request) -> str:
    """The route template (`/api/v1/users/{id}`), never the raw path: bounded cardinality."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    if resource is None:
        return "unmatched"
    return resource.canonical


def metrics_middleware(metrics: Metrics) -> Middleware:
    # The labelled children, looked up once per (method, route, status) rather than per request.
    counters: dict[tuple[str, str, str], Counter] = {}
    latencies: dict[tuple[str, str], Histogram] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = route_label(request)
            key = (request.method, route, str(status))
            counter = counters.get(key)
            if counter is None:
                counter = counters[key] = metrics.http_requests.labels(*key)
            counter.inc()
            latency = latencies.get(key[:2])
            if latency is None:
                latency = latencies[key[:2]] = metrics.http_latency.labels(*key[:2])
            latency.observe(time.perf_counter() - started)

    return middleware


class SessionCollector(Collector):
    """Sessions by state and each session's worker memory and CPU, read at scrape time."""

    def __init__(self, supervisor: SessionSupervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "wagate_sessions", "WhatsApp Web sessions by state", labels=["state"]
        )
        counts: dict[str, int] = {}
        for state in self._supervisor.states.values():
            counts[state] = counts.get(state, 0) + 1
        for state, count in sorted(counts.items()):
            states.add_metric([state], count)
        yield states
        rss = GaugeMetricFamily(
            "wagate_session_worker_rss_bytes", "RSS of the session's worker", labels=["session"]
        )
        pss = GaugeMetricFamily(
            "wagate_session_worker_pss_bytes", "PSS of the session's worker", labels=["session"]
        )
        cpu = GaugeMetricFamily(
            "wagate_session_worker_cpu_percent", "CPU of the session's worker", labels=["session"]
        )
        restarts = GaugeMetricFamily(
            "wagate_session_worker_restarts", "Worker restarts of the session", labels=["session"]
        )
        backlog = GaugeMetricFamily(
            "wagate_session_ingest_backlog",
            "Events of the session received but not stored yet",
            labels=["session"],
        )
        for sid, stats in sorted(self._supervisor.all_stats().items()):
            rss.add_metric([str(sid)], stats.rss_bytes)
            if stats.pss_bytes is not None:
                pss.add_metric([str(sid)], stats.pss_bytes)
            cpu.add_metric([str(sid)], stats.cpu_percent)
            restarts.add_metric([str(sid)], stats.restarts)
            backlog.add_metric([str(sid)], self._supervisor.ingest_backlog(sid))
        yield from (rss, pss, cpu, restarts, backlog)
        progress = GaugeMetricFamily(
            "wagate_history_import_progress_percent",
            "Progress of the session's history sync as WhatsApp reports it (0-100)",
            labels=["session"],
        )
        imported = CounterMetricFamily(
            "wagate_history_messages_imported",
            "History messages imported for the session since the gateway started",
            labels=["session"],
        )
        chunks = CounterMetricFamily(
            "wagate_history_chunks",
            "History sync chunks stored for the session since the gateway started",
            labels=["session"],
        )
        for sid, history in sorted(self._supervisor.history.items()):
            progress.add_metric([str(sid)], history.percent)
            imported.add_metric([str(sid)], history.imported)
            chunks.add_metric([str(sid)], history.chunks)
        yield from (progress, imported, chunks)


_CLOUD_STATES = "SELECT state, count(*) AS n FROM sessions WHERE channel = 'cloud' GROUP BY state"


class OutboxCollector(Collector):
    """Outbox depth and the age of its oldest waiting item, per kind, and Cloud API numbers by
    state: cheap grouped queries (the outbox's on the partial `outbox_due_idx`), run before a
    scrape at most once per `max_age` seconds so that scrapes can not hammer the database."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        kinds: list[str],
        *,
        max_age: float = 5.0,
        timeout: float = 2.0,
    ) -> None:
        self._pool = pool
        self._kinds = set(kinds)
        self._max_age = max_age
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._read_at: float | None = None
        self._rows: dict[str, tuple[int, float]] = {}
        self._cloud: dict[str, int] = {}
        self.queries = 0

    async def refresh(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._read_at is not None and now - self._read_at < self._max_age:
                return
            self._read_at = now  # also after a failure: retried after max_age, not every scrape
            async with asyncio.timeout(self._timeout):
                rows = await outbox_db.depth(self._pool)
                numbers = await self._pool.fetch(_CLOUD_STATES)
            self.queries += 1
            self._cloud = {str(r["state"]): int(r["n"]) for r in numbers}
            self._rows = {
                str(r["kind"]): (int(r["depth"]), float(r["oldest"] or 0.0)) for r in rows
            }
            self._kinds.update(self._rows)

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "wagate_outbox_depth", "Outbox items waiting or running, by kind", labels=["kind"]
        )
        oldest = GaugeMetricFamily(
            "wagate_outbox_oldest_age_seconds",
            "Age of the oldest waiting or running outbox item, by kind (0 when none)",
            labels=["kind"],
        )
        for kind in sorted(self._kinds):
            count, age = self._rows.get(kind, (0, 0.0))
            depth.add_metric([kind], count)
            oldest.add_metric([kind], age)
        yield depth
        yield oldest
        cloud = GaugeMetricFamily(
            "wagate_cloud_numbers",
            "Cloud API numbers by state, cluster-wide (every node reports the same)",
            labels=["state"],
        )
        for state, n in sorted(self._cloud.items()):
            cloud.add_metric([state], n)
        yield cloud
