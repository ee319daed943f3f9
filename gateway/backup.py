"""`run.py backup PATH` and `run.py restore PATH`: which server, and is the gateway running.

Embedded PostgreSQL: with the gateway running, the backup goes through its unix socket (pg_dump
reads one consistent snapshot while the gateway works); with it stopped, the server is started
for the backup (under the data directory's serve lock, so no gateway starts meanwhile) and
stopped again. A restore needs the gateway stopped: it takes the serve lock, recreates the
database and loads the dump into it. With WAGATE_DATABASE_URL, the same programs work on that
server; a restore then replaces the dump's schemas and refuses while anything else is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from db import migrate
from db.backup import (
    BackupError,
    Manifest,
    Programs,
    Unpacked,
    create_backup,
    dump_schemas,
    replace_dir,
    restore_dump,
    run_program,
    unpack,
    write_private,
)
from db.embedded import EmbeddedPostgres
from db.pool import connect
from gateway import __version__
from gateway.settings import SECRET_KEY_FILE, Settings

SERVE_LOCK_FILE = "serve.lock"  # the lock `run.py serve` holds on its data directory
PSQL_TIMEOUT = 120.0


@contextlib.contextmanager
def serve_lock(settings: Settings) -> Iterator[bool]:
    """Take the data directory's serve lock if free; yields False while a gateway holds it."""
    settings.ensure_data_dir()
    with (settings.data_dir / SERVE_LOCK_FILE).open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def programs_for(settings: Settings) -> Programs:
    return Programs(settings.pg_bin_dir)


async def _schema_version(url: str) -> int:
    conn = await connect(url)
    try:
        return await migrate.current_version(conn)
    finally:
        await conn.close()


def _psql(programs: Programs, url: str, sql: str) -> str:
    return run_program(
        programs,
        "psql",
        "--dbname={url}",
        "--no-psqlrc",
        "-v",
        "ON_ERROR_STOP=1",
        "-tAc",
        sql,
        url=url,
        timeout=PSQL_TIMEOUT,
    ).strip()


def default_name() -> str:
    return f"wagate-backup-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.tar"


def backup(settings: Settings, path: Path, *, include_media: bool = True) -> tuple[Path, Manifest]:
    """Write a backup to `path` (a file, or a directory to put a dated file in)."""
    target = path / default_name() if path.is_dir() else path
    programs = programs_for(settings)
    media = settings.media_path if include_media else None
    key_file = settings.data_dir / SECRET_KEY_FILE

    def dump(url: str, database: str) -> Manifest:
        return create_backup(
            target,
            url=url,
            schema_version=asyncio.run(_schema_version(url)),
            wagate_version=__version__,
            database=database,
            media_dir=media,
            secret_key_file=key_file,
            programs=programs,
        )

    if settings.database_url is not None:
        return target, dump(settings.database_url.get_secret_value(), "external")
    pg = EmbeddedPostgres(settings.pg_dir)
    if not pg.initialized():
        raise BackupError(f"there is no database in {settings.pg_dir} to back up")
    with serve_lock(settings) as free:
        if not free:  # the gateway runs: dump through its socket, online
            if pg.status() is None:
                raise BackupError("the gateway is starting or stopping; try again in a moment")
            return target, dump(pg.url(), "embedded")
        url = pg.start()
        try:
            return target, dump(url, "embedded")
        finally:
            if pg.started_here:
                pg.stop()


@dataclass(frozen=True)
class RestoreReport:
    manifest: Manifest
    media_kept_at: Path | None
    secret_key: str  # "restored", "kept" (WAGATE_SECRET_KEY is set), "absent"


def restore(settings: Settings, archive: Path) -> RestoreReport:
    """Replace the database (and the media, and the secret key file) with a backup's."""
    if not archive.is_file():
        raise BackupError(f"{archive} does not exist")
    programs = programs_for(settings)
    settings.ensure_data_dir()
    with (
        serve_lock(settings) as free,
        tempfile.TemporaryDirectory(dir=settings.data_dir, prefix=".restore-") as tmp,
    ):
        if not free:
            raise BackupError(
                "the gateway is running on this data directory: stop it first "
                "(systemctl stop wagate, or pm2 stop wagate), then restore"
            )
        unpacked = unpack(archive, Path(tmp), latest_schema=migrate.latest_version())
        if settings.database_url is not None:
            url = settings.database_url.get_secret_value()
            _restore_external(programs, url, unpacked.dump)
            restored_version = asyncio.run(_schema_version(url))
        else:
            pg = EmbeddedPostgres(settings.pg_dir)
            url = pg.start()  # creates the database when this is a new data directory
            try:
                restore_dump(
                    programs, unpacked.dump, url, replace_schemas=_schemas(programs, url, unpacked)
                )
                restored_version = asyncio.run(_schema_version(url))
            finally:
                if pg.started_here:
                    pg.stop()
        if restored_version != unpacked.manifest.schema_version:
            raise BackupError(
                f"restored schema is at version {restored_version}, the manifest says "
                f"{unpacked.manifest.schema_version}"
            )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = None
        if unpacked.media is not None:
            unpacked.media.mkdir(exist_ok=True)
            kept = replace_dir(unpacked.media, settings.media_path, stamp)
        secret = _restore_secret_key(settings, unpacked.secret_key, stamp)
    return RestoreReport(unpacked.manifest, kept, secret)


def _restore_external(programs: Programs, url: str, dump: Path) -> None:
    others = _psql(
        programs,
        url,
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    if others != "0":
        raise BackupError(
            f"{others} other connection(s) use this database: stop every gateway first"
        )
    schemas = sorted(dump_schemas(programs, dump) | {"public"})
    restore_dump(programs, dump, url, replace_schemas=schemas)


def _schemas(programs: Programs, url: str, unpacked: Unpacked) -> list[str]:
    """What a restore into the embedded database replaces: the dump's schemas and every
    schema of ours there (the embedded database holds nothing else)."""
    found = _psql(
        programs,
        url,
        "SELECT string_agg(nspname, ',') FROM pg_namespace "
        "WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'",
    )
    return sorted(
        dump_schemas(programs, unpacked.dump) | {"public"} | set(filter(None, found.split(",")))
    )


def _restore_secret_key(settings: Settings, source: Path | None, stamp: str) -> str:
    if source is None:
        return "absent"
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return "kept"
    target = settings.data_dir / SECRET_KEY_FILE
    if target.exists() and target.read_bytes() != source.read_bytes():
        shutil.copy2(target, target.with_name(f"{SECRET_KEY_FILE}.before-restore-{stamp}"))
    write_private(target, source)
    os.chmod(target, 0o600)
    return "restored"
