"""`run.py backup` and `run.py restore` on the embedded PostgreSQL, as an operator runs them:
a real gateway with users, a linked session, messages and media; back up while it serves; wipe;
restore; everything is back, byte for byte."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import requests  # type: ignore[import-untyped]

from db.backup import libpq_target
from db.embedded import EmbeddedPostgres
from gateway.backup import SERVE_LOCK_FILE
from run import SERVE_LOCK
from sessions.fake_server import FakeWhatsApp, Phone, SimMessage
from tests.conftest import ROOT
from tests.procs import Server, alive, free_port

pytestmark = pytest.mark.timeout(300)

ADMIN = {"email": "admin@wagate.local", "password": "admin-password-1"}
ALICE = "+5215512345678"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 64 + b"\n%%EOF\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(
        tmp_path / "var",
        free_port(),
        WAGATE_DRIVER="fake",
        WAGATE_ADMIN_PASSWORD=ADMIN["password"],
        WAGATE_SPOOL_SYNC="flush",
    )
    yield srv
    srv.kill()
    pid_file = srv.data_dir / "pg" / "postmaster.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().splitlines()[0])
        if alive(pid):
            os.kill(pid, signal.SIGQUIT)


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def api(server: Server, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = requests.request(method, f"{server.base}{path}", headers=headers, timeout=10, **kw)
    assert resp.status_code < 300, resp.text
    return resp.json() if resp.content and "json" in resp.headers["Content-Type"] else resp


def wait(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def snapshot_db(data_dir: Path) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        conn = await asyncpg.connect(EmbeddedPostgres(data_dir / "pg").url())
        try:
            return {
                table: [dict(r) for r in await conn.fetch(query)]
                for table, query in {
                    "users": "SELECT id, email, password_hash, role FROM users ORDER BY id",
                    "sessions": "SELECT id, name, jid, phone, desired_state FROM sessions",
                    "messages": "SELECT id, wa_message_id, text_content, message_type, "
                    "media_sha256, media_status FROM messages ORDER BY id",
                    "conversations": "SELECT id, external_id, contact_name FROM conversations",
                    "schema": "SELECT version FROM schema_version ORDER BY version",
                }.items()
            }
        finally:
            await conn.close()

    return asyncio.run(read())


def snapshot_files(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_backup_while_serving_then_wipe_and_restore(server: Server, tmp_path: Path) -> None:
    assert SERVE_LOCK == SERVE_LOCK_FILE
    server.start()
    token = api(server, "POST", "/api/v1/auth/login", json=ADMIN)["access_token"]
    api(
        server,
        "POST",
        "/api/v1/users",
        token,
        json={"email": "ops@example.com", "password": "ops-password-1"},
    )
    sid = api(server, "POST", "/api/v1/sessions", token, json={"name": "support"})["id"]
    session = f"/api/v1/sessions/{sid}"
    wait(lambda: api(server, "GET", session, token)["state"] == "qr_required", "the QR")
    phone = Phone(FakeWhatsApp(server.data_dir / "fake-wa"), sid)
    phone.scan()
    wait(lambda: api(server, "GET", session, token)["state"] == "connected", "connected")
    phone.send(
        SimMessage.model_validate({"type": "text", "from": ALICE, "text": "hola"}),
        SimMessage.model_validate({"type": "text", "from": ALICE, "text": "¿sigue abierto?"}),
        SimMessage.model_validate(
            {
                "type": "document",
                "from": ALICE,
                "filename": "invoice.pdf",
                "data_b64": base64.b64encode(PDF).decode(),
            }
        ),
    )

    def stored() -> bool:
        rows = snapshot_db(server.data_dir)["messages"]
        return len(rows) == 3 and rows[-1]["media_status"] == "stored"

    wait(stored, "three messages and the PDF")
    before = snapshot_db(server.data_dir)
    media_before = snapshot_files(server.data_dir / "media")
    assert len(media_before) == 1
    key_before = (server.data_dir / "secret_key").read_bytes()

    # Online backup, into a directory: a dated file.
    backups = tmp_path / "backups"
    backups.mkdir()
    made = cli(server, "backup", str(backups))
    assert made.returncode == 0, made.stderr
    (archive,) = backups.iterdir()
    assert archive.name.startswith("wagate-backup-")
    assert archive.stat().st_mode & 0o077 == 0, "a backup holds secrets: owner-only"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert names[0] == "manifest.json"
    assert {"database.dump", "secret_key", "media"} <= set(names)
    assert manifest["schema_version"] == before["schema"][-1]["version"]
    assert manifest["media_files"] == 1
    assert manifest["database"] == "embedded"
    assert manifest["pg_dump_version"].startswith("pg_dump (PostgreSQL)")

    # No restore under a running gateway; nothing was touched.
    refused = cli(server, "restore", str(archive))
    assert refused.returncode == 1
    assert "gateway is running" in refused.stderr
    assert requests.get(f"{server.base}/readyz", timeout=5).status_code == 200

    code, _, err = server.signal(signal.SIGTERM)
    assert code == 0, err

    # Disaster: the database, the media and the key are gone; the session keeps changing.
    shutil.rmtree(server.data_dir / "pg")
    shutil.rmtree(server.data_dir / "media")
    (server.data_dir / "secret_key").unlink()

    restored = cli(server, "restore", str(archive))
    assert restored.returncode == 0, restored.stderr
    assert "restored the database" in restored.stdout
    assert not (server.data_dir / "pg" / "postmaster.pid").exists(), "restore left PG running"
    pg = EmbeddedPostgres(server.data_dir / "pg")
    pg.start()
    try:
        assert snapshot_db(server.data_dir) == before
    finally:
        pg.stop()
    assert snapshot_files(server.data_dir / "media") == media_before
    assert (server.data_dir / "secret_key").read_bytes() == key_before

    # Offline backup (the CLI starts and stops the embedded server itself), without media.
    offline = tmp_path / "offline.tar"
    made = cli(server, "backup", str(offline), "--no-media")
    assert made.returncode == 0, made.stderr
    assert "no media" in made.stdout
    with tarfile.open(offline) as tar:
        assert "media" not in tar.getnames()
    assert not (server.data_dir / "pg" / "postmaster.pid").exists()

    # The gateway comes back with everything: old tokens still valid (same key), the media.
    server.stdout.clear()
    server.start()
    assert "First start" not in "".join(server.stdout)
    assert api(server, "GET", "/api/v1/me", token)["email"] == ADMIN["email"]
    api(
        server,
        "POST",
        "/api/v1/auth/login",
        json={"email": "ops@example.com", "password": "ops-password-1"},
    )
    pdf_id = before["messages"][-1]["id"]
    got = api(server, "GET", f"/api/v1/media/{pdf_id}", token)
    assert got.content == PDF
    wait(lambda: api(server, "GET", session, token)["state"] == "connected", "reconnected")
    code, _, err = server.signal(signal.SIGTERM)
    assert code == 0, err


def test_a_damaged_or_newer_backup_is_refused_before_anything_changes(
    server: Server, tmp_path: Path
) -> None:
    server.start()
    code, _, err = server.signal(signal.SIGTERM)
    assert code == 0, err
    archive = tmp_path / "b.tar"
    assert cli(server, "backup", str(archive)).returncode == 0
    before = snapshot_files(server.data_dir / "pg" / "global")

    newer = tmp_path / "newer.tar"
    with tarfile.open(archive) as src, tarfile.open(newer, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if member.name == "manifest.json":
                body = json.loads(data.read())  # type: ignore[union-attr]
                body["schema_version"] = 9999
                raw = json.dumps(body).encode()
                member.size = len(raw)
                data = io.BytesIO(raw)
            dst.addfile(member, data)
    result = cli(server, "restore", str(newer))
    assert result.returncode == 1
    assert "schema is at version 9999" in result.stderr

    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar at all")
    result = cli(server, "restore", str(garbage))
    assert result.returncode == 1
    assert "cannot read" in result.stderr
    assert snapshot_files(server.data_dir / "pg" / "global") == before


def test_libpq_target_moves_the_password_out_of_the_command_line() -> None:
    url, env = libpq_target("postgresql://wagate:s3cr%40t@db.internal:5433/wagate?sslmode=require")
    assert url == "postgresql://wagate@db.internal:5433/wagate?sslmode=require"
    assert env == {"PGPASSWORD": "s3cr@t"}
    socket_url = "postgresql://postgres@/wagate?host=/srv/wagate/var/run"
    assert libpq_target(socket_url) == (socket_url, {})


async def test_backup_and_restore_with_a_database_url(db_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAGATE_")}
    env.update(WAGATE_DATA_DIR=str(tmp_path / "var"), WAGATE_DATABASE_URL=db_url)

    async def run(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "run.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    async def emails() -> list[str]:
        conn = await asyncpg.connect(db_url)
        try:
            return [r["email"] for r in await conn.fetch("SELECT email FROM users ORDER BY id")]
        finally:
            await conn.close()

    made = await run("create-user", "--email", "kept@example.com", "--password", "password-123")
    assert made.returncode == 0, made.stderr
    archive = tmp_path / "external.tar"
    made = await run("backup", str(archive))
    assert made.returncode == 0, made.stderr
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest["database"] == "external"
    made = await run("create-user", "--email", "later@example.com", "--password", "password-123")
    assert made.returncode == 0, made.stderr
    assert await emails() == ["kept@example.com", "later@example.com"]

    # Someone is connected (a gateway, say): refused, nothing changed.
    conn = await asyncpg.connect(db_url)
    try:
        refused = await run("restore", str(archive))
    finally:
        await conn.close()
    assert refused.returncode == 1
    assert "other connection" in refused.stderr
    assert await emails() == ["kept@example.com", "later@example.com"]

    # A restore that fails halfway (here: an event trigger refuses the dump's first index,
    # long after its tables were dropped and made again) leaves the database as it was.
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "CREATE SCHEMA guard; "
            "CREATE FUNCTION guard.no_index() RETURNS event_trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full (simulated)'; END $$; "
            "CREATE EVENT TRIGGER no_index ON ddl_command_end WHEN TAG IN ('CREATE INDEX') "
            "EXECUTE FUNCTION guard.no_index()"
        )
    finally:
        await conn.close()
    failed = await run("restore", str(archive))
    assert failed.returncode == 1
    assert "disk full (simulated)" in failed.stderr
    assert await emails() == ["kept@example.com", "later@example.com"]
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("DROP EVENT TRIGGER no_index; DROP SCHEMA guard CASCADE")
    finally:
        await conn.close()

    restored = await run("restore", str(archive))
    assert restored.returncode == 0, restored.stderr
    assert await emails() == ["kept@example.com"]
