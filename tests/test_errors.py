"""Every error is JSON of one shape, with the right status, and shows no internals."""

from __future__ import annotations

import io
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import bearer

Client = TestClient  # type: ignore[type-arg]


def assert_error(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


async def test_invalid_json_is_400(client: Client) -> None:
    resp = await client.post(
        "/api/v1/auth/login", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert_error(await resp.json(), "invalid_json")


async def test_empty_body_is_400(client: Client) -> None:
    resp = await client.post("/api/v1/auth/login")
    assert resp.status == 400
    assert_error(await resp.json(), "invalid_json")


async def test_validation_errors_name_the_fields(client: Client) -> None:
    resp = await client.post("/api/v1/auth/login", json={"email": "a@b.c"})
    assert resp.status == 400
    body = await resp.json()
    assert_error(body, "validation_error")
    assert body["error"]["details"] == [
        {"loc": ["password"], "msg": "Field required", "type": "missing"}
    ]


async def test_a_json_array_is_not_a_valid_body(client: Client) -> None:
    resp = await client.post("/api/v1/auth/login", json=[1, 2])
    assert resp.status == 400
    assert_error(await resp.json(), "validation_error")


async def test_unknown_route_is_json_404(client: Client) -> None:
    resp = await client.get("/api/v1/nothing-here", headers=bearer("x"))
    # Auth is checked before routing for /api/v1: no token, no information.
    assert resp.status == 401
    resp = await client.get("/nothing-here")
    assert resp.status == 404
    assert_error(await resp.json(), "not_found")


async def test_wrong_method_is_json_405_with_allow(client: Client) -> None:
    resp = await client.delete("/healthz")
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"]
    assert_error(await resp.json(), "method_not_allowed")


async def test_ten_megabyte_body_is_413(client: Client) -> None:
    body = b'{"email": "' + b"a" * (10 * 1024 * 1024) + b'", "password": "x"}'
    resp = await client.post(
        "/api/v1/auth/login", data=io.BytesIO(body), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert_error(await resp.json(), "payload_too_large")


async def test_chunked_body_over_the_limit_is_413(client: Client) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * (256 * 1024)

    resp = await client.post(
        "/api/v1/auth/login", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert_error(await resp.json(), "payload_too_large")


async def test_unexpected_exception_is_a_bare_500(aiohttp_client: Any, settings: Settings) -> None:
    app = create_app(settings)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail at /srv/db password=hunter2")

    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    resp = await client.get("/boom")
    assert resp.status == 500
    body = await resp.json()
    assert body == {"error": {"code": "internal", "message": "internal server error"}}
    assert resp.headers["X-Request-ID"]


async def test_request_id_is_echoed_or_generated(client: Client) -> None:
    resp = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert resp.headers["X-Request-ID"] != "bad id with spaces"
    assert len(resp.headers["X-Request-ID"]) == 32
