"""Several gateway nodes on one database: session leases, hand-over, and calls to the owner.

Every WhatsApp Web session is run by the node that holds its lease (`db/leases.py`). Each node
renews its leases every third of the lease time; a node that dies stops renewing, its leases
expire, and the others take its sessions over. Each node aims at its fair share (the sessions
that should run divided by the live nodes), so sessions spread and a node that joins gets some.
A node that stops gracefully hands its sessions over at once.

`SessionDirectory` is what the API and Socket.IO call: it runs a command on the local supervisor
when this node holds the session, and otherwise asks the holder over PostgreSQL
`LISTEN/NOTIFY` (outgoing messages need none of this: the outbox row is taken by the holder).
Events come back to the caller's socket through the event bus and Socket.IO's Redis manager.

A single gateway is simply a cluster of one: its node id is stable for its data directory, so a
restart adopts its own leases at once instead of waiting for them to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from pydantic import TypeAdapter

from db import leases
from db import sessions as sessions_db
from gateway.bus import EventBus
from sessions import ipc
from sessions.supervisor import CommandFailed, QrState, SessionSupervisor, SessionUnavailable

log = structlog.get_logger(__name__)

WAKE_CHANNEL = "wagate_sessions"
# Sessions stop on a node that has not renewed its leases for this share of a lease, well
# before another node may take them (at the full lease).
FENCE_AT = 0.7
_COMMANDS: TypeAdapter[Any] = TypeAdapter(ipc.Command)


def default_node_id(data_dir: Path) -> str:
    """Stable for one data directory on one machine (only one gateway may use it at a time)."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:10]
    return f"{socket.gethostname()}-{digest}"


def _rpc_channel(node_id: str) -> str:
    return "wagate_rpc_" + hashlib.sha256(node_id.encode()).hexdigest()[:16]


@dataclass
class ClusterConfig:
    node_id: str
    lease_seconds: float = 15.0
    rpc_timeout: float = 20.0


class RemoteError(Exception):
    pass


class SessionDirectory:
    """The sessions of the whole cluster, seen from this node."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        database_url: str,
        supervisor: SessionSupervisor,
        bus: EventBus,
        config: ClusterConfig,
    ) -> None:
        self.pool = pool
        self._url = database_url
        self.supervisor = supervisor
        self._bus = bus
        self.config = config
        self.node_id = config.node_id
        self._channel = _rpc_channel(config.node_id)
        self._held: set[int] = set()
        self._listener: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._fence_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._last_renewal = time.monotonic()
        self._calls: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._call_ids = itertools.count(1)
        self._handlers: set[asyncio.Task[None]] = set()
        self._tick_lock = asyncio.Lock()
        supervisor.on_fenced = self._on_fenced

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    async def _listen(self) -> None:
        """(Re)open the connection that hears calls and wake-ups (a database restart ends it)."""
        if self._listener is not None and not self._listener.is_closed():
            return
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.terminate()
        self._listener = await asyncpg.connect(self._url)
        await self._listener.add_listener(self._channel, self._on_rpc)
        await self._listener.add_listener(WAKE_CHANNEL, self._on_wake)

    async def start(self) -> None:
        await self._listen()
        await leases.heartbeat(self.pool, self.node_id, socket.gethostname(), os.getpid())
        # Leases a previous run of this node left: this is the same node (same data directory,
        # which only one process can use), so they are ours to keep.
        await self.pool.execute(
            "UPDATE session_leases SET expires_at = now() + make_interval(secs => $2) "
            "WHERE node_id = $1",
            self.node_id,
            self.config.lease_seconds,
        )
        await self._tick()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        self._fence_task = loop.create_task(self._watch_renewals())
        log.info("cluster node up", node_id=self.node_id, sessions=len(self._held))

    async def stop(self, timeout: float = 6.0) -> None:
        """Stop running sessions here and hand them over: the others take them at once."""
        self._stopping = True
        with contextlib.suppress(Exception):
            await leases.set_stopping(self.pool, self.node_id)
        for task in (self._task, self._fence_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.supervisor.stop(timeout=timeout)
        try:
            await leases.leave(self.pool, self.node_id)
            await self._notify(WAKE_CHANNEL, "")
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("leases not handed over (they expire)", error=str(exc))
        self._held.clear()
        for task in list(self._handlers):
            task.cancel()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), 2.0)

    async def _on_fenced(self, session_ids: list[int]) -> None:
        """A worker stopped these sessions at the fence (this node was frozen or cut off from
        the database): they are no longer held here; the next round takes back any whose lease
        is still ours."""
        self._held.difference_update(session_ids)
        self._wake.set()

    def _on_wake(self, *_args: Any) -> None:
        self._wake.set()

    async def _run(self) -> None:
        interval = self.config.lease_seconds / 3
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self._listen()
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease round failed", error=str(exc))
                await self._fence()

    async def _watch_renewals(self) -> None:
        """Fence on a clock of its own: a lease round that hangs (a database that stopped
        answering without closing the connection) must not keep sessions running here past
        the moment another node may take them."""
        period = max(0.2, self.config.lease_seconds / 15)
        while True:
            await asyncio.sleep(period)
            try:
                await self._fence()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fencing failed")

    async def _fence(self) -> None:
        """Could not renew for most of a lease: another node may take our sessions any moment,
        so stop them here first (two nodes must never run one session)."""
        if time.monotonic() - self._last_renewal < self.config.lease_seconds * FENCE_AT:
            return
        if not self._held:
            return
        for sid in sorted(self._held):
            await self.supervisor.release(sid)
        if self._held:
            log.warning("leases could not be renewed: sessions stopped here", n=len(self._held))
        self._held.clear()

    async def _tick(self) -> None:
        async with self._tick_lock:
            ttl = self.config.lease_seconds
            await leases.heartbeat(self.pool, self.node_id, socket.gethostname(), os.getpid())
            # The database dates the new expiry somewhere between asking and the answer: count
            # from the asking, so fencing errs on the early side.
            asked = time.monotonic()
            held = await leases.renew(self.pool, self.node_id, ttl)
            self._last_renewal = asked
            # The workers fence themselves at the same moment as _fence below: a gateway that
            # freezes (and so never runs _fence) still has its sessions stopped in time.
            self.supervisor.fence_until(asked + ttl * FENCE_AT)
            for sid in sorted(self._held - held):
                log.warning("lease lost: stopping the session here", session_id=sid)
                await self.supervisor.release(sid)
            adopted = held - self._held  # a previous run of this node held them
            self._held = held
            for sid in sorted(adopted):
                await self.supervisor.start_session(sid)
            # Held but no longer wanted (stopped or deleted through a node that could not
            # reach us): let go.
            for sid in await leases.held_but_not_wanted(self.pool, self.node_id):
                await self.supervisor.release(sid)
                await leases.release(self.pool, self.node_id, [sid])
                self._held.discard(sid)
            if self._stopping:
                return
            cluster = await leases.cluster(self.pool, ttl)
            share = cluster.fair_share()
            if len(self._held) < share:
                for sid in await leases.claim(
                    self.pool, self.node_id, ttl, share - len(self._held)
                ):
                    self._held.add(sid)
                    log.info("session taken", session_id=sid, node_id=self.node_id)
                    await self.supervisor.start_session(sid)
            elif len(self._held) > share + 1:
                # A node joined: give some away (they restart on the node that takes them).
                extra = sorted(self._held)[share:]
                for sid in extra:
                    await self.supervisor.release(sid)
                await leases.release(self.pool, self.node_id, extra)
                self._held.difference_update(extra)
                log.info("sessions handed over", n=len(extra), node_id=self.node_id)
                await self._notify(WAKE_CHANNEL, "")

    async def _notify(self, channel: str, payload: str) -> None:
        await self.pool.execute("SELECT pg_notify($1, $2)", channel, payload)

    # -- calls to the holder -------------------------------------------------------------------

    async def _holder(self, session_id: int) -> str | None:
        if session_id in self._held:
            return self.node_id
        return await leases.holder(self.pool, session_id)

    async def _call(self, node_id: str, method: str, **args: Any) -> Any:
        call_id = f"{self.node_id}:{next(self._call_ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        body = json.dumps(
            {"id": call_id, "reply": self._channel, "method": method, "args": args}, default=str
        )
        try:
            await self._listen()  # the answer comes back on it
            await self._notify(_rpc_channel(node_id), body)
            reply = await asyncio.wait_for(future, self.config.rpc_timeout)
        except TimeoutError as exc:
            raise SessionUnavailable(
                f"the gateway node running this session ({node_id}) did not answer"
            ) from exc
        finally:
            self._calls.pop(call_id, None)
        if reply.get("ok"):
            return reply.get("result")
        kind = reply.get("kind")
        if kind == "unavailable":
            raise SessionUnavailable(reply.get("error") or "the session is not running")
        if kind == "command":
            raise CommandFailed(reply.get("error_kind") or "failed", reply.get("error") or "")
        raise RemoteError(reply.get("error") or "the remote call failed")

    def _on_rpc(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            message = json.loads(str(payload))
        except ValueError:
            return
        if "method" not in message:
            future = self._calls.get(str(message.get("id")))
            if future is not None and not future.done():
                future.set_result(message)
            return
        task = asyncio.get_running_loop().create_task(self._serve(message))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, message: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": message.get("id")}
        args = message.get("args") or {}
        try:
            reply["result"] = await self._local(str(message["method"]), args)
            reply["ok"] = True
        except SessionUnavailable as exc:
            reply.update(ok=False, kind="unavailable", error=str(exc))
        except CommandFailed as exc:
            reply.update(ok=False, kind="command", error_kind=exc.kind, error=str(exc))
        except Exception as exc:
            log.exception("remote call failed", method=message.get("method"))
            reply.update(ok=False, kind="error", error=str(exc))
        with contextlib.suppress(Exception):
            await self._notify(str(message["reply"]), json.dumps(reply, default=str))

    async def _local(self, method: str, args: dict[str, Any]) -> Any:
        sid = int(args["session_id"])
        if sid not in self._held:
            raise SessionUnavailable("this node no longer runs the session")
        if method == "start_session":
            await self.supervisor.start_session(sid)
            return None
        if method == "stop_session":
            await self._stop_here(sid, str(args.get("state") or "stopped"))
            return None
        if method == "logout":
            await self.supervisor.logout(sid)
            await self._let_go(sid)
            return None
        if method == "forget":
            await self.supervisor.forget(sid)
            await self._let_go(sid)
            return None
        if method == "qr":
            qr = self.supervisor.qr(sid)
            return None if qr is None else {"code": qr.code, "expires_at": qr.expires_at}
        if method == "request":
            command = _COMMANDS.validate_python(args["command"])
            timeout = args.get("timeout")
            return await self.supervisor.request(sid, command, timeout=timeout)
        raise RemoteError(f"unknown method {method}")

    async def _let_go(self, sid: int) -> None:
        await leases.release(self.pool, self.node_id, [sid])
        self._held.discard(sid)

    async def _stop_here(self, sid: int, state: str) -> None:
        await self.supervisor.stop_session(sid, state=state)
        await self._let_go(sid)

    # -- what the API calls ---------------------------------------------------------------------

    async def start_session(self, session_id: int) -> None:
        """Run the session somewhere: here when nobody holds it, else on its holder (which
        starts a new pairing window if it was waiting)."""
        await sessions_db.set_desired(self.pool, session_id, "running")
        holder = await self._holder(session_id)
        if holder is None and not self._stopping:
            # Inside the round's lock: a round running meanwhile would otherwise replace
            # `_held` with what it renewed before this claim, and later "adopt" the session
            # again (a needless restart of its client).
            async with self._tick_lock:
                claimed = await leases.claim(
                    self.pool, self.node_id, self.config.lease_seconds, 1, session_id
                )
                if claimed:
                    self._held.add(session_id)
            holder = self.node_id if claimed else await leases.holder(self.pool, session_id)
        if holder == self.node_id:
            await self.supervisor.start_session(session_id)
        elif holder is not None:
            try:
                await self._call(holder, "start_session", session_id=session_id)
            except SessionUnavailable:
                # It let go meanwhile (hand-over, stop): whoever takes it next starts it.
                await self._notify(WAKE_CHANNEL, "")
        else:
            await self._notify(WAKE_CHANNEL, "")

    async def stop_session(self, session_id: int, *, state: str = "stopped") -> None:
        holder = await self._holder(session_id)
        if holder == self.node_id:
            await self._stop_here(session_id, state)
            return
        if holder is not None:
            with contextlib.suppress(SessionUnavailable):
                await self._call(holder, "stop_session", session_id=session_id, state=state)
                return
        # Nobody runs it (or its node is gone): record the wish and the state here.
        await self.supervisor.stop_session(session_id, state=state)

    async def logout(self, session_id: int) -> None:
        holder = await self._holder(session_id)
        if holder == self.node_id:
            await self.supervisor.logout(session_id)
            await self._let_go(session_id)
            return
        if holder is not None:
            with contextlib.suppress(SessionUnavailable):
                await self._call(holder, "logout", session_id=session_id)
                return
        await self.supervisor.logout(session_id)

    async def forget(self, session_id: int) -> None:
        holder = await self._holder(session_id)
        if holder is not None and holder != self.node_id:
            with contextlib.suppress(SessionUnavailable):
                await self._call(holder, "forget", session_id=session_id)
        await self.supervisor.forget(session_id)
        await self._let_go(session_id)

    async def qr(self, session_id: int) -> QrState | None:
        holder = await self._holder(session_id)
        if holder == self.node_id or holder is None:
            return self.supervisor.qr(session_id)
        try:
            found = await self._call(holder, "qr", session_id=session_id)
        except SessionUnavailable:
            return None
        if not found:
            return None
        return QrState(code=found["code"], expires_at=datetime.fromisoformat(found["expires_at"]))

    async def request(
        self, session_id: int, command: Any, *, timeout: float | None = None
    ) -> dict[str, Any]:
        holder = await self._holder(session_id)
        if holder == self.node_id:
            return await self.supervisor.request(session_id, command, timeout=timeout)
        if holder is None:
            raise SessionUnavailable("the session is not running")
        result = await self._call(
            holder,
            "request",
            session_id=session_id,
            command=command.model_dump(mode="json"),
            timeout=timeout,
        )
        return dict(result or {})

    async def publish_conversation(self, session_id: int, conversation_id: int) -> None:
        if session_id in self._held:
            await self.supervisor.publish_conversation(session_id, conversation_id)
            return
        session = await sessions_db.get(self.pool, session_id)
        if session is not None:
            await self._bus.publish(
                "conversation-updated",
                session.owner_id,
                session_id,
                {"session_id": session_id, "conversation_id": conversation_id},
            )

    def node_of(self, session_id: int) -> str | None:
        """This node's id when it runs the session (for the API's session view)."""
        return self.node_id if session_id in self._held else None
