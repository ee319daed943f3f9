"""An operator's model endpoint may not be a door into the gateway's own network: with
WAGATE_AI_ALLOW_PRIVATE off (the default) a loopback or private base URL is refused when saved,
refused again at every call (it may have been saved while the setting was on), and a name that
resolves only to such addresses is refused at connect time. The administrator's own
WAGATE_AI_BASE_URL (an Ollama on loopback, say) is not an operator's choice and is used as is."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.app import create_app
from gateway.settings import Settings
from gateway.targets import GuardedResolver
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login
from tests.fakes.llm import FakeLLM, Reply
from tests.sessions_helpers import Client, fast_settings, link, phone, text, wait_for
from tests.test_ai import api, article, replies, said

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    fake = FakeLLM()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return fast_settings(tmp_path, db_url, ai_min_interval_seconds=0)


async def test_a_private_model_url_is_refused_when_saved_and_when_called(
    client: Client, admin_token: str, settings: Settings, db_url: str, llm: FakeLLM
) -> None:
    assert settings.ai_allow_private is False
    token = admin_token
    resp = await client.patch(
        "/api/v1/ai/settings",
        json={"provider": "openai", "base_url": llm.base_url, "model": "m"},
        headers=bearer(token),
    )
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "validation_error"
    assert "WAGATE_AI_ALLOW_PRIVATE" in error["message"], error
    shown = await api(client, token, "GET", "/api/v1/ai/settings")
    assert shown["provider"] != "openai" or shown["base_url"] != llm.base_url  # nothing changed

    sid = await link(client, token, settings)
    await api(client, token, "PATCH", f"/api/v1/sessions/{sid}/ai", ai_default=True)
    await article(client, token, "Opening hours", "Monday to Friday, 9 to 6.", tags=["hours"])
    # As if saved while the setting was on: the call itself is refused, the kb answers.
    db = await asyncpg.connect(db_url)
    try:
        await db.execute(
            "INSERT INTO ai_settings (user_id, provider, base_url, model) "
            "VALUES (1, 'openai', $1, 'm') ON CONFLICT (user_id) DO UPDATE "
            "SET provider = 'openai', base_url = $1, model = 'm'",
            llm.base_url,
        )
        llm.script(Reply("the model should never be asked"))
        p = phone(settings, sid)
        p.send(text("+5215512345678", "What are your opening hours?"))
        await replies(p, 1)
        assert said(p) == ["Monday to Friday, 9 to 6."]
        assert llm.requests == []
        detail = await wait_for(
            lambda: db.fetchval("SELECT detail FROM ai_replies ORDER BY created_at LIMIT 1"),
            what="the decision",
        )
        assert "refused" in detail, detail
        assert "WAGATE_AI_ALLOW_PRIVATE" in detail, detail
    finally:
        await db.close()


class _Names(AbstractResolver):
    """DNS that answers one name with loopback, as a rebinding attacker's name would."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = "127.0.0.1" if host == "model.attacker.example" else "93.184.215.14"
        result: Any = {
            "hostname": host,
            "host": address,
            "port": port,
            "family": socket.AF_INET,
            "proto": 0,
            "flags": socket.AI_NUMERICHOST,
        }
        return [result]

    async def close(self) -> None:
        return None


async def test_a_name_that_resolves_to_loopback_is_refused_naming_the_ai_setting() -> None:
    guard = GuardedResolver(allow_private=False, inner=_Names(), setting="WAGATE_AI_ALLOW_PRIVATE")
    with pytest.raises(OSError, match="WAGATE_AI_ALLOW_PRIVATE"):
        await guard.resolve("model.attacker.example", 443)
    public = await guard.resolve("api.example.com", 443)
    assert [r["host"] for r in public] == ["93.184.215.14"]
    allowed = GuardedResolver(allow_private=True, inner=_Names())
    assert [r["host"] for r in await allowed.resolve("model.attacker.example", 443)] == [
        "127.0.0.1"
    ]


async def test_the_administrators_own_model_url_on_loopback_is_used(
    tmp_path: Path, db_url: str, llm: FakeLLM, aiohttp_client: Any
) -> None:
    settings = fast_settings(
        tmp_path,
        db_url,
        ai_min_interval_seconds=0,
        ai_provider="openai",
        ai_base_url=llm.base_url,
        ai_model="local-model",
    )
    assert settings.ai_allow_private is False
    client = await aiohttp_client(create_app(settings, database_url=db_url))
    token = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    sid = await link(client, token, settings)
    await api(client, token, "PATCH", f"/api/v1/sessions/{sid}/ai", ai_default=True)
    llm.script(Reply("Hello from the local model."))
    p = phone(settings, sid)
    p.send(text("+5215512345678", "Hi, what can you do?"))
    await replies(p, 1)
    assert said(p) == ["Hello from the local model."]
    assert llm.requests[0]["body"]["model"] == "local-model"
