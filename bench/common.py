"""What every benchmark needs: a PostgreSQL server (a private embedded one unless
WAGATE_DATABASE_URL names one) and scratch databases on it, migrated and dropped afterwards."""

from __future__ import annotations

import asyncio
import os
import urllib.parse
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg

from db import migrate
from db.embedded import EmbeddedPostgres


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database `name` (keeps a unix socket's `host=`)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


class BenchServer:
    """`async with BenchServer(dir) as server: url = await server.database()`."""

    def __init__(self, root: Path) -> None:
        self.given = os.environ.get("WAGATE_DATABASE_URL")
        self._embedded = None if self.given else EmbeddedPostgres(root / "pg", database="postgres")
        self.admin_url = self.given or ""
        self._created: list[str] = []

    @property
    def description(self) -> str:
        return "WAGATE_DATABASE_URL" if self.given else "embedded PostgreSQL (private, this run)"

    async def __aenter__(self) -> BenchServer:
        if self._embedded is not None:
            self.admin_url = await asyncio.to_thread(self._embedded.start)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            for name in self._created:
                await self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            if self._embedded is not None:
                await asyncio.to_thread(self._embedded.stop)

    async def admin(self, sql: str) -> Any:
        conn = await asyncpg.connect(self.admin_url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    async def database(self, label: str = "scratch", *, migrated: bool = True) -> str:
        """A new database (dropped when the server context ends); its URL."""
        name = f"wagate_bench_{label}_{uuid.uuid4().hex[:8]}"
        await self.admin(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        url = with_database(self.admin_url, name)
        if migrated:
            conn = await asyncpg.connect(url)
            try:
                await migrate.migrate(conn)
            finally:
                await conn.close()
        return url

    async def settings(self) -> dict[str, str]:
        names = ("server_version", "shared_buffers", "synchronous_commit", "fsync")
        conn = await asyncpg.connect(self.admin_url)
        try:
            return {n: str(await conn.fetchval(f"SHOW {n}")) for n in names}
        finally:
            await conn.close()
