"""systemd's notify protocol (`Type=notify`): READY, STOPPING, STATUS and WATCHDOG pings.

The protocol is one datagram per message, `KEY=value` lines, sent to the unix socket named in
`NOTIFY_SOCKET` (a leading `@` means Linux's abstract namespace). Without that variable (not
under systemd, or under pm2) every call is a no-op. The socket is ours alone: the variables are
taken out of the environment when read, so workers and the embedded PostgreSQL never see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from gateway.settings import ServiceManagerEnv

log = structlog.get_logger(__name__)

HealthCheck = Callable[[], Awaitable[str | None]]
"""None when healthy, else why not (the watchdog then skips its ping)."""


class SystemdNotifier:
    """Sends `KEY=value` messages to systemd; silent when not started by systemd."""

    def __init__(self, notify_socket: str | None) -> None:
        self._address: str | bytes | None = None
        if notify_socket:
            if notify_socket.startswith("@"):
                self._address = b"\0" + notify_socket[1:].encode()
            elif notify_socket.startswith("/"):
                self._address = notify_socket
            else:
                log.warning("NOTIFY_SOCKET is not a unix socket path; ignored", value=notify_socket)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one message (e.g. `"READY=1", "STATUS=serving"`); False when it did not go."""
        if self._address is None:
            return False
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(payload)
        except OSError as exc:
            log.warning("systemd notification failed", error=str(exc))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")


def watchdog_interval(env: ServiceManagerEnv) -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC), or None when no watchdog is asked for."""
    if not env.watchdog_usec or env.watchdog_usec <= 0:
        return None
    if env.watchdog_pid is not None and env.watchdog_pid != os.getpid():
        return None  # meant for another process
    return env.watchdog_usec / 1_000_000 / 2


class Watchdog:
    """Pings `WATCHDOG=1` every `interval` seconds, but only while the process is healthy.

    Healthy means: the event loop wakes this task on time (a loop blocked longer than the
    interval misses pings by itself) and every check answers None within the interval (the
    database pool gives a connection and answers `SELECT 1`). A missed ping is logged; systemd
    restarts the service once WATCHDOG_USEC passes without one.
    """

    def __init__(
        self, notifier: SystemdNotifier, interval: float, checks: list[tuple[str, HealthCheck]]
    ) -> None:
        self._notifier = notifier
        self._interval = interval
        self._checks = checks
        self._task: asyncio.Task[None] | None = None
        self.pings = 0
        self.skipped = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def problem(self) -> str | None:
        for name, check in self._checks:
            try:
                async with asyncio.timeout(self._interval):
                    why = await check()
            except TimeoutError:
                why = f"no answer within {self._interval:.1f}s"
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
            if why is not None:
                return f"{name}: {why}"
        return None

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            problem = await self.problem()
            if problem is None:
                self._notifier.notify("WATCHDOG=1")
                self.pings += 1
            else:
                self.skipped += 1
                log.warning("watchdog ping skipped", problem=problem)
                self._notifier.status(f"unhealthy: {problem}")
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))


def pool_check(pool: asyncpg.Pool) -> HealthCheck:
    """A check that the database pool hands out a connection that answers."""

    async def check() -> str | None:
        value = await pool.fetchval("SELECT 1")
        return None if value == 1 else f"SELECT 1 answered {value!r}"

    return check


def start_watchdog(
    notifier: SystemdNotifier, env: ServiceManagerEnv, pool: asyncpg.Pool
) -> Watchdog | None:
    """Start pinging when systemd asked for a watchdog (WatchdogSec=); None otherwise."""
    interval = watchdog_interval(env)
    if interval is None or not notifier.enabled:
        return None
    watchdog = Watchdog(notifier, interval, [("database", pool_check(pool))])
    watchdog.start()
    log.info("systemd watchdog on", interval=interval)
    return watchdog
