"""systemd's notify protocol: our notifier against real unix datagram sockets, the watchdog's
health gate, and `run.py serve` as systemd would run it (READY, WATCHDOG pings, STOPPING)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests  # type: ignore[import-untyped]

from db.pool import create_pool
from gateway.settings import ServiceManagerEnv
from gateway.systemd import SystemdNotifier, Watchdog, pool_check, watchdog_interval
from tests.conftest import ROOT
from tests.procs import alive, free_port

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """What systemd does: a unix datagram socket whose path goes into NOTIFY_SOCKET."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield sock, path
    sock.close()


def receive(sock: socket.socket, seconds: float) -> list[str]:
    """Every message that arrives within the next `seconds`."""
    deadline = time.monotonic() + seconds
    got = []
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return got


def test_notifier_speaks_to_path_and_abstract_sockets(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    assert SystemdNotifier(path).ready("serving on http://127.0.0.1:8080")
    message = sock.recv(4096).decode()
    assert message.splitlines() == [
        "READY=1",
        "STATUS=serving on http://127.0.0.1:8080",
        f"MAINPID={os.getpid()}",
    ]

    name = f"wagate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind(b"\0" + name.encode())
        assert SystemdNotifier("@" + name).stopping()
        assert abstract.recv(4096).decode() == "STOPPING=1\nSTATUS=stopping"

    # Not under systemd: nothing to do, nothing fails.
    assert not SystemdNotifier(None).enabled
    assert not SystemdNotifier(None).notify("READY=1")
    # systemd gone (socket removed): a warning, never an exception.
    assert not SystemdNotifier(str(Path(path).with_name("gone.sock"))).notify("WATCHDOG=1")


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_us() -> None:
    env = ServiceManagerEnv(notify_socket="/x", watchdog_usec=30_000_000)
    assert watchdog_interval(env) == 15.0
    assert watchdog_interval(ServiceManagerEnv(notify_socket="/x")) is None
    mine = ServiceManagerEnv(watchdog_usec=2_000_000, watchdog_pid=os.getpid())
    assert watchdog_interval(mine) == 1.0
    other = ServiceManagerEnv(watchdog_usec=2_000_000, watchdog_pid=os.getpid() + 1)
    assert watchdog_interval(other) is None


async def test_watchdog_pings_only_while_the_database_answers(
    listener: tuple[socket.socket, str], db_url: str
) -> None:
    sock, path = listener
    sock.setblocking(False)
    pool = await create_pool(db_url, min_size=1, max_size=2, connect_timeout=5)
    watchdog = Watchdog(SystemdNotifier(path), 0.1, [("database", pool_check(pool))])
    watchdog.start()
    closed = False
    try:
        await asyncio.sleep(0.55)
        healthy = watchdog.pings
        assert 3 <= healthy <= 7
        assert watchdog.skipped == 0
        await pool.close()  # the database is gone for this process
        closed = True
        await asyncio.sleep(0.5)
        assert watchdog.pings == healthy, "pinged while the database did not answer"
        assert watchdog.skipped >= 3
    finally:
        await watchdog.stop()
        if not closed:
            await pool.close()
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    assert messages.count("WATCHDOG=1") == healthy
    assert any(m.startswith("STATUS=unhealthy: database") for m in messages)


def test_serve_under_systemd_notify(listener: tuple[socket.socket, str], tmp_path: Path) -> None:
    sock, path = listener
    port = free_port()
    data_dir = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAGATE_")}
    env.update(
        WAGATE_DATA_DIR=str(data_dir),
        WAGATE_PORT=str(port),
        WAGATE_DRIVER="fake",
        NOTIFY_SOCKET=path,
        WATCHDOG_USEC="1000000",  # WatchdogSec=1: a ping every 0.5 s
    )
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "run.py", "serve"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        before_ready: list[str] = []
        sock.settimeout(120)
        while True:
            message = sock.recv(4096).decode()
            if "READY=1" in message.splitlines():
                break
            before_ready.append(message)
        # READY means ready: /readyz answers 200 at once, no retry needed.
        ready = requests.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        assert f"MAINPID={proc.pid}" in message
        assert f"STATUS=serving on {base}" in message
        assert before_ready
        assert all(m.startswith("STATUS=") for m in before_ready)
        assert not any("WATCHDOG=1" in m for m in before_ready)

        # The embedded PostgreSQL (and any worker) does not inherit the notify socket.
        pg_pid = int((data_dir / "pg" / "postmaster.pid").read_text().splitlines()[0])
        environ = Path(f"/proc/{pg_pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))]

        # One ping every 0.5 s (half of WATCHDOG_USEC); a loaded machine may delay one.
        pings = [m for m in receive(sock, 3.0) if m == "WATCHDOG=1"]
        assert 4 <= len(pings) <= 8, pings

        proc.send_signal(signal.SIGTERM)
        after = receive(sock, 5)
        stopping = [m for m in after if "STOPPING=1" in m.splitlines()]
        assert stopping, after
        assert proc.wait(timeout=30) == 0
        assert not alive(pg_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        pid_file = data_dir / "pg" / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().splitlines()[0])
            if alive(pid):
                os.kill(pid, signal.SIGQUIT)
