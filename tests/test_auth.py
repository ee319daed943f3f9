"""Logging in, tokens, and who may call what."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestClient

from gateway.security import TokenService
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login

Client = TestClient  # type: ignore[type-arg]


async def make_user(
    client: Client, admin_token: str, email: str, password: str, **extra: str
) -> dict:
    resp = await client.post(
        "/api/v1/users",
        json={"email": email, "password": password, **extra},
        headers=bearer(admin_token),
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_login_returns_a_token_that_identifies_the_user(client: Client) -> None:
    resp = await client.post(
        "/api/v1/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["token_type"] == "bearer"
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(hours=11) < expires - datetime.now(UTC) <= timedelta(hours=12)
    me = await client.get("/api/v1/me", headers=bearer(body["access_token"]))
    assert me.status == 200
    assert (await me.json())["email"] == ADMIN_EMAIL
    assert (await me.json())["role"] == "admin"


async def test_login_is_case_insensitive_on_the_email(client: Client) -> None:
    await login(client, ADMIN_EMAIL.upper(), ADMIN_PASSWORD)


@pytest.mark.parametrize(
    ("email", "password"),
    [(ADMIN_EMAIL, "wrong-password"), ("nobody@example.com", ADMIN_PASSWORD)],
    ids=["wrong-password", "unknown-user"],
)
async def test_bad_credentials_get_401_without_telling_which(
    client: Client, email: str, password: str
) -> None:
    resp = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert resp.status == 401
    assert (await resp.json())["error"] == {
        "code": "unauthorized",
        "message": "wrong e-mail or password",
    }


async def test_disabled_user_cannot_log_in_and_loses_their_tokens(
    client: Client, admin_token: str, db_url: str
) -> None:
    user = await make_user(client, admin_token, "op@example.com", "operator-pass")
    token = await login(client, "op@example.com", "operator-pass")
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("UPDATE users SET disabled = true WHERE id = $1", user["id"])
    finally:
        await conn.close()
    resp = await client.post(
        "/api/v1/auth/login", json={"email": "op@example.com", "password": "operator-pass"}
    )
    assert resp.status == 401
    assert (await resp.json())["error"]["message"] == "this account is disabled"
    assert (await client.get("/api/v1/me", headers=bearer(token))).status == 401


async def test_failed_logins_are_rate_limited_per_email(client: Client) -> None:
    for _ in range(10):
        resp = await client.post(
            "/api/v1/auth/login", json={"email": ADMIN_EMAIL, "password": "nope"}
        )
        assert resp.status == 401
    resp = await client.post(
        "/api/v1/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert (await resp.json())["error"]["code"] == "rate_limited"


async def test_failed_logins_are_rate_limited_per_ip(client: Client, admin_token: str) -> None:
    for i in range(10):
        resp = await client.post(
            "/api/v1/auth/login", json={"email": f"guess{i}@example.com", "password": "x"}
        )
        assert resp.status == 401
    # Another e-mail, same address: refused too.
    resp = await client.post(
        "/api/v1/auth/login", json={"email": "someone@example.com", "password": "x"}
    )
    assert resp.status == 429
    # Tokens already issued keep working.
    assert (await client.get("/api/v1/me", headers=bearer(admin_token))).status == 200


async def test_rate_limit_does_not_count_successful_logins(client: Client) -> None:
    for _ in range(15):
        await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def test_expired_token_is_refused(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    tokens = TokenService(settings.secret_key.get_secret_value(), timedelta(hours=1))
    token, _ = tokens.issue(1, "admin", now=datetime.now(UTC) - timedelta(hours=2))
    resp = await client.get("/api/v1/me", headers=bearer(token))
    assert resp.status == 401
    assert (await resp.json())["error"]["message"] == "token expired"


async def test_tampered_token_is_refused(client: Client, admin_token: str) -> None:
    header, _payload, signature = admin_token.split(".")
    claims = jwt.decode(admin_token, options={"verify_signature": False})
    claims["sub"] = "999"
    forged = jwt.encode(claims, "another-key-entirely-32-bytes-long", algorithm="HS256")
    for token in (
        forged,
        f"{header}.{forged.split('.')[1]}.{signature}",
        admin_token[:-2] + ("AA" if not admin_token.endswith("AA") else "BB"),
        "not-a-jwt",
    ):
        resp = await client.get("/api/v1/me", headers=bearer(token))
        assert resp.status == 401, token
        assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_token_signed_with_none_algorithm_is_refused(client: Client) -> None:
    claims = {"sub": "1", "role": "admin", "iss": "wagate", "iat": 1, "exp": 4102444800}
    token = jwt.encode(claims, None, algorithm="none")
    assert (await client.get("/api/v1/me", headers=bearer(token))).status == 401


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}, {"Authorization": "x"}],
)
async def test_api_routes_need_a_bearer_token(client: Client, headers: dict[str, str]) -> None:
    for method, path in (
        ("GET", "/api/v1/me"),
        ("GET", "/api/v1/users"),
        ("POST", "/api/v1/users"),
    ):
        resp = await client.request(method, path, headers=headers)
        assert resp.status == 401, (method, path)
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await resp.json())["error"]["code"] == "unauthorized"


async def test_admin_creates_and_lists_users(client: Client, admin_token: str) -> None:
    created = await make_user(
        client, admin_token, "Agent@Example.com", "agent-pass-1", display_name="Agent"
    )
    assert created["role"] == "operator"
    assert "password" not in str(created)
    assert "hash" not in str(created)
    resp = await client.get("/api/v1/users", headers=bearer(admin_token))
    emails = [u["email"] for u in (await resp.json())["items"]]
    assert emails == [ADMIN_EMAIL, "Agent@example.com"]
    await login(client, "agent@example.com", "agent-pass-1")


async def test_duplicate_email_is_409(client: Client, admin_token: str) -> None:
    await make_user(client, admin_token, "dup@example.com", "password-1")
    resp = await client.post(
        "/api/v1/users",
        json={"email": "DUP@example.com", "password": "password-2"},
        headers=bearer(admin_token),
    )
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "email_taken"


async def test_operator_cannot_use_admin_routes(client: Client, admin_token: str) -> None:
    await make_user(client, admin_token, "op2@example.com", "operator-pass")
    token = await login(client, "op2@example.com", "operator-pass")
    listing = await client.get("/api/v1/users", headers=bearer(token))
    assert listing.status == 403
    assert (await listing.json())["error"]["code"] == "forbidden"
    create = await client.post(
        "/api/v1/users",
        json={"email": "x@example.com", "password": "password-1", "role": "admin"},
        headers=bearer(token),
    )
    assert create.status == 403
    # Nothing was created.
    emails = [
        u["email"]
        for u in (await (await client.get("/api/v1/users", headers=bearer(admin_token))).json())[
            "items"
        ]
    ]
    assert "x@example.com" not in emails


async def test_user_creation_validates_its_body(client: Client, admin_token: str) -> None:
    resp = await client.post(
        "/api/v1/users",
        json={"email": "not-an-email", "password": "short"},
        headers=bearer(admin_token),
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "validation_error"
    fields = {tuple(d["loc"]) for d in error["details"]}
    assert fields == {("email",), ("password",)}
