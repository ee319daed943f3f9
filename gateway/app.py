"""The aiohttp application: what starts, in which order, and how it stops.

Start-up order (each a `cleanup_ctx`, torn down in reverse with a time limit):
  1. the embedded PostgreSQL, when no database URL is configured;
  2. the connection pool, migrations, the first admin;
  3. (later issues) the session supervisor, the outbox workers, the bridges.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from db import migrate
from db.embedded import EmbeddedPostgres
from db.pool import create_pool
from gateway import __version__
from gateway.ai.responder import AiResponder
from gateway.api import ai as ai_api
from gateway.api import auth as auth_api
from gateway.api import cloud as cloud_api
from gateway.api import contacts as contacts_api
from gateway.api import conversations as conversations_api
from gateway.api import events as events_api
from gateway.api import health as health_api
from gateway.api import jira as jira_api
from gateway.api import media as media_api
from gateway.api import messages as messages_api
from gateway.api import nodes as nodes_api
from gateway.api import sessions as sessions_api
from gateway.api import sim as sim_api
from gateway.api import users as users_api
from gateway.api import webhooks as webhooks_api
from gateway.auth import auth_middleware
from gateway.bootstrap import BootstrappedAdmin, ensure_admin
from gateway.bus import EventBus
from gateway.cloud import webhook as cloud_webhook
from gateway.cloud.service import CloudService
from gateway.cluster import ClusterConfig, SessionDirectory, default_node_id
from gateway.errors import error_middleware
from gateway.housekeeping import Housekeeper
from gateway.jira_bridge import JiraBridge, bootstrap_jira, bridge_config
from gateway.keys import (
    AI,
    BUS,
    CLOUD,
    DATABASE_URL,
    JIRA,
    LOGIN_LIMITER,
    METRICS,
    OUTBOX,
    PASSWORDS,
    POOL,
    READINESS,
    REGISTRY,
    SESSIONS,
    SETTINGS,
    SUPERVISOR,
    TOKENS,
    WEBHOOKS,
)
from gateway.logs import request_log_middleware
from gateway.metrics import Metrics, OutboxCollector, SessionCollector, metrics_middleware
from gateway.openapi import add_docs_routes, build_openapi
from gateway.outbox import KINDS as OUTBOX_KINDS
from gateway.outbox import OutboxWorker
from gateway.ratelimit import LoginLimiter
from gateway.realtime import attach_realtime
from gateway.routing import ApiRouter
from gateway.security import PasswordService, SecretBox, TokenService
from gateway.settings import Settings, max_body_bytes
from gateway.targets import GuardedResolver
from gateway.web import add_web_routes
from gateway.webhooks import WebhookDispatcher, webhook_config
from sessions.supervisor import SessionSupervisor, SupervisorConfig, device_store_url

log = structlog.get_logger(__name__)

ROUTERS: list[ApiRouter] = [
    health_api.router,
    auth_api.router,
    users_api.router,
    sessions_api.router,
    sessions_api.compat,
    media_api.router,
    conversations_api.router,
    conversations_api.compat,
    messages_api.router,
    events_api.router,
    contacts_api.router,
    webhooks_api.router,
    ai_api.router,
    nodes_api.router,
    cloud_webhook.router,
    cloud_api.router,
    cloud_api.compat,
    jira_api.router,
]
FAKE_ROUTERS: list[ApiRouter] = [sim_api.router]


def routers_for(settings: Settings) -> list[ApiRouter]:
    return ROUTERS + (FAKE_ROUTERS if settings.driver == "fake" else [])


AdminAnnouncer = Callable[[BootstrappedAdmin], None]


async def _bounded(what: str, seconds: float, coro: Any) -> None:
    """Run one shutdown step, giving up (loudly) after `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            await coro
    except TimeoutError:
        log.error("shutdown step timed out", step=what, seconds=seconds)


def _embedded_database(pg: EmbeddedPostgres) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        app[DATABASE_URL] = await asyncio.to_thread(pg.start)
        try:
            yield
        finally:
            await _bounded("embedded postgres", 9.0, asyncio.to_thread(pg.stop))

    return context


def _database(
    announce: AdminAnnouncer | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        pool = await create_pool(
            app[DATABASE_URL],
            min_size=settings.db_pool_min,
            max_size=max(settings.db_pool_min, settings.db_pool_max),
            connect_timeout=settings.db_connect_timeout,
        )
        app[POOL] = pool
        try:
            async with pool.acquire() as conn:
                applied = await migrate.migrate(conn)
            if applied:
                log.info("schema migrated", applied=applied)
            admin = await ensure_admin(pool, settings, app[PASSWORDS])
            if admin is not None and announce is not None:
                announce(admin)
            yield
        finally:
            await _bounded("database pool", 5.0, pool.close())

    return context


def supervisor_config(settings: Settings, database_url: str) -> SupervisorConfig:
    return SupervisorConfig(
        driver=settings.driver,
        data_dir=settings.data_dir,
        store_url=device_store_url(database_url),
        sessions_per_worker=settings.sessions_per_worker,
        heartbeat_timeout=settings.worker_heartbeat_timeout,
        heartbeat_interval=min(2.0, settings.worker_heartbeat_timeout / 3),
        restart_cap=settings.worker_restart_max_seconds,
        reconnect_base=settings.reconnect_base_seconds,
        reconnect_cap=settings.reconnect_max_seconds,
        qr_first=settings.qr_first_seconds,
        qr_next=settings.qr_next_seconds,
        qr_codes=settings.qr_codes,
        spool_sync=settings.spool_sync,
        log_level=settings.log_level,
        keep_revoked=settings.keep_revoked,
        media_dir=settings.media_path,
        media_max_bytes=int(settings.media_max_mb * 1024 * 1024),
        shared_dir=settings.shared_path,
    )


async def _sessions(app: web.Application) -> AsyncIterator[None]:
    bus = EventBus(app[POOL])
    app[BUS] = bus
    supervisor = SessionSupervisor(
        app[POOL],
        supervisor_config(app[SETTINGS], app[DATABASE_URL]),
        emit=bus.publish,
        emit_many=bus.publish_many,
        observer=app[METRICS],
    )
    app[SUPERVISOR] = supervisor
    http = aiohttp.ClientSession()
    cloud = CloudService(
        app[POOL], bus, app[SETTINGS], http, registry=app[REGISTRY], metrics=app[METRICS]
    )
    app[CLOUD] = cloud
    await cloud.start()

    async def supervisor_ready() -> str | None:
        return None if supervisor.running else "session supervisor not running"

    app[READINESS].append(("supervisor", supervisor_ready))
    app[REGISTRY].register(SessionCollector(supervisor))
    outbox_collector = OutboxCollector(app[POOL], OUTBOX_KINDS)
    app[REGISTRY].register(outbox_collector)
    app[METRICS].add_refresher(outbox_collector.refresh)
    await supervisor.start(autostart=False)  # sessions start as this node takes their leases
    settings = app[SETTINGS]
    directory = SessionDirectory(
        app[POOL],
        app[DATABASE_URL],
        supervisor,
        bus,
        ClusterConfig(
            node_id=settings.node_id or default_node_id(settings.data_dir),
            lease_seconds=settings.lease_seconds,
        ),
    )
    app[SESSIONS] = directory
    await directory.start()
    worker = OutboxWorker(
        app[POOL],
        app[DATABASE_URL],
        supervisor,
        bus,
        media_dir=settings.media_path,
        keep_revoked=settings.keep_revoked,
        metrics=app[METRICS],
        node_id=directory.node_id,
        node_ttl=settings.lease_seconds,
    )
    worker.use_cloud(cloud.sender)
    await worker.start()
    app[OUTBOX] = worker
    try:
        yield
    finally:
        await _bounded("outbox worker", 3.0, worker.stop())
        # Stops this node's sessions and hands their leases over.
        await _bounded("session supervisor", 9.0, directory.stop(timeout=6.0))
        await _bounded("cloud api", 3.0, cloud.stop())
        await _bounded("http client", 2.0, http.close())


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    dispatcher = WebhookDispatcher(
        app[POOL],
        app[DATABASE_URL],
        SecretBox(settings.resolved_secret_key()),
        app[BUS],
        webhook_config(settings),
        observe=lambda outcome, seconds: (
            app[METRICS].webhook_delivery.labels(outcome).observe(seconds)
        ),
    )
    await dispatcher.start()
    app[WEBHOOKS] = dispatcher
    try:
        yield
    finally:
        await _bounded("webhooks", 4.0, dispatcher.stop())


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    keeper = Housekeeper(
        app[POOL], app[SETTINGS].housekeeping_keep_days, app[METRICS].housekeeping_deleted
    )
    keeper.start()
    try:
        yield
    finally:
        await _bounded("housekeeping", 2.0, keeper.stop())


async def _jira(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    bridge = JiraBridge(
        app,
        app[POOL],
        app[BUS],
        SecretBox(settings.resolved_secret_key()),
        media_dir=settings.media_path,
        config=bridge_config(settings),
        metrics=app[METRICS],
    )
    app[JIRA] = bridge
    await bootstrap_jira(app[POOL], bridge.box, settings)
    await bridge.start(app[DATABASE_URL])
    try:
        yield
    finally:
        await _bounded("jira bridge", 4.0, bridge.stop())


async def _ai(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    http = aiohttp.ClientSession()  # the administrator's WAGATE_AI_BASE_URL
    guarded = aiohttp.ClientSession(  # operators' own base URLs: public addresses only
        connector=aiohttp.TCPConnector(
            resolver=GuardedResolver(
                allow_private=settings.ai_allow_private, setting="WAGATE_AI_ALLOW_PRIVATE"
            )
        )
    )
    responder = AiResponder(
        app[POOL],
        app[DATABASE_URL],
        app[BUS],
        settings,
        SecretBox(settings.resolved_secret_key()),
        http,
        guarded_http=guarded,
        request=app[SESSIONS].request,
        metrics=app[METRICS],
    )
    await responder.start()
    app[AI] = responder
    try:
        yield
    finally:
        await _bounded("ai responder", 4.0, responder.stop())
        await _bounded("ai http client", 2.0, http.close())
        await _bounded("ai guarded http client", 2.0, guarded.close())


def create_app(
    settings: Settings,
    *,
    database_url: str | None = None,
    announce_admin: AdminAnnouncer | None = None,
) -> web.Application:
    """Build the application. `database_url` overrides the settings (tests pass their own)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, __version__)
    app = web.Application(
        client_max_size=max_body_bytes(settings),
        middlewares=[
            request_log_middleware,
            metrics_middleware(metrics),
            error_middleware,
            auth_middleware,
        ],
    )
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[METRICS] = metrics
    app[READINESS] = []
    app[PASSWORDS] = PasswordService()
    app[TOKENS] = TokenService(
        settings.resolved_secret_key(), timedelta(hours=settings.token_ttl_hours)
    )
    app[LOGIN_LIMITER] = LoginLimiter(settings.login_rate_limit)

    url = database_url or (
        settings.database_url.get_secret_value() if settings.database_url else None
    )
    if url is None:
        app.cleanup_ctx.append(_embedded_database(EmbeddedPostgres(settings.pg_dir)))
    else:
        app[DATABASE_URL] = url
    app.cleanup_ctx.append(_database(announce_admin))
    app.cleanup_ctx.append(_housekeeping)
    app.cleanup_ctx.append(_sessions)
    app.cleanup_ctx.append(_webhooks)
    app.cleanup_ctx.append(_ai)
    app.cleanup_ctx.append(_jira)
    attach_realtime(app)  # Socket.IO: starts after the bus, stops before it

    routers = routers_for(settings)
    for router in routers:
        app.router.add_routes(router.table)
    if settings.driver == "fake":
        app.router.add_get("/sim", sim_api.sim_page)
    add_docs_routes(app, build_openapi([s for r in routers for s in r.specs], version=__version__))
    add_web_routes(app)
    app.on_startup.append(_freeze_startup_heap)  # after every cleanup_ctx has started
    return app


async def _freeze_startup_heap(app: web.Application) -> None:
    """Move everything alive after start-up (modules, the pool, the supervisor) out of the
    garbage collector's view: a full collection then walks only what requests create, which
    halved the tail of Socket.IO event latency in the fan-out benchmark."""
    gc.collect()
    gc.freeze()
