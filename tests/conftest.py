"""Shared fixtures: a real PostgreSQL, a database per test, the app, and a network guard."""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from db import migrate
from db.embedded import EmbeddedPostgres
from gateway.app import create_app
from gateway.settings import Settings
from tests.pg import create_database, drop_database, unique_name, with_database

ROOT = Path(__file__).resolve().parent.parent
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password-1"


def quiet_neonize_import() -> None:
    """Import neonize for in-process tests without its leaked pipe failing a later test.

    Importing neonize runs `os.popen("uname -a").read()` and never closes the pipe; the
    subprocess object is reaped at the next subprocess start, where its ResourceWarning would
    become an unraisable-exception error in an unrelated test. Reap it here, under a filter.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        import neonize.events  # noqa: F401

        gc.collect()
        subprocess._cleanup()  # type: ignore[attr-defined]


# -- no network beyond this machine -----------------------------------------------------------

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _allowed(sock: socket.socket, address: Any) -> bool:
    if sock.family == socket.AF_UNIX:
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if not _allowed(self, address):
        raise ConnectionRefusedError(f"tests may only connect to loopback, not {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if not _allowed(self, address):
        raise ConnectionRefusedError(f"tests may only connect to loopback, not {address!r}")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from each test, never from the developer's shell or .env."""
    for key in list(os.environ):
        if key.startswith("WAGATE_"):
            monkeypatch.delenv(key)


# -- PostgreSQL -------------------------------------------------------------------------------


_DATABASE_FIXTURES = ("db_url", "empty_db_url")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Set a test's database up before its app, so the app is torn down before the drop.

    Pytest tears fixtures down in reverse setup order, and a test that lists `aiohttp_client`
    before `db_url` would otherwise see its database dropped (`WITH (FORCE)`) under an app
    that is still running a job, which fails the test's teardown.
    """
    for item in items:
        names = getattr(item, "fixturenames", None)
        if not names:
            continue
        first = [n for n in _DATABASE_FIXTURES if n in names]
        if first:
            names[:] = first + [n for n in names if n not in first]


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a maintenance database on the test server (TEST_DATABASE_URL or embedded)."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    base = Path(os.environ.get("WAGATE_TEST_TMP", "/tmp")) / f"wagate-test-{os.getpid()}"
    pg = EmbeddedPostgres(base / "pg", database="postgres")
    url = pg.start()
    try:
        yield url
    finally:
        pg.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """A migrated database that every test's database is cloned from."""
    name = unique_name("wagate_tpl")

    async def setup() -> None:
        await create_database(pg_admin_url, name)
        conn = await asyncpg.connect(with_database(pg_admin_url, name))
        try:
            await migrate.migrate(conn)
        finally:
            await conn.close()

    asyncio.run(setup())
    try:
        yield name
    finally:
        asyncio.run(drop_database(pg_admin_url, name))


@pytest.fixture
async def db_url(pg_admin_url: str, template_db: str) -> AsyncIterator[str]:
    """A migrated database of this test's own."""
    name = unique_name("wagate_t")
    await create_database(pg_admin_url, name, template=template_db)
    try:
        yield with_database(pg_admin_url, name)
    finally:
        await drop_database(pg_admin_url, name)


@pytest.fixture
async def empty_db_url(pg_admin_url: str) -> AsyncIterator[str]:
    """An empty database of this test's own (for migration tests)."""
    name = unique_name("wagate_e")
    await create_database(pg_admin_url, name)
    try:
        yield with_database(pg_admin_url, name)
    finally:
        await drop_database(pg_admin_url, name)


# -- the application --------------------------------------------------------------------------


def make_settings(tmp_path: Path, db_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "var",
        "database_url": db_url,
        "secret_key": "test-secret-key-for-wagate-tests",
        "admin_email": ADMIN_EMAIL,
        "admin_password": ADMIN_PASSWORD,
        "driver": "fake",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url)


@pytest.fixture
async def client(settings: Settings, aiohttp_client: Any) -> TestClient:  # type: ignore[type-arg]
    return await aiohttp_client(create_app(settings))


async def login(client: TestClient, email: str, password: str) -> str:  # type: ignore[type-arg]
    resp = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def admin_token(client: TestClient) -> str:  # type: ignore[type-arg]
    return await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.fixture
def python() -> str:
    return sys.executable
