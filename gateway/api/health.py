"""`/healthz` (the process answers), `/readyz` (it can do its job) and `/metrics`."""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from db import migrate
from gateway.auth import bearer_token
from gateway.errors import Unauthorized
from gateway.keys import METRICS, POOL, READINESS, REGISTRY, SETTINGS
from gateway.routing import ApiRouter

router = ApiRouter("health")

DB_CHECK_TIMEOUT = 2.0


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz", summary="Liveness: the process answers", response=Health, auth="public")
async def healthz(request: web.Request) -> Health:
    return Health(status="ok")


async def check_database(app: web.Application) -> str | None:
    """None when the database answers and its schema is the one this code expects."""
    try:
        async with asyncio.timeout(DB_CHECK_TIMEOUT):
            async with app[POOL].acquire() as conn:
                have, want = await migrate.check_current(conn)
    except (TimeoutError, OSError) as exc:
        return f"database unreachable: {exc or type(exc).__name__}"
    except Exception as exc:  # asyncpg raises many kinds while a server goes away
        return f"database error: {type(exc).__name__}: {exc}"
    if have != want:
        return f"schema at version {have}, this code needs {want}"
    return None


@router.get(
    "/readyz",
    summary="Readiness: database reachable, migrations current, components running",
    description="200 when ready; 503 with the same body (status `not_ready`, and what is "
    "wrong in `checks`) otherwise.",
    response=Readiness,
    auth="public",
)
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    problem = await check_database(request.app)
    checks["database"] = problem or "ok"
    for name, check in request.app[READINESS]:
        checks[name] = (await check()) or "ok"
    ready = all(value == "ok" for value in checks.values())
    body = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return web.json_response(body.model_dump(), status=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (a bearer token when WAGATE_METRICS_TOKEN is set)",
    auth="public",
    errors=(401,),
)
async def metrics(request: web.Request) -> web.Response:
    wanted = request.app[SETTINGS].metrics_token
    if wanted is not None and wanted.get_secret_value():
        given = bearer_token(request) or ""
        if not hmac.compare_digest(given.encode(), wanted.get_secret_value().encode()):
            raise Unauthorized("/metrics needs the metrics token (Authorization: Bearer ...)")
    await request.app[METRICS].refresh()
    payload = generate_latest(request.app[REGISTRY])
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})
