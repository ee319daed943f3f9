"""The migration runner: empty database, re-run, a newer schema, two processes at once."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
import pytest

from db import migrate
from db.migrate import SchemaTooNewError
from tests.conftest import ROOT

TABLES = {
    "users",
    "sessions",
    "contacts",
    "conversations",
    "messages",
    "outbox",
    "event_log",
    "event_counters",
    "schema_version",
}


async def tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_migrates_an_empty_database(empty_db_url: str) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        applied = await migrate.migrate(conn)
        assert applied == [m.version for m in migrate.load_migrations()]
        assert await tables(conn) >= TABLES
        assert await migrate.current_version(conn) == migrate.latest_version()
        # The columns the former system's clients rely on exist.
        cols = {
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'conversations'"
            )
        }
        assert {
            "external_id",
            "contact_name",
            "contact_photo_url",
            "started_at",
            "wa_user_id",
            "ai_active",
            "personality_id",
            "no_ac_ai",
            "jira_bridge",
            "unread_count",
            "last_message_at",
            "archived",
        } <= cols
    finally:
        await conn.close()


async def test_rerun_is_a_no_op(empty_db_url: str) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        await migrate.migrate(conn)
        before = await conn.fetch("SELECT version, applied_at FROM schema_version")
        assert await migrate.migrate(conn) == []
        assert await conn.fetch("SELECT version, applied_at FROM schema_version") == before
    finally:
        await conn.close()


async def test_a_newer_schema_is_refused(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("INSERT INTO schema_version (version, name) VALUES (9999, 'future')")
        with pytest.raises(SchemaTooNewError, match="version 9999"):
            await migrate.migrate(conn)
    finally:
        await conn.close()


async def test_a_newer_schema_stops_the_cli_with_a_clear_message(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("INSERT INTO schema_version (version, name) VALUES (9999, 'future')")
    finally:
        await conn.close()
    for command in ("migrate", "serve"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "run.py",
            command,
            cwd=ROOT,
            env={
                **os.environ,
                "WAGATE_DATABASE_URL": db_url,
                "WAGATE_DATA_DIR": str(tmp_path),
                "WAGATE_PORT": "0",
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1, (command, err.decode())
        assert "newer wagate" in err.decode()


async def test_a_failed_migration_leaves_nothing_behind(empty_db_url: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = migrate.load_migrations()
    broken = [
        *real,
        migrate.Migration(len(real) + 1, "broken", "CREATE TABLE half (id int); SELECT 1/0;"),
    ]
    monkeypatch.setattr(migrate, "load_migrations", lambda: broken)
    conn = await asyncpg.connect(empty_db_url)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate.migrate(conn)
        assert "half" not in await tables(conn)
        assert await migrate.current_version(conn) == len(real)
        # The lock was released: another run can proceed.
        monkeypatch.setattr(migrate, "load_migrations", lambda: real)
        assert await migrate.migrate(conn) == []
    finally:
        await conn.close()


async def test_two_processes_migrating_at_once_both_succeed(empty_db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "WAGATE_DATABASE_URL": empty_db_url, "WAGATE_DATA_DIR": str(tmp_path)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "run.py",
            "migrate",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 90)
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
    said = sorted(out.decode() for out, _ in outputs)
    assert sum("applied migrations" in s for s in said) == 1
    assert sum("nothing to do" in s for s in said) == 2
    conn = await asyncpg.connect(empty_db_url)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_version")]
        assert versions == [m.version for m in migrate.load_migrations()]
    finally:
        await conn.close()
