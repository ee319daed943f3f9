"""/healthz, /readyz (against a database that goes away and comes back), /metrics, docs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from db import migrate
from db.embedded import EmbeddedPostgres
from gateway.app import ROUTERS, create_app
from tests.conftest import bearer, make_settings

Client = TestClient  # type: ignore[type-arg]


async def test_healthz(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_readyz_when_ready(client: Client) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {
        "status": "ready",
        "checks": {"database": "ok", "supervisor": "ok"},
    }


async def test_readyz_follows_a_database_that_stops_and_returns(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    # A private server: this test stops it.
    pg = EmbeddedPostgres(tmp_path / "pg")
    url = await asyncio.to_thread(pg.start)
    try:
        settings = make_settings(tmp_path, url)
        client = await aiohttp_client(create_app(settings))
        assert (await client.get("/readyz")).status == 200

        await asyncio.to_thread(pg.stop)
        resp = await client.get("/readyz")
        assert resp.status == 503
        body = await resp.json()
        assert body["status"] == "not_ready"
        assert body["checks"]["database"] != "ok"
        # Liveness does not depend on the database.
        assert (await client.get("/healthz")).status == 200

        await asyncio.to_thread(pg.start)
        for _ in range(50):
            resp = await client.get("/readyz")
            if resp.status == 200:
                break
            await asyncio.sleep(0.1)
        assert resp.status == 200
        token_resp = await client.post(
            "/api/v1/auth/login",
            json={"email": settings.admin_email, "password": "admin-password-1"},
        )
        assert token_resp.status == 200
    finally:
        await asyncio.to_thread(pg.stop)


async def test_readyz_reports_an_outdated_schema(client: Client, db_url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "DELETE FROM schema_version WHERE version = (SELECT max(version) FROM schema_version)"
        )
    finally:
        await conn.close()
    resp = await client.get("/readyz")
    assert resp.status == 503
    latest = migrate.latest_version()
    assert (
        f"schema at version {latest - 1}, this code needs {latest}"
        in (await resp.json())["checks"]["database"]
    )


async def test_metrics_count_requests_by_route(client: Client) -> None:
    await client.get("/healthz")
    await client.get("/api/v1/me")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert 'wagate_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'route="/api/v1/me",status="401"' in text
    assert "wagate_build_info" in text


async def test_openapi_lists_every_route_with_its_models(client: Client) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    for router in ROUTERS:
        for spec in router.specs:
            op = doc["paths"][spec.path][spec.method.lower()]
            assert op["summary"] == spec.summary
            if spec.body is not None:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/" + spec.body.__name__)
            if spec.response is not None:
                ref = op["responses"][str(spec.status)]["content"]["application/json"]["schema"]
                assert ref["$ref"].endswith("/" + spec.response.__name__)
            if spec.auth != "public":
                assert op["security"] == [{"bearerAuth": []}]
                assert "401" in op["responses"]
    login = doc["components"]["schemas"]["LoginRequest"]
    assert set(login["required"]) == {"email", "password"}
    assert "ErrorResponse" in doc["components"]["schemas"]


async def test_docs_page_and_its_assets_are_served_locally(client: Client) -> None:
    page = await client.get("/docs")
    assert page.status == 200
    html = await page.text()
    assert "swagger-ui" in html
    assert "http" not in html.replace("http-equiv", "")  # no CDN
    for asset in (
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/swagger-ui.css",
        "/docs/init.js",
    ):
        resp = await client.get(asset)
        assert resp.status == 200, asset
        assert len(await resp.read()) > 100


async def test_health_routes_need_no_token_but_api_does(client: Client, admin_token: str) -> None:
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/api/v1/me", headers=bearer(admin_token))).status == 200
