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
from gateway.api import health as health_api
from gateway.api import users as users_api
from gateway.auth import auth_middleware
from gateway.bootstrap import BootstrappedAdmin, ensure_admin
from gateway.errors import error_middleware
from gateway.keys import (
    DATABASE_URL,
    LOGIN_LIMITER,
    METRICS,
    PASSWORDS,
    POOL,
    READINESS,
    REGISTRY,
    SETTINGS,
    TOKENS,
)
from gateway.logs import request_log_middleware
from gateway.metrics import Metrics, metrics_middleware
from gateway.openapi import add_docs_routes, build_openapi
from gateway.ratelimit import LoginLimiter
from gateway.routing import ApiRouter
from gateway.security import PasswordService, TokenService
from gateway.settings import Settings, max_body_bytes

log = structlog.get_logger(__name__)

ROUTERS: list[ApiRouter] = [health_api.router, auth_api.router, users_api.router]

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

    for router in ROUTERS:
        app.router.add_routes(router.table)
    add_docs_routes(app, build_openapi([s for r in ROUTERS for s in r.specs], version=__version__))
    return app
