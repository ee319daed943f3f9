"""wagate's command line: `serve` (default), `migrate`, `create-user`, `settings`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import structlog
from aiohttp import web

from db import migrate, users
from db.backup import BackupError
from db.embedded import EmbeddedPostgres, EmbeddedPostgresError
from db.migrate import SchemaTooNewError
from db.pool import DatabaseUnavailableError, connect
from gateway import backup as backups
from gateway.app import create_app
from gateway.bootstrap import BootstrappedAdmin
from gateway.keys import POOL
from gateway.logs import configure_logging
from gateway.security import PasswordService
from gateway.settings import (
    ServiceManagerEnv,
    Settings,
    settings_table,
    take_service_manager_env,
)
from gateway.systemd import SystemdNotifier, Watchdog, start_watchdog

log = structlog.get_logger("wagate")

SERVE_LOCK = "serve.lock"


class CliError(Exception):
    """A failure worth one clear line on stderr and exit code 1."""


@contextlib.contextmanager
def data_dir_lock(settings: Settings) -> Iterator[None]:
    """One `serve` per data directory: two would fight over the embedded PostgreSQL and share
    one node identity in the session leases."""
    settings.ensure_data_dir()
    path = settings.data_dir / SERVE_LOCK
    handle: IO[str] = path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CliError(
                f"another `run.py serve` is already using {settings.data_dir} "
                "(stop it first, or point WAGATE_DATA_DIR elsewhere)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def announce_admin(admin: BootstrappedAdmin) -> None:
    lines = ["", "First start: an admin account was created.", f"  e-mail:   {admin.email}"]
    if admin.generated_password is not None:
        lines.append(f"  password: {admin.generated_password}")
        lines.append(f"  (also kept in {admin.password_file}, mode 0600; delete it once noted)")
    else:
        lines.append("  password: the one in WAGATE_ADMIN_PASSWORD")
    print("\n".join(lines) + "\n", flush=True)


async def serve(settings: Settings, service: ServiceManagerEnv | None = None) -> None:
    service = service or ServiceManagerEnv(notify_socket=None)
    notifier = SystemdNotifier(service.notify_socket)
    watchdog: Watchdog | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    app = create_app(settings, announce_admin=announce_admin)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, handle_signals=False)
    try:
        notifier.status("starting: database, migrations, sessions")
        setup = asyncio.ensure_future(runner.setup())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({setup, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not setup.done():
            log.info("stop requested during start-up")
            notifier.stopping()
            await setup  # let start-up finish so that cleanup sees a consistent state
            stopper.cancel()
            return
        stopper.cancel()
        setup.result()
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
        host, port = runner.addresses[0][:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
        print(f"wagate is serving on http://{shown}:{port}  (Ctrl-C stops it)", flush=True)
        log.info("serving", host=host, port=port)
        notifier.ready(f"serving on http://{shown}:{port}")
        watchdog = start_watchdog(notifier, service, app[POOL])
        await stop.wait()
        log.info("stopping")
        notifier.stopping()
    finally:
        if watchdog is not None:
            await watchdog.stop()
        await runner.cleanup()
        log.info("stopped")


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[str]:
    """A URL for CLI commands: the configured one, or the embedded server (started if needed)."""
    if settings.database_url is not None:
        yield settings.database_url.get_secret_value()
        return
    pg = EmbeddedPostgres(settings.pg_dir)
    url = await asyncio.to_thread(pg.start)
    try:
        yield url
    finally:
        if pg.started_here:
            await asyncio.to_thread(pg.stop)


async def run_migrate(settings: Settings) -> None:
    async with database(settings) as url:
        conn = await connect(url)
        try:
            applied = await migrate.migrate(conn)
            version = await migrate.current_version(conn)
        finally:
            await conn.close()
    if applied:
        print(f"applied migrations {applied}; schema at version {version}")
    else:
        print(f"schema already at version {version}; nothing to do")


async def run_create_user(settings: Settings, email: str, password: str, admin: bool) -> None:
    if len(password) < 8:
        raise CliError("the password needs at least 8 characters")
    async with database(settings) as url:
        conn = await connect(url)
        try:
            await migrate.migrate(conn)
            created = await users.create(
                conn,
                email=email,
                password_hash=PasswordService().hash_sync(password),
                role="admin" if admin else "operator",
            )
        finally:
            await conn.close()
    if created is None:
        raise CliError(f"a user with e-mail {email} already exists")
    print(f"created {created.role} {created.email} (id {created.id})")


def run_sim(settings: Settings, args: argparse.Namespace) -> None:
    """Act as the phone of a session (fake driver): the same files the fake WhatsApp reads."""
    from sessions.fake_server import (
        FakeWhatsApp,
        FakeWhatsAppError,
        Phone,
        SimMessage,
        SimReceipt,
    )

    phone = Phone(FakeWhatsApp(settings.shared_path / "fake-wa"), args.session_id)
    try:
        if args.action == "scan":
            phone.scan(phone=args.phone, push_name=args.push_name)
            print(f"scanned the QR of session {args.session_id}")
        elif args.action == "code":
            phone.enter_code(args.code)
            print("pairing code entered")
        elif args.action == "send":
            fields = {"type": args.type, "from": args.sender, "text": args.text}
            if args.file:
                import base64

                data = Path(args.file).read_bytes()
                fields.update(
                    data_b64=base64.b64encode(data).decode(), filename=Path(args.file).name
                )
            ids = phone.send(SimMessage.model_validate({k: v for k, v in fields.items() if v}))
            print(f"queued message {ids[0]}")
        elif args.action == "receipt":
            phone.receipt(SimReceipt.model_validate({"ids": args.ids, "status": args.status}))
            print("receipt queued")
        elif args.action in ("disconnect", "logout", "ban", "stream_replaced"):
            phone.control(args.action, seconds=getattr(args, "seconds", 3600))
            print(f"{args.action} queued")
        elif args.action == "sent":
            for item in phone.sent():
                print(item)
    except (FakeWhatsAppError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def run_backup(settings: Settings, path: Path, *, include_media: bool) -> None:
    target, manifest = backups.backup(settings, path, include_media=include_media)
    media = (
        f"{manifest.media_files} media files ({manifest.media_bytes / 1e6:.1f} MB)"
        if manifest.media_included
        else f"no media (back up {settings.media_path} yourself)"
    )
    print(f"wrote {target}: schema version {manifest.schema_version}, {media}")


def run_restore(settings: Settings, path: Path) -> None:
    report = backups.restore(settings, path)
    m = report.manifest
    print(f"restored the database of {m.created_at} (schema version {m.schema_version})")
    if not m.media_included:
        print(f"the backup has no media: {settings.media_path} was left as it was")
    elif report.media_kept_at is not None:
        print(f"media restored; the previous media directory is kept at {report.media_kept_at}")
    else:
        print(f"media restored ({m.media_files} files)")
    if report.secret_key == "kept":
        print("the secret key comes from WAGATE_SECRET_KEY: it must be the backed-up one")


def print_settings() -> None:
    width = max(len(name) for name, _, _ in settings_table())
    for name, default, description in settings_table():
        print(f"{name:<{width}}  {default or '-':<24}  {description}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description="wagate, a WhatsApp gateway")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the API and web UI (the default)")
    sub.add_parser("migrate", help="apply database migrations and exit")
    cu = sub.add_parser("create-user", help="create a user")
    cu.add_argument("--email", required=True)
    cu.add_argument("--password", required=True)
    cu.add_argument("--admin", action="store_true", help="make the user an admin")
    sub.add_parser("settings", help="list every WAGATE_* setting with its default")
    bk = sub.add_parser("backup", help="back up the database, media and secret key to one file")
    bk.add_argument("path", type=Path, help="file to write, or a directory for a dated file")
    bk.add_argument("--no-media", action="store_true", help="leave the media directory out")
    rs = sub.add_parser("restore", help="replace the database and media with a backup's")
    rs.add_argument("path", type=Path, help="a file written by `run.py backup`")
    sim = sub.add_parser("sim", help="act as the phone of a session (WAGATE_DRIVER=fake)")
    actions = sim.add_subparsers(dest="action", required=True)
    scan = actions.add_parser("scan", help="scan the QR code the session shows")
    scan.add_argument("session_id", type=int)
    scan.add_argument("--phone")
    scan.add_argument("--push-name")
    code = actions.add_parser("code", help="type the pairing code on the phone")
    code.add_argument("session_id", type=int)
    code.add_argument("code")
    send = actions.add_parser("send", help="a contact sends a message")
    send.add_argument("session_id", type=int)
    send.add_argument("--from", dest="sender", required=True)
    send.add_argument("--text")
    send.add_argument("--type", default="text")
    send.add_argument("--file", help="media file for image/video/audio/voice/document/sticker")
    receipt = actions.add_parser("receipt", help="deliver a receipt for sent messages")
    receipt.add_argument("session_id", type=int)
    receipt.add_argument("ids", nargs="+")
    receipt.add_argument("--status", default="read", choices=["delivered", "read", "played"])
    for name in ("disconnect", "logout", "stream_replaced"):
        control = actions.add_parser(name, help=f"{name.replace('_', ' ')} (as WhatsApp would)")
        control.add_argument("session_id", type=int)
    ban = actions.add_parser("ban", help="ban the account temporarily")
    ban.add_argument("session_id", type=int)
    ban.add_argument("--seconds", type=int, default=3600)
    sent = actions.add_parser("sent", help="what the session sent")
    sent.add_argument("session_id", type=int)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = args.command or "serve"
    if command == "settings":
        print_settings()
        return 0
    try:
        settings = Settings()
    except Exception as exc:
        print(f"wagate: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        if command == "serve":
            with data_dir_lock(settings):
                asyncio.run(serve(settings, take_service_manager_env()))
        elif command == "migrate":
            asyncio.run(run_migrate(settings))
        elif command == "create-user":
            asyncio.run(run_create_user(settings, args.email, args.password, args.admin))
        elif command == "sim":
            run_sim(settings, args)
        elif command == "backup":
            run_backup(settings, args.path, include_media=not args.no_media)
        elif command == "restore":
            run_restore(settings, args.path)
    except (
        CliError,
        SchemaTooNewError,
        DatabaseUnavailableError,
        EmbeddedPostgresError,
        BackupError,
    ) as exc:
        print(f"wagate: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
