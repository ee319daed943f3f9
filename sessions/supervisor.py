"""SessionSupervisor: runs in the gateway process (never imports neonize) and keeps every
WhatsApp Web session alive in worker processes.

- Spawns `python -m sessions.worker` children (one session each by default), talks to them over
  a socketpair with `sessions.ipc` frames, pings them and kills one that stops answering.
- Restarts a dead worker with capped, jittered backoff; its sessions resume, others never notice.
- Owns each session's state: ONE method, `set_state`, persists it, logs it and emits it.
- Stores durable events in one transaction per batch and acknowledges their sequence numbers to
  the worker only after the commit, so a crash anywhere replays instead of losing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import logging
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import asyncpg
import psutil

from db import contacts as contacts_db
from db import conversations as conversations_db
from db import messages as messages_db
from db import sessions as sessions_db
from sessions import events, ipc
from sessions.backoff import Backoff
from sessions.ingest import IngestObserver, SessionIngest
from sessions.store import Changes, MediaRequest, StoreOptions, phone_of, store_contact

log = logging.getLogger(__name__)

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)

Emit = Callable[[str, int, int | None, dict[str, Any]], Awaitable[Any]]
"""(event name, owner user id, session id, payload) -> published to the user's clients."""
EmitMany = Callable[[int, int | None, list[tuple[str, dict[str, Any]]]], Awaitable[Any]]
"""(owner user id, session id, [(event name, payload), ...]) -> published in one go."""

TERMINAL_STATES = frozenset({"logged_out", "banned", "replaced", "qr_expired", "failed", "stopped"})


@dataclass(frozen=True)
class SupervisorConfig:
    driver: Literal["neonize", "fake"]
    data_dir: Path
    store_url: str
    sessions_per_worker: int = 1
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 10.0
    restart_base: float = 0.5
    restart_cap: float = 30.0
    reconnect_base: float = 1.0
    reconnect_cap: float = 60.0
    qr_first: float = 60.0
    qr_next: float = 20.0
    qr_codes: int = 6
    spool_sync: Literal["fsync", "flush"] = "fsync"
    log_level: str = "info"
    python: str = sys.executable
    request_timeout: float = 30.0
    keep_revoked: bool = True
    media_dir: Path | None = None
    media_max_bytes: int = 100 * 1024 * 1024
    media_retry_base: float = 1.0
    recycle_after: int = 20  # failed connects before a neonize worker is replaced
    shared_dir: Path | None = None  # spool and fake WhatsApp files (default: data_dir)


@dataclass
class QrState:
    code: str
    expires_at: datetime


@dataclass
class WorkerHandle:
    id: int
    sessions: set[int] = field(default_factory=set)
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    held_starts: set[int] = field(default_factory=set)  # to send at Hello
    pending: dict[int, asyncio.Future[ipc.Response]] = field(default_factory=dict)
    last_pong: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.monotonic)
    backoff: Backoff | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    restarting: bool = False
    retiring: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def send(self, message: ipc.ToWorker | Any) -> None:
        if self.writer is None or self.writer.is_closing():
            raise ConnectionError("worker is not connected")
        self.writer.write(ipc.encode(message))


@dataclass
class HistoryProgress:
    """A session's history import since this process started (for metrics)."""

    percent: int = 0
    chunks: int = 0
    imported: int = 0
    skipped: int = 0


class SessionUnavailable(Exception):
    """The session is not running in any worker (stopped, logged out, ...)."""


class CommandFailed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ProcessStats:
    pid: int
    rss_bytes: int
    pss_bytes: int | None
    cpu_percent: float
    sessions_in_worker: int
    restarts: int


class SessionSupervisor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        config: SupervisorConfig,
        emit: Emit | None = None,
        emit_many: EmitMany | None = None,
        observer: IngestObserver | None = None,
    ):
        self.pool = pool
        self._observer = observer
        self.config = config
        self._emit = emit
        self._emit_many = emit_many
        self._workers: dict[int, WorkerHandle] = {}
        self._session_worker: dict[int, WorkerHandle] = {}
        self._owners: dict[int, int] = {}
        self._qr: dict[int, QrState] = {}
        self._pair_codes: dict[int, str] = {}
        self._worker_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._restarts: dict[int, int] = {}
        self._state_locks: dict[int, asyncio.Lock] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._ingest: dict[int, SessionIngest] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cpu: dict[int, psutil.Process] = {}
        self._running = False
        self.states: dict[int, str] = {}
        self._next_attempt: dict[int, datetime] = {}
        self.history: dict[int, HistoryProgress] = {}
        # The fence (ipc.Ping): until when this node's leases let its workers run sessions,
        # and who hears of sessions a worker stopped because that moment passed.
        self.run_until: float | None = None
        self.on_fenced: Callable[[list[int]], Awaitable[None]] | None = None

    # -- small helpers ------------------------------------------------------------------------

    @staticmethod
    def _detached(coro: Any) -> asyncio.Task[Any]:
        """A task outside the caller's context: supervisor work started from inside an HTTP
        request must not log under that request's id for the rest of its life."""
        return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())

    def _spawn(self, coro: Awaitable[Any], what: str) -> asyncio.Task[Any]:
        task = self._detached(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed", what, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def _publish(self, name: str, session_id: int, payload: dict[str, Any]) -> None:
        owner = self._owners.get(session_id)
        if self._emit is None or owner is None:
            return
        try:
            await self._emit(name, owner, session_id, payload)
        except Exception:
            log.exception("publishing %s failed", name)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def stored_events(self) -> int:
        """Durable worker events stored since start (all sessions)."""
        return sum(ingest.stored for ingest in self._ingest.values())

    def ingest_backlog(self, session_id: int) -> int:
        ingest = self._ingest.get(session_id)
        return ingest.backlog if ingest is not None else 0

    # -- start and stop -----------------------------------------------------------------------

    async def start(self, *, autostart: bool = True) -> None:
        """Get ready; with `autostart`, bring up every session that should run (those that were
        running before). Without it, sessions start when this node takes their lease."""
        self._running = True
        if self.config.driver == "neonize":
            await self._init_store()
        if autostart:
            for session in await sessions_db.to_run(self.pool):
                await self.start_session(session.id)

    async def _init_store(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.config.python,
            "-m",
            "sessions.worker",
            "--init-store",
            self.config.store_url,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        if proc.returncode != 0:
            raise RuntimeError(f"creating the whatsmeow device store failed: {err.decode()[-500:]}")

    async def stop(self, timeout: float = 8.0) -> None:
        """Stop every worker: ask nicely, then kill. Sessions keep desired_state (they come
        back on the next start)."""
        self._running = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        workers = list(self._workers.values())
        await asyncio.gather(*(self._retire(w, timeout) for w in workers))
        await asyncio.gather(*(ingest.close() for ingest in self._ingest.values()))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _retire(self, worker: WorkerHandle, timeout: float) -> None:
        worker.retiring = True
        for task in worker.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        proc = worker.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ConnectionError, OSError):
                worker.send(ipc.Shutdown())
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning("worker %s did not stop in %.0fs; killing it", worker.id, timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        await _close(worker.writer)
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(SessionUnavailable("the worker stopped"))
        self._workers.pop(worker.id, None)
        self._cpu.pop(worker.id, None)
        for sid in worker.sessions:
            if self._session_worker.get(sid) is worker:
                self._session_worker.pop(sid, None)

    # -- workers ------------------------------------------------------------------------------

    def _worker_for_new_session(self) -> WorkerHandle:
        for worker in self._workers.values():
            if not worker.retiring and len(worker.sessions) < self.config.sessions_per_worker:
                return worker
        worker = WorkerHandle(
            id=next(self._worker_ids),
            backoff=Backoff(base=self.config.restart_base, cap=self.config.restart_cap),
        )
        self._workers[worker.id] = worker
        return worker

    async def _launch(self, worker: WorkerHandle) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        config = {
            "ipc_fd": child.fileno(),
            "worker_id": worker.id,
            "driver": self.config.driver,
            "data_dir": str(self.config.data_dir),
            "store_url": self.config.store_url,
            "max_sessions": self.config.sessions_per_worker,
            "backoff_base": self.config.reconnect_base,
            "backoff_cap": self.config.reconnect_cap,
            "qr_first": self.config.qr_first,
            "qr_next": self.config.qr_next,
            "qr_codes": self.config.qr_codes,
            "spool_sync": self.config.spool_sync,
            "log_level": self.config.log_level,
            "media_dir": str(self.config.media_dir) if self.config.media_dir else None,
            "media_max_bytes": self.config.media_max_bytes,
            "recycle_after": self.config.recycle_after,
            "shared_dir": str(self.config.shared_dir or self.config.data_dir),
        }
        import json

        worker.ready = asyncio.Event()
        worker.held_starts = set()
        try:
            try:
                worker.proc = await asyncio.create_subprocess_exec(
                    self.config.python,
                    "-m",
                    "sessions.worker",
                    "--config",
                    json.dumps(config),
                    pass_fds=(child.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                    cwd=PROJECT_ROOT,
                )
            finally:
                child.close()
            reader, writer = await asyncio.open_unix_connection(sock=parent)
        except BaseException:
            parent.close()  # cancelled (a stop or a hand-over) or failed before it was wired
            raise
        worker.writer = writer
        worker.started_at = time.monotonic()
        worker.last_pong = time.monotonic()
        worker.tasks = [
            self._detached(self._read_worker(worker, reader)),
            self._detached(self._heartbeat(worker)),
        ]
        self._cpu[worker.id] = psutil.Process(worker.proc.pid)
        with contextlib.suppress(psutil.Error):
            self._cpu[worker.id].cpu_percent(None)
        log.info("worker %s started (pid %s)", worker.id, worker.proc.pid)

    async def _read_worker(self, worker: WorkerHandle, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await ipc.read_to_supervisor(reader)
                if message is None:
                    break
                await self._on_worker_message(worker, message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker %s: broken IPC stream", worker.id)
        if not worker.retiring:
            self._spawn(self._worker_died(worker), f"restart of worker {worker.id}")

    async def _heartbeat(self, worker: WorkerHandle) -> None:
        nonce = 0
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            if not worker.ready.is_set():
                if time.monotonic() - worker.started_at > self.config.heartbeat_timeout * 3:
                    log.error("worker %s never said hello; killing it", worker.id)
                    self._kill(worker)
                    return
                continue
            if time.monotonic() - worker.last_pong > self.config.heartbeat_timeout:
                log.error(
                    "worker %s has not answered for %.0fs; killing it",
                    worker.id,
                    time.monotonic() - worker.last_pong,
                )
                self._kill(worker)
                return
            nonce += 1
            with contextlib.suppress(ConnectionError, OSError):
                worker.send(ipc.Ping(nonce=nonce, run_until=self.run_until))

    def fence_until(self, run_until: float) -> None:
        """This node's leases let its sessions run until `run_until` (time.monotonic()): tell
        every worker now, so one whose gateway then freezes still stops in time."""
        self.run_until = run_until
        for worker in self._workers.values():
            if worker.ready.is_set() and not worker.retiring:
                with contextlib.suppress(ConnectionError, OSError):
                    worker.send(ipc.Ping(nonce=0, run_until=run_until))

    def _kill(self, worker: WorkerHandle) -> None:
        if worker.proc is not None and worker.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGKILL)

    async def _worker_died(self, worker: WorkerHandle) -> None:
        if worker.restarting or worker.retiring:
            return
        worker.restarting = True
        for task in worker.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if worker.proc is not None:
            self._kill(worker)
            code = await worker.proc.wait()
        else:
            code = None
        await _close(worker.writer)
        worker.writer = None
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(SessionUnavailable("the worker died"))
        worker.pending.clear()
        assert worker.backoff is not None
        if time.monotonic() - worker.started_at >= worker.backoff.reset_after:
            worker.backoff.reset()
        if code == ipc.FENCED_EXIT_CODE:
            await self._fenced(worker)
            return
        delay = worker.backoff.next_delay()
        reason = (
            "worker recycled after repeated connect failures"
            if code == ipc.RECYCLE_EXIT_CODE
            else f"worker process ended (exit {code})"
        )
        log.warning("worker %s: %s; restarting in %.1fs", worker.id, reason, delay)
        resume = sorted(worker.sessions)
        next_at = datetime.now(UTC) + timedelta(seconds=delay)
        for sid in resume:
            self._restarts[sid] = self._restarts.get(sid, 0) + 1
            await self.set_state(sid, "reconnecting", error=reason, next_attempt_at=next_at)
        await asyncio.sleep(delay)
        worker.restarting = False
        if not self._running or not worker.sessions:
            self._workers.pop(worker.id, None)
            return
        await self._launch(worker)
        for sid in resume:
            if sid in worker.sessions:
                await self._send_start(worker, sid)

    async def _fenced(self, worker: WorkerHandle) -> None:
        """The worker stopped its sessions itself, past the fence: they are not running here
        any more and do not come back here unless this node renews their leases."""
        fenced = sorted(worker.sessions)
        log.warning("worker %s stopped sessions %s at the lease fence", worker.id, fenced)
        self._workers.pop(worker.id, None)
        self._cpu.pop(worker.id, None)
        worker.restarting = False
        for sid in fenced:
            if self._session_worker.get(sid) is worker:
                self._session_worker.pop(sid, None)
            self._cancel_timer(sid)
            self._qr.pop(sid, None)
            self._pair_codes.pop(sid, None)
            self.states.pop(sid, None)
            self._next_attempt.pop(sid, None)
            self.history.pop(sid, None)
        worker.sessions.clear()
        if self.on_fenced is not None:
            await self.on_fenced(fenced)

    async def _on_worker_message(self, worker: WorkerHandle, message: Any) -> None:
        if isinstance(message, ipc.Hello):
            if message.version != ipc.PROTOCOL_VERSION:
                log.error("worker %s speaks protocol %s", worker.id, message.version)
                self._kill(worker)
                return
            worker.last_pong = time.monotonic()
            worker.ready.set()
            # The starts held back while it was loading (see _send_start), with the fence as
            # it is now.
            held_back, worker.held_starts = worker.held_starts, set()
            for sid in sorted(held_back & worker.sessions):
                await self._send_start(worker, sid)
        elif isinstance(message, ipc.Pong):
            worker.last_pong = time.monotonic()
        elif isinstance(message, ipc.EventFrame):
            worker.last_pong = time.monotonic()
            await self._on_frame(worker, message)
        elif isinstance(message, ipc.SessionStatus):
            await self._on_status(worker, message)
        elif isinstance(message, ipc.Response):
            future = worker.pending.pop(message.request_id, None)
            if future is not None and not future.done():
                future.set_result(message)

    # -- sessions -----------------------------------------------------------------------------

    async def start_session(self, session_id: int) -> None:
        session = await sessions_db.get(self.pool, session_id)
        if session is None:
            raise SessionUnavailable(f"no session {session_id}")
        if session.channel != "web":
            # A Cloud API number has no device and no worker: never start one for it.
            raise SessionUnavailable(f"session {session_id} is a Cloud API number")
        self._owners[session_id] = session.owner_id
        await sessions_db.set_desired(self.pool, session_id, "running")
        self._cancel_timer(session_id)
        current = self._session_worker.get(session_id)
        if current is not None and current.proc is not None and current.proc.returncode is None:
            await self._send_start(current, session_id)
            return
        worker = self._worker_for_new_session()
        worker.sessions.add(session_id)
        self._session_worker[session_id] = worker
        await self.set_state(session_id, "starting")
        needs_process = worker.proc is None or worker.proc.returncode is not None
        if needs_process and not worker.restarting:
            await self._launch(worker)
        await self._send_start(worker, session_id)

    async def _send_start(self, worker: WorkerHandle, session_id: int) -> None:
        if not worker.ready.is_set():
            # Still loading (neonize's library takes seconds on a busy machine): the start is
            # sent at its Hello. Queued now, it would carry a fence that may be past by the
            # time the worker reads it, and the worker would stop the session at once.
            # (Checked before any await: either this or the Hello sends it, never both.)
            worker.held_starts.add(session_id)
            self._qr.pop(session_id, None)
            return
        session = await sessions_db.get(self.pool, session_id)
        if session is None:
            return
        self._qr.pop(session_id, None)
        with contextlib.suppress(ConnectionError, OSError):
            worker.send(
                ipc.StartSession(session_id=session_id, jid=session.jid, run_until=self.run_until)
            )

    async def stop_session(self, session_id: int, *, state: str = "stopped") -> None:
        """Stop the session's client and, when it was alone in its worker, the worker too."""
        await sessions_db.set_desired(self.pool, session_id, "stopped")
        self._cancel_timer(session_id)
        await self._detach(session_id)
        self._qr.pop(session_id, None)
        self._pair_codes.pop(session_id, None)
        await self.set_state(session_id, state)

    async def _detach(self, session_id: int) -> None:
        worker = self._session_worker.pop(session_id, None)
        if worker is None:
            return
        worker.sessions.discard(session_id)
        if not worker.sessions:
            # Alone: end the whole process (an expired or stuck pairing leaves a busy thread
            # that only process exit clears).
            await self._retire(worker, 5.0)
        else:
            with contextlib.suppress(ConnectionError, OSError):
                worker.send(ipc.StopSession(session_id=session_id))

    async def release(self, session_id: int) -> None:
        """Stop running the session here without changing what it should be: another gateway
        node takes it over (its desired state and its stored state stay as they are)."""
        self._cancel_timer(session_id)
        await self._detach(session_id)
        self._qr.pop(session_id, None)
        self._pair_codes.pop(session_id, None)
        self.states.pop(session_id, None)
        self._next_attempt.pop(session_id, None)
        self.history.pop(session_id, None)  # the node that takes it over reports it now

    async def logout(self, session_id: int) -> None:
        """Unlink the device (WhatsApp forgets it), then stop."""
        if session_id in self._session_worker:
            with contextlib.suppress(SessionUnavailable, CommandFailed, TimeoutError):
                await self.request(session_id, ipc.Logout(), timeout=15)
        await sessions_db.clear_identity(self.pool, session_id)
        await self.stop_session(session_id, state="logged_out")

    async def forget(self, session_id: int) -> None:
        """The session row is going away: stop everything that belongs to it."""
        self._cancel_timer(session_id)
        await self._detach(session_id)
        self._qr.pop(session_id, None)
        self._owners.pop(session_id, None)
        self.states.pop(session_id, None)
        self.history.pop(session_id, None)

    async def request(
        self, session_id: int, command: Any, *, timeout: float | None = None
    ) -> dict[str, Any]:
        worker = self._session_worker.get(session_id)
        if worker is None or worker.writer is None:
            raise SessionUnavailable("the session is not running")
        request_id = next(self._request_ids)
        future: asyncio.Future[ipc.Response] = asyncio.get_running_loop().create_future()
        worker.pending[request_id] = future
        try:
            worker.send(ipc.Request(request_id=request_id, session_id=session_id, command=command))
            response = await asyncio.wait_for(future, timeout or self.config.request_timeout)
        finally:
            worker.pending.pop(request_id, None)
        if not response.ok:
            raise CommandFailed(response.error_kind or "failed", response.error)
        return response.result

    def qr(self, session_id: int) -> QrState | None:
        state = self._qr.get(session_id)
        if state is None or state.expires_at <= datetime.now(UTC):
            return None
        return state

    def next_attempt_at(self, session_id: int) -> datetime | None:
        """When a `reconnecting` session tries again (None otherwise)."""
        if self.states.get(session_id) != "reconnecting":
            return None
        return self._next_attempt.get(session_id)

    def worker_pid(self, session_id: int) -> int | None:
        worker = self._session_worker.get(session_id)
        return worker.pid if worker is not None else None

    def stats(self, session_id: int) -> ProcessStats | None:
        worker = self._session_worker.get(session_id)
        if worker is None or worker.proc is None or worker.proc.returncode is not None:
            return None
        proc = self._cpu.get(worker.id)
        if proc is None:
            return None
        try:
            with proc.oneshot():
                try:
                    full = proc.memory_full_info()
                    rss, pss = int(full.rss), int(getattr(full, "pss", 0)) or None
                except psutil.AccessDenied:
                    rss, pss = int(proc.memory_info().rss), None
                cpu = float(proc.cpu_percent(None))
        except psutil.Error:
            return None
        return ProcessStats(
            pid=proc.pid,
            rss_bytes=rss,
            pss_bytes=pss,
            cpu_percent=cpu,
            sessions_in_worker=len(worker.sessions),
            restarts=self._restarts.get(session_id, 0),
        )

    def all_stats(self) -> dict[int, ProcessStats]:
        result = {}
        for sid in list(self._session_worker):
            stats = self.stats(sid)
            if stats is not None:
                result[sid] = stats
        return result

    def _cancel_timer(self, session_id: int) -> None:
        timer = self._timers.pop(session_id, None)
        if timer is not None:
            timer.cancel()

    # -- the one place a session's state changes ---------------------------------------------

    async def set_state(
        self,
        session_id: int,
        state: str,
        *,
        error: str | None = None,
        banned_until: datetime | None = None,
        next_attempt_at: datetime | None = None,
        detail: str | None = None,
    ) -> None:
        lock = self._state_locks.setdefault(session_id, asyncio.Lock())
        async with lock:
            session = await sessions_db.set_state(
                self.pool, session_id, state, last_error=error, banned_until=banned_until
            )
        if session is None:
            self.states.pop(session_id, None)
            return
        self._owners[session_id] = session.owner_id
        self.states[session_id] = state
        if next_attempt_at is not None:
            self._next_attempt[session_id] = next_attempt_at
        else:
            self._next_attempt.pop(session_id, None)
        log.info(
            "session %s -> %s%s",
            session_id,
            state,
            f" ({error or detail})" if error or detail else "",
        )
        payload: dict[str, Any] = {
            "session_id": session_id,
            "state": state,
            "error": error,
            "banned_until": banned_until.isoformat() if banned_until else None,
            "next_attempt_at": next_attempt_at.isoformat() if next_attempt_at else None,
            "phone": session.phone,
            "jid": session.jid,
        }
        await self._publish("session-state", session_id, payload)
        if state == "connected":
            await self._publish("session-ready", session_id, {"success": True})
        elif state in TERMINAL_STATES:
            await self._publish("session-closed", session_id, {"reason": error or state})

    async def current_state(self, session_id: int) -> str | None:
        session = await sessions_db.get(self.pool, session_id)
        return session.state if session else None

    # -- what workers report ------------------------------------------------------------------

    async def _on_status(self, worker: WorkerHandle, status: ipc.SessionStatus) -> None:
        sid = status.session_id
        current = await self.current_state(sid)
        if status.status == "reconnecting":
            next_at = datetime.now(UTC) + timedelta(seconds=status.retry_in or 0)
            await self.set_state(sid, "reconnecting", error=status.detail, next_attempt_at=next_at)
        elif status.status == "connecting":
            # A retry after a failure stays "reconnecting" (with its next attempt time) until it
            # succeeds: no flapping.
            if current not in ("qr_required", "pairing", "connected", "reconnecting"):
                await self.set_state(sid, "connecting")
        elif status.status == "qr_expired":
            self._qr.pop(sid, None)
            await sessions_db.set_desired(self.pool, sid, "stopped")
            await self.set_state(sid, "qr_expired", error=status.detail)
            self._spawn(self._detach(sid), f"stopping session {sid}")
        elif status.status == "failed":
            await self.set_state(sid, "failed", error=status.detail)
        elif status.status == "stopped" and current not in TERMINAL_STATES:
            await self.set_state(sid, "stopped")

    async def _on_frame(self, worker: WorkerHandle, frame: ipc.EventFrame) -> None:
        sid = frame.session_id
        if frame.seq == 0:
            for ev in frame.events:
                await self._on_live_event(sid, ev)
            return
        ingest = self._ingest.get(sid)
        if ingest is None:
            ingest = self._ingest[sid] = SessionIngest(
                sid,
                self.pool,
                options=StoreOptions(keep_revoked=self.config.keep_revoked),
                ack=functools.partial(self._ack, sid),
                publish=functools.partial(self._publish_changes, sid),
                history_progress=functools.partial(self._history_progress, sid),
                observer=self._observer,
            )
        ingest.put(frame)

    def _ack(self, sid: int, seq: int) -> None:
        worker = self._session_worker.get(sid)
        if worker is not None:
            with contextlib.suppress(ConnectionError, OSError):
                worker.send(ipc.Ack(session_id=sid, seq=seq))

    async def _history_progress(
        self, sid: int, chunk: events.HistoryChunk, changes: Changes
    ) -> None:
        progress = self.history.setdefault(sid, HistoryProgress())
        progress.percent = max(progress.percent, chunk.progress)
        progress.chunks += 1
        progress.imported += changes.history_imported
        progress.skipped += changes.history_skipped
        self._spawn(self._fetch_pending_media(sid), f"history media of session {sid}")
        await self._publish(
            "history-progress",
            sid,
            {
                "session_id": sid,
                "progress": chunk.progress,
                "chunk_order": chunk.chunk_order,
                "sync_type": chunk.sync_type,
                "messages": sum(len(c.messages) for c in chunk.conversations),
                "imported": changes.history_imported,
                "already_stored": changes.history_skipped,
            },
        )

    async def _on_live_event(self, sid: int, ev: events.DriverEvent) -> None:
        if isinstance(ev, events.QRCode):
            self._qr[sid] = QrState(ev.code, ev.expires_at)
            await self.set_state(sid, "qr_required")
            await self._publish(
                "qr-raw", sid, {"session_id": sid, "expires_at": ev.expires_at.isoformat()}
            )
        elif isinstance(ev, events.PairCode):
            self._pair_codes[sid] = ev.code
        elif isinstance(ev, events.PairSuccess):
            self._qr.pop(sid, None)
            await sessions_db.set_identity(
                self.pool, sid, jid=ev.jid, lid=ev.lid, phone=phone_of(ev.jid)
            )
            await self.set_state(sid, "pairing")
        elif isinstance(ev, events.Connected):
            self._qr.pop(sid, None)
            await sessions_db.set_identity(
                self.pool,
                sid,
                jid=ev.jid,
                lid=ev.lid,
                phone=ev.phone or phone_of(ev.jid),
                push_name=ev.push_name,
            )
            await self.set_state(sid, "connected")
            self._spawn(self._fetch_pending_media(sid), f"pending media of session {sid}")
        elif isinstance(ev, events.Disconnected):
            await self.set_state(sid, "reconnecting", error=ev.reason or "connection lost")
        elif isinstance(ev, events.KeepAliveTimeout):
            await self.set_state(sid, "reconnecting", error="keep-alive timeout")
        elif isinstance(ev, events.LoggedOut):
            await sessions_db.clear_identity(self.pool, sid)
            await sessions_db.set_desired(self.pool, sid, "stopped")
            await self.set_state(sid, "logged_out", error=ev.reason or "unlinked from the phone")
            self._spawn(self._detach(sid), f"stopping session {sid}")
        elif isinstance(ev, events.StreamReplaced):
            await sessions_db.set_desired(self.pool, sid, "stopped")
            await self.set_state(
                sid, "replaced", error="another client connected with this device; not fighting it"
            )
            self._spawn(self._detach(sid), f"stopping session {sid}")
        elif isinstance(ev, events.TemporaryBan):
            await self.set_state(
                sid, "banned", error=f"temporary ban (code {ev.code})", banned_until=ev.expires_at
            )
            self._spawn(self._detach(sid), f"stopping session {sid}")
            self._schedule_restart(sid, ev.expires_at)
        elif isinstance(ev, events.ConnectFailure):
            await self.set_state(sid, "reconnecting", error=ev.reason)

    def _schedule_restart(self, sid: int, when: datetime) -> None:
        self._cancel_timer(sid)
        delay = max(0.0, (when - datetime.now(UTC)).total_seconds())
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(sid, None)
            if self._running:
                self._spawn(self.start_session(sid), f"restart of session {sid} after a ban")

        self._timers[sid] = loop.call_later(delay, fire)

    # -- attachments and LIDs, after the commit ----------------------------------------------

    MEDIA_ATTEMPTS = 3

    def _fetch_media(self, sid: int, request: MediaRequest) -> None:
        self._spawn(self._download(sid, request), f"media download {request.message_id}")

    async def _download(self, sid: int, request: MediaRequest) -> None:
        command = ipc.DownloadMedia(
            message_id=request.message_id,
            wa_message_id=request.wa_message_id,
            message=request.raw,
            declared_size=request.media.file_length,
            declared_mime=request.media.mime_type,
        )
        backoff = Backoff(base=self.config.media_retry_base, cap=30.0)
        result: dict[str, Any] | None = None
        error = ""
        for attempt in range(1, self.MEDIA_ATTEMPTS + 1):
            try:
                result = await self.request(sid, command, timeout=300)
                break
            except SessionUnavailable:
                return  # stays pending; fetched again when the session is connected
            except (CommandFailed, TimeoutError) as exc:
                error = str(exc)
                log.warning(
                    "session %s: media of message %s, attempt %s failed: %s",
                    sid,
                    request.message_id,
                    attempt,
                    error,
                )
                if attempt < self.MEDIA_ATTEMPTS:
                    await asyncio.sleep(backoff.next_delay())
        if result is None:
            changed = await messages_db.set_media(self.pool, request.message_id, "failed")
        else:
            changed = await messages_db.set_media(
                self.pool,
                request.message_id,
                str(result["status"]),
                sha256=result.get("sha256"),
                mime=result.get("mime"),
                size=result.get("size"),
            )
        if changed is not None:
            await self._publish(
                "message-updated",
                sid,
                {
                    "session_id": sid,
                    **changed,
                    "change": "media",
                    "media_status": "failed" if result is None else result["status"],
                    "error": error or None,
                },
            )

    async def _fetch_pending_media(self, sid: int) -> None:
        for row in await messages_db.pending_media(self.pool, sid):
            raw = row["raw"] or {}
            media = events.MediaInfo(file_length=row["media_size"], mime_type=row["media_mime"])
            self._fetch_media(
                sid, MediaRequest(row["id"], row["wa_message_id"], media, raw.get("message", {}))
            )

    async def _fetch_photo(self, sid: int, conversation_id: int, person: str) -> None:
        try:
            found = await self.request(sid, ipc.ProfilePicture(jid=person), timeout=30)
        except (SessionUnavailable, CommandFailed, TimeoutError) as exc:
            log.info("session %s: no profile picture for %s (%s)", sid, person, exc)
            return
        if found.get("url"):
            await contacts_db.set_photo(self.pool, sid, person, str(found["url"]))
            await self.publish_conversation(sid, conversation_id)

    async def _fetch_group(self, sid: int, conversation_id: int, group: str) -> None:
        try:
            info = await self.request(sid, ipc.GroupInfo(group=group), timeout=30)
        except (SessionUnavailable, CommandFailed, TimeoutError) as exc:
            log.info("session %s: no info for group %s (%s)", sid, group, exc)
            return
        await conversations_db.set_group(
            self.pool, conversation_id, info.get("name"), list(info.get("participants", []))
        )
        await self.publish_conversation(sid, conversation_id)

    async def _resolve_lids(self, sid: int, lids: set[str]) -> None:
        for lid in sorted(lids):
            try:
                result = await self.request(sid, ipc.ResolveLid(lid=lid), timeout=30)
            except (SessionUnavailable, CommandFailed, TimeoutError) as exc:
                log.info("session %s: no phone number for %s yet (%s)", sid, lid, exc)
                continue
            phone_jid = result.get("phone_jid")
            if not phone_jid:
                continue
            changes = Changes()
            async with self.pool.acquire() as conn, conn.transaction():
                await store_contact(
                    conn, sid, events.ContactUpdate(jid=str(phone_jid), lid=lid), changes
                )
            await self._publish_changes(sid, changes)

    async def publish_conversation(self, sid: int, conversation_id: int) -> None:
        """Tell the owner's clients a conversation changed (e.g. read from the inbox)."""
        await self._publish(
            "conversation-updated", sid, {"session_id": sid, "conversation_id": conversation_id}
        )

    async def _publish_changes(self, sid: int, changes: Changes) -> None:
        for request in changes.media:
            self._fetch_media(sid, request)
        for conversation_id, person in sorted(changes.new_people):
            self._spawn(self._fetch_photo(sid, conversation_id, person), "profile picture")
        for conversation_id, group in sorted(changes.new_groups):
            self._spawn(self._fetch_group(sid, conversation_id, group), "group info")
        if changes.unresolved_lids and sid in self._session_worker:
            self._spawn(self._resolve_lids(sid, set(changes.unresolved_lids)), "LID lookup")
        if not changes:
            return
        items: list[tuple[str, dict[str, Any]]] = []
        base = {"session_id": sid}
        items += [("message-new", {**base, **m}) for m in changes.new_messages]
        items += [("message-status", {**base, **s}) for s in changes.statuses]
        items += [("message-updated", {**base, **u}) for u in changes.updated]
        items += [
            ("conversation-merged", {**base, "conversation_id": kept, "merged_from": gone})
            for gone, kept in changes.merged
        ]
        items += [
            ("conversation-updated", {**base, "conversation_id": cid})
            for cid in sorted(changes.conversations)
        ]
        owner = self._owners.get(sid)
        if self._emit_many is not None and owner is not None:
            try:
                await self._emit_many(owner, sid, items)
            except Exception:
                log.exception("publishing %d events failed", len(items))
            return
        for name, payload in items:
            await self._publish(name, sid, payload)

    def qr_pair_code(self, session_id: int) -> str | None:
        return self._pair_codes.get(session_id)


def device_store_url(database_url: str, schema: str = "whatsmeow") -> str:
    """The whatsmeow device store: the same PostgreSQL database, its own schema."""
    sep = "&" if "?" in database_url else "?"
    return f"{database_url}{sep}search_path={schema}"


async def _close(writer: asyncio.StreamWriter | None) -> None:
    """Close a worker's IPC stream and wait until its socket is really closed."""
    if writer is None:
        return
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 5.0)
