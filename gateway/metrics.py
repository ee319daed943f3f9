"""Prometheus metrics of the gateway, in a registry owned by the application."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sessions.supervisor import SessionSupervisor

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics:
    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        self.build_info = Gauge(
            "wagate_build_info", "wagate version", ["version"], registry=registry
        )
        self.build_info.labels(version=version).set(1)
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


def route_label(request: web.Request) -> str:
    """The route template (`/api/v1/users/{id}`), never the raw path: bounded cardinality."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    if resource is None:
        return "unmatched"
    return resource.canonical


def metrics_middleware(metrics: Metrics) -> Middleware:
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
            metrics.http_requests.labels(request.method, route, str(status)).inc()
            metrics.http_latency.labels(request.method, route).observe(
                time.perf_counter() - started
            )

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
        for sid, stats in sorted(self._supervisor.all_stats().items()):
            rss.add_metric([str(sid)], stats.rss_bytes)
            if stats.pss_bytes is not None:
                pss.add_metric([str(sid)], stats.pss_bytes)
            cpu.add_metric([str(sid)], stats.cpu_percent)
            restarts.add_metric([str(sid)], stats.restarts)
        yield from (rss, pss, cpu, restarts)
