"""The aiohttp application: what starts, in which order, and how it stops.

Start-up order (each a `cleanup_ctx`, torn down in reverse with a time limit):
  1. the embedded PostgreSQL, when no database URL is configured;
  2. the connection pool, migrations, the first admin;
  3. (later issues) the session supervisor, the outbox workers, the bridges.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from db import migrate
from db.embedded import EmbeddedPostgres
from db.pool import create_pool
from gateway import __version__
from gateway.api import auth as auth_api
from gateway.api import contacts as contacts_api
from gateway.api import conversations as conversations_api
from gateway.api import events as events_api
from gateway.api import health as health_api
from gateway.api import media as media_api
from gateway.api import messages as messages_api
from gateway.api import sessions as sessions_api
from gateway.api import sim as sim_api
from gateway.api import users as users_api
from gateway.auth import auth_middleware
from gateway.bootstrap import BootstrappedAdmin, ensure_admin
from gateway.bus import EventBus
from gateway.errors import error_middleware
from gateway.keys import (
    BUS,
    DATABASE_URL,
    LOGIN_LIMITER,
    METRICS,
    OUTBOX,
    PASSWORDS,
    POOL,
    READINESS,
    REGISTRY,
    SETTINGS,
    SUPERVISOR,
    TOKENS,
)
from gateway.logs import request_log_middleware
from gateway.metrics import Metrics, SessionCollector, metrics_middleware
from gateway.openapi import add_docs_routes, build_openapi
from gateway.outbox import OutboxWorker
from gateway.ratelimit import LoginLimiter
from gateway.realtime import attach_realtime
from gateway.routing import ApiRouter
from gateway.security import PasswordService, TokenService
from gateway.settings import Settings, max_body_bytes
from gateway.web import add_web_routes
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
    )


async def _sessions(app: web.Application) -> AsyncIterator[None]:
    bus = EventBus(app[POOL])
    app[BUS] = bus
    supervisor = SessionSupervisor(
        app[POOL],
        supervisor_config(app[SETTINGS], app[DATABASE_URL]),
        emit=bus.publish,
        emit_many=bus.publish_many,
    )
    app[SUPERVISOR] = supervisor

    async def supervisor_ready() -> str | None:
        return None if supervisor.running else "session supervisor not running"

    app[READINESS].append(("supervisor", supervisor_ready))
    app[REGISTRY].register(SessionCollector(supervisor))
    await supervisor.start()
    worker = OutboxWorker(
        app[POOL],
        app[DATABASE_URL],
        supervisor,
        bus,
        media_dir=app[SETTINGS].media_path,
        keep_revoked=app[SETTINGS].keep_revoked,
    )
    await worker.start()
    app[OUTBOX] = worker
    try:
        yield
    finally:
        await _bounded("outbox worker", 3.0, worker.stop())
        await _bounded("session supervisor", 9.0, supervisor.stop(timeout=6.0))


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
    app.cleanup_ctx.append(_sessions)
    attach_realtime(app)  # Socket.IO: starts after the bus, stops before it

    routers = routers_for(settings)
    for router in routers:
        app.router.add_routes(router.table)
    if settings.driver == "fake":
        app.router.add_get("/sim", sim_api.sim_page)
    add_docs_routes(app, build_openapi([s for r in routers for s in r.specs], version=__version__))
    add_web_routes(app)
    return app
