"""A worker process: hosts one (or a few) WhatsApp Web sessions and talks to the supervisor.

    python -m sessions.worker --config '<WorkerConfig JSON>'   # spawned by the supervisor
    python -m sessions.worker --init-store URL                 # create whatsmeow's tables once

neonize keeps process-global Go state without locks, and a crash of its Go side takes the whole
process down (NEONIZE.md), so each worker is a child process the supervisor can restart. The
worker dies with its parent (PR_SET_PDEATHSIG) and exits when the IPC socket closes. It also
fences itself: the supervisor passes on how long this node's leases let it run its sessions
(`run_until`); a gateway that stops extending it (its database hangs, or it froze) finds its
workers gone before another node may take their sessions over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from sessions import ipc

log = logging.getLogger("wagate.worker")


class WorkerConfig(BaseModel):
    ipc_fd: int
    worker_id: int
    driver: Literal["neonize", "fake"]
    data_dir: Path
    store_url: str
    max_sessions: int = 1
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    qr_first: float = 60.0
    qr_next: float = 20.0
    qr_codes: int = 6
    spool_sync: Literal["fsync", "flush"] = "fsync"
    log_level: str = "info"
    media_dir: Path | None = None
    media_max_bytes: int = 100 * 1024 * 1024
    recycle_after: int = 20
    shared_dir: Path | None = None


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this process when the gateway dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        log.warning("cannot set the parent-death signal")


def _quiet_neonize() -> None:
    os.environ.setdefault("NEONIZE_BOT_TAG", "off")  # before neonize is imported


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.runtimes: dict[int, Any] = {}
        self._out: asyncio.Queue[BaseModel | None] = asyncio.Queue()
        self._connect_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failed_connects = 0
        self.run_until: float | None = None  # time.monotonic(); None: not fenced

    def send(self, message: BaseModel) -> None:
        self._out.put_nowait(message)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _writer(self, writer: asyncio.StreamWriter) -> None:
        while True:
            message = await self._out.get()
            if message is None:
                break
            writer.write(ipc.encode(message))
            if self._out.empty():
                await writer.drain()

    def _factory(self) -> Any:
        from sessions.runtime import QrTiming

        timing = QrTiming(self.config.qr_first, self.config.qr_next, self.config.qr_codes)
        if self.config.driver == "fake":
            from sessions.fake_client import FakeClient
            from sessions.fake_server import FakeWhatsApp

            server = FakeWhatsApp(self._shared_dir / "fake-wa")
            return functools.partial(FakeClient, server=server, qr_timing=timing), timing
        from neonize.aioze.client import NewAClient

        return NewAClient, timing

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # Each live neonize session pins one executor thread for its whole life (NEONIZE.md).
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2 * self.config.max_sessions + 4))
        sock = socket.socket(fileno=self.config.ipc_fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        writer_task = asyncio.ensure_future(self._writer(writer))
        # The heavy imports (neonize loads its Go library) come before Hello: the supervisor
        # starts timing heartbeats at Hello.
        factory, timing = self._factory()
        self.send(
            ipc.Hello(version=ipc.PROTOCOL_VERSION, pid=os.getpid(), driver=self.config.driver)
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: reader.feed_eof())
        fence = asyncio.ensure_future(self._watch_fence())
        try:
            while True:
                try:
                    message = await ipc.read_to_worker(reader)
                except ipc.ProtocolError:
                    log.exception("bad frame from the supervisor")
                    break
                if message is None or isinstance(message, ipc.Shutdown):
                    break
                await self._handle(message, factory, timing)
        finally:
            fence.cancel()
            await self._stop_all()
            self._out.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer_task, 2)
            writer.close()

    async def _handle(self, message: Any, factory: Any, timing: Any) -> None:
        from sessions.backoff import Backoff
        from sessions.media import MediaStore
        from sessions.runtime import SessionRuntime
        from sessions.spool import Spool

        if isinstance(message, ipc.Ping):
            self.run_until = message.run_until
            self.send(ipc.Pong(nonce=message.nonce))
        elif isinstance(message, ipc.Ack):
            runtime = self.runtimes.get(message.session_id)
            if runtime is not None:
                runtime.spool.ack(message.seq)
            else:
                with Spool(self._spool_dir(message.session_id)) as spool:
                    spool.ack(message.seq)
        elif isinstance(message, ipc.StartSession):
            if message.run_until is not None:
                self.run_until = message.run_until
            old = self.runtimes.pop(message.session_id, None)
            if old is not None:
                await old.stop()
            runtime = SessionRuntime(
                message.session_id,
                factory=factory,
                store_url=self.config.store_url,
                spool=Spool(self._spool_dir(message.session_id), sync=self.config.spool_sync),
                send=self.send,
                connect_lock=self._connect_lock,
                backoff=Backoff(base=self.config.backoff_base, cap=self.config.backoff_cap),
                qr_timing=timing,
                on_connect_failure=self._connect_failed,
                media=MediaStore(
                    self.config.media_dir or self.config.data_dir / "media",
                    self.config.media_max_bytes,
                ),
            )
            self.runtimes[message.session_id] = runtime
            runtime.start(message.jid)
        elif isinstance(message, ipc.StopSession):
            runtime = self.runtimes.pop(message.session_id, None)
            if runtime is not None:
                await runtime.stop()
            else:
                self.send(ipc.SessionStatus(session_id=message.session_id, status="stopped"))
        elif isinstance(message, ipc.Request):
            self._spawn(self._request(message))

    async def _request(self, request: ipc.Request) -> None:
        from sessions.runtime import CommandError

        runtime = self.runtimes.get(request.session_id)
        try:
            if runtime is None:
                raise CommandError("not_connected", "the session is not running")
            result = await runtime.handle(request.command)
            response = ipc.Response(request_id=request.request_id, ok=True, result=result)
        except CommandError as exc:
            response = ipc.Response(
                request_id=request.request_id,
                ok=False,
                error=str(exc),
                error_kind=exc.kind,
            )
        except Exception as exc:
            log.exception("command failed")
            response = ipc.Response(
                request_id=request.request_id,
                ok=False,
                error=f"{type(exc).__name__}: {exc}",
                error_kind="failed",
            )
        self.send(response)

    def _connect_failed(self) -> None:
        """neonize keeps one PostgreSQL connection of every client whose connect failed, until
        the process exits: after enough failures, end this process so the supervisor starts a
        fresh one (the sessions resume there)."""
        self.failed_connects += 1
        if self.config.driver == "neonize" and self.failed_connects >= self.config.recycle_after:
            log.warning(
                "recycling this worker after %d failed connects (neonize leaks a database "
                "connection per failed connect)",
                self.failed_connects,
            )
            os._exit(ipc.RECYCLE_EXIT_CODE)

    def _spool_dir(self, session_id: int) -> Path:
        return self._shared_dir / "spool" / str(session_id)

    @property
    def _shared_dir(self) -> Path:
        return self.config.shared_dir or self.config.data_dir

    async def _watch_fence(self, period: float = 0.1) -> None:
        """Past `run_until` with sessions running: stop them and end the process at once (a
        process exit closes every WhatsApp connection it had; what was spooled and not yet
        acknowledged is replayed by whichever node runs the session next)."""
        while True:
            await asyncio.sleep(period)
            if self.run_until is None or not self.runtimes:
                continue
            late = time.monotonic() - self.run_until
            if late < 0:
                continue
            log.error(
                "the gateway has not renewed this node's leases (%.1fs past the fence): "
                "stopping sessions %s and exiting",
                late,
                sorted(self.runtimes),
            )
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._stop_all(timeout=0.5), 0.8)
            for handler in logging.getLogger().handlers:
                with contextlib.suppress(Exception):
                    handler.flush()
            os._exit(ipc.FENCED_EXIT_CODE)

    async def _stop_all(self, timeout: float = 5.0) -> None:
        runtimes = list(self.runtimes.values())
        self.runtimes.clear()
        if runtimes:
            await asyncio.wait(
                [asyncio.ensure_future(r.stop(timeout=timeout)) for r in runtimes],
                timeout=timeout + 3,
            )


def init_store(url: str) -> int:
    """Create whatsmeow's tables once, before any session connects (concurrent first connects
    on a fresh store fail with `table whatsmeow_device already exists`)."""
    _quiet_neonize()
    from neonize.aioze.client import ClientFactory

    ClientFactory.get_all_devices_from_db(url)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sessions.worker")
    parser.add_argument("--config", help="WorkerConfig as JSON")
    parser.add_argument("--init-store", metavar="URL", help="create whatsmeow's tables and exit")
    args = parser.parse_args(argv)
    if args.init_store:
        return init_store(args.init_store)
    if not args.config:
        parser.error("--config is required")
    config = WorkerConfig.model_validate_json(args.config)
    _die_with_parent()
    _quiet_neonize()
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s worker={config.worker_id} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("whatsmeow", "Whatsmeow", "neonize"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(Worker(config).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
