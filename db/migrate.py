"""Schema migrations: numbered SQL files applied in order, each in its own transaction.

Files live in `db/migrations/` and are named `NNNN_what.sql`. A migration is never edited once
released: a change is a new file. The runner holds a PostgreSQL advisory lock for the whole run,
so two processes starting together never race (the second waits, then finds nothing to do). A
database whose schema is newer than this code refuses to start.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from db import Conn

log = logging.getLogger(__name__)

# An arbitrary, fixed 64-bit key for pg_advisory_lock: "wagate-migrate".
MIGRATION_LOCK_KEY = 0x7761676174656D67

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
_SELECT_APPLIED = "SELECT version FROM schema_version ORDER BY version"
_INSERT_VERSION = "INSERT INTO schema_version (version, name) VALUES ($1, $2)"
_TABLE_EXISTS = "SELECT to_regclass('schema_version') IS NOT NULL"
_MAX_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer wagate than this one."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every migration shipped with this code, in order; gaps and duplicates are errors."""
    found: list[Migration] = []
    for entry in resources.files("db").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if not match:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"migrations are not numbered 1..n: found {migration.version}")
    return found


def latest_version() -> int:
    migrations = load_migrations()
    return migrations[-1].version if migrations else 0


async def current_version(conn: Conn) -> int:
    if not await conn.fetchval(_TABLE_EXISTS):
        return 0
    return int(await conn.fetchval(_MAX_VERSION))


async def migrate(conn: Conn) -> list[int]:
    """Bring the schema up to date; return the versions applied by this call."""
    migrations = load_migrations()
    newest = migrations[-1].version if migrations else 0
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_VERSION_TABLE)
        applied = {row["version"] for row in await conn.fetch(_SELECT_APPLIED)}
        too_new = [v for v in applied if v > newest]
        if too_new:
            raise SchemaTooNewError(
                f"the database schema is at version {max(too_new)} but this wagate only knows "
                f"migrations up to {newest}: it was upgraded by a newer wagate. Run that version "
                f"(or restore a backup taken before the upgrade)."
            )
        for migration in migrations:
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(_INSERT_VERSION, migration.version, migration.name)
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


async def check_current(conn: Conn) -> tuple[int, int]:
    """(database version, code version)."""
    return await current_version(conn), latest_version()
