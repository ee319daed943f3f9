"""wagate's storage: the pool, migrations, one module per table (plain SQL + asyncpg)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from asyncpg import Connection, Pool, Record
    from asyncpg.pool import PoolConnectionProxy

    # A single connection, whether opened directly or borrowed from the pool.
    Conn: TypeAlias = Connection[Record] | PoolConnectionProxy[Record]
    # Anything a one-statement query can run on.
    Executor: TypeAlias = Conn | Pool[Record]
