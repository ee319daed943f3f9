"""Socket.IO on the gateway's own port (`/socket.io/`, protocol 5: socket.io-client 4.x).

Every socket authenticates: with `auth: {token}` (or an `Authorization: Bearer` header) at
connect, or, for the current system's clients, with `join {token}` within a few seconds of
connecting. A refused or silent socket is in no room and hears nothing. An authenticated socket
sits in `user:{id}` and in `session:{id}` of each session its user owns; nothing is ever
broadcast to everyone.

Every event of the bus reaches the owner's room under its own name, with its event-log `seq`
(None for ephemeral events), so a client that reconnects asks `GET /api/v1/events?after=` for
what it missed. A QR code (`qr-raw` on the bus, which never carries the code) is rendered here,
on the process that holds the session, and sent as `qr-code` to the owner only.

With `WAGATE_REDIS_URL` set, python-socketio's Redis manager carries every emit to the other
gateway processes, so a client connected to any of them gets its events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import socketio
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from db import sessions as sessions_db
from db.sessions import Session
from db.users import User
from gateway import messaging
from gateway.auth import TokenRefused, check_token
from gateway.bus import BusEvent
from gateway.errors import ApiError
from gateway.keys import BUS, POOL, SESSIONS, SETTINGS, SUPERVISOR
from gateway.qr import qr_data_url
from sessions.supervisor import TERMINAL_STATES

log = structlog.get_logger(__name__)

SOCKETIO_PATH = "socket.io"
NAMESPACE = "/"
JOIN_GRACE_SECONDS = 5.0
"""How long a socket that connected without a token may wait before `join {token}`."""
QUEUE_LIMIT = 50_000
"""Bus events waiting for delivery; past that they are dropped (clients catch up by `seq`)."""

# Bus events that are not forwarded under their own name.
_TRANSFORMED = frozenset({"qr-raw"})


class AuthFailed(Exception):
    """A missing, malformed, expired or foreign token, or a disabled account."""


def user_room(user_id: int) -> str:
    return f"user:{user_id}"


def session_room(session_id: int) -> str:
    return f"session:{session_id}"


def qr_room(session_id: int) -> str:
    """Sockets that asked `get-qr` for a session they may see but do not own (admins)."""
    return f"qr:{session_id}"


# -- what goes over the wire ------------------------------------------------------------------


class LiveEvent(BaseModel):
    """A bus event as a client receives it: its payload, plus where it sits in the event log."""

    model_config = ConfigDict(extra="allow")

    seq: int | None = Field(description="Event-log sequence; None for ephemeral events")
    session_id: int | None
    created_at: datetime


class QrCode(BaseModel):
    sessionId: int
    session_id: int
    qr: str = Field(description="data:image/png;base64,... URL")
    expires_at: datetime
    seq: None = None


class SessionReady(BaseModel):
    success: bool = True
    sessionId: int
    session_id: int
    seq: int | None = None


class MessageSent(BaseModel):
    success: bool = True
    conversationId: int
    messageId: int
    status: str
    seq: None = None


class _Incoming(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    token: str | None = None


class GetQrRequest(_Incoming):
    session_id: int | None = Field(default=None, alias="sessionId")


class SendMessageRequest(_Incoming):
    conversation_id: int = Field(alias="conversationId")
    text: str = Field(alias="textContent", min_length=1, max_length=65536)
    attachments: list[Any] | None = None


def _wire(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


# -- the namespace ----------------------------------------------------------------------------


class RealtimeNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """The one namespace: connect, `join`, `get-qr`, `send-message`."""

    def __init__(self, app: web.Application, *, join_grace: float = JOIN_GRACE_SECONDS) -> None:
        super().__init__(NAMESPACE)
        self.app = app
        self.join_grace = join_grace
        self._users: dict[str, User] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- dispatch -------------------------------------------------------------------------

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """Route `get-qr` to `on_get_qr` (event names have dashes, methods cannot)."""
        return await super().trigger_event(event.replace("-", "_"), *args)

    # -- authentication -------------------------------------------------------------------

    async def authenticate(self, token: str) -> tuple[User, datetime]:
        try:
            return await check_token(self.app, token)
        except TokenRefused as exc:
            raise AuthFailed(str(exc)) from exc

    def user_of(self, sid: str) -> User | None:
        return self._users.get(sid)

    async def _admit(self, sid: str, user: User, expires_at: datetime) -> None:
        self._users[sid] = user
        await self.enter_room(sid, user_room(user.id))
        for session in await sessions_db.list_for(self.app[POOL], user.id):
            await self.enter_room(sid, session_room(session.id))
        # A socket lives no longer than its token: the client reconnects with a fresh one.
        left = (expires_at - datetime.now(UTC)).total_seconds()
        self._arm(sid, max(left, 0.0), "token expired")
        log.debug("socket admitted", sid=sid, user_id=user.id)

    def _arm(self, sid: str, seconds: float, reason: str) -> None:
        self._disarm(sid)
        loop = asyncio.get_running_loop()
        self._timers[sid] = loop.call_later(seconds, self._spawn_expiry, sid, reason)

    def _disarm(self, sid: str) -> None:
        timer = self._timers.pop(sid, None)
        if timer is not None:
            timer.cancel()

    def _spawn_expiry(self, sid: str, reason: str) -> None:
        self._timers.pop(sid, None)
        task = asyncio.get_running_loop().create_task(self._refuse(sid, reason))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("socket task failed", exc_info=task.exception())

    async def _refuse(self, sid: str, reason: str) -> None:
        """Tell the client why, then hang up."""
        with contextlib.suppress(Exception):
            await self.emit("error", reason, to=sid)
        await self.disconnect(sid)

    async def _user_for(self, sid: str, token: str | None) -> User:
        """The socket's user; a `token` in the event authenticates a socket still waiting."""
        user = self._users.get(sid)
        if token is None:
            if user is None:
                raise AuthFailed("not authenticated: connect with auth {token} or send join")
            return user
        claimed, expires_at = await self.authenticate(token)
        if user is None:
            await self._admit(sid, claimed, expires_at)
            return claimed
        if claimed.id != user.id:
            raise AuthFailed("this token belongs to another account than the socket's")
        return user

    async def close_all(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)

    # -- handlers -------------------------------------------------------------------------

    async def on_connect(
        self, sid: str, environ: dict[str, Any], auth: dict[str, Any] | None = None
    ) -> None:
        token = _token_of(auth) or _bearer(environ.get("HTTP_AUTHORIZATION", ""))
        if token is None:
            # The current system's clients connect bare and send `join {token}` right after.
            self._arm(sid, self.join_grace, "not authenticated: send join {token} after connect")
            return
        try:
            user, expires_at = await self.authenticate(token)
        except AuthFailed as exc:
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from exc
        await self._admit(sid, user, expires_at)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self._disarm(sid)
        self._users.pop(sid, None)

    async def on_join(self, sid: str, data: Any = None) -> dict[str, Any]:
        token = _token_of(data)
        if token is None:
            await self._refuse(sid, "join needs {token}")
            return {"success": False, "error": "join needs {token}"}
        try:
            user = await self._user_for(sid, token)
        except AuthFailed as exc:
            await self._refuse(sid, str(exc))
            return {"success": False, "error": str(exc)}
        return {"success": True, "user_id": user.id}

    async def on_get_qr(self, sid: str, data: Any = None) -> dict[str, Any]:
        try:
            request = GetQrRequest.model_validate(data if isinstance(data, dict) else {})
            user = await self._user_for(sid, request.token)
            session = await self._qr_session(user, request.session_id)
            return await self._send_qr(sid, session)
        except (AuthFailed, ApiError, ValidationError) as exc:
            return await self._error(sid, exc)

    async def on_send_message(self, sid: str, data: Any = None) -> dict[str, Any]:
        try:
            request = SendMessageRequest.model_validate(data if isinstance(data, dict) else {})
            user = await self._user_for(sid, request.token)
            if request.attachments:
                raise ApiError(
                    400,
                    "attachments are not sent over Socket.IO; use the REST API",
                    code="attachments_unsupported",
                )
            message, _new = await messaging.send_text(
                self.app, user, request.conversation_id, request.text
            )
        except (AuthFailed, ApiError, ValidationError) as exc:
            return await self._error(sid, exc)
        answer = _wire(
            MessageSent(
                conversationId=request.conversation_id,
                messageId=int(message["id"]),
                status=str(message.get("status") or "pending"),
            )
        )
        await self.emit("message-sent", answer, to=sid)
        return answer

    async def _error(self, sid: str, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, ValidationError):
            text = f"invalid request: {_first_error(exc)}"
        elif isinstance(exc, ApiError):
            text = exc.message
        else:
            text = str(exc)
        await self.emit("error", text, to=sid)
        return {"success": False, "error": text}

    # -- QR codes -------------------------------------------------------------------------

    async def _qr_session(self, user: User, wanted: int | None) -> Session:
        pool = self.app[POOL]
        if wanted is not None:
            session = await sessions_db.get(pool, wanted)
            if session is None or (session.owner_id != user.id and not user.is_admin):
                raise ApiError(404, "session not found")
            return session
        mine = [s for s in await sessions_db.list_for(pool, user.id) if s.channel == "web"]
        if mine:
            waiting = [s for s in mine if s.state != "connected"]
            return (waiting or mine)[0]
        if self.app[SETTINGS].max_sessions_per_user < 1:
            raise ApiError(409, "you may not add WhatsApp accounts", code="session_limit")
        # Its start below publishes `session-state`, which puts the owner's sockets in its room.
        return await sessions_db.create(pool, owner_id=user.id, name="WhatsApp")

    async def _send_qr(self, sid: str, session: Session) -> dict[str, Any]:
        if session.channel != "web":
            raise ApiError(409, "Cloud API numbers are not linked by QR code")
        await self.enter_room(sid, qr_room(session.id))
        if session.state == "connected":
            ready = _wire(SessionReady(sessionId=session.id, session_id=session.id))
            await self.emit("session-ready", ready, to=sid)
            return ready
        directory = self.app[SESSIONS]
        qr = await directory.qr(session.id)
        if qr is not None:
            out = _wire(
                QrCode(
                    sessionId=session.id,
                    session_id=session.id,
                    qr=qr_data_url(qr.code),
                    expires_at=qr.expires_at,
                )
            )
            await self.emit("qr-code", out, to=sid)
            return {"success": True, "sessionId": session.id}
        if session.state in TERMINAL_STATES:
            # Stopped, expired, logged out: a new pairing window. A session that is starting or
            # waiting on another gateway process is left alone; its QR comes as `qr-code`.
            await directory.start_session(session.id)
        return {"success": True, "sessionId": session.id, "pending": True}


def _token_of(data: Any) -> str | None:
    found = data.get("token") if isinstance(data, dict) else data
    if not isinstance(found, str):
        return None
    token = found.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    return token or None


def _bearer(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# -- Redis ------------------------------------------------------------------------------------


class RedisClientManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """python-socketio's Redis manager, with a way to stop its listener and close its
    connections (it has none of its own)."""

    async def close(self) -> None:
        listener = getattr(self, "thread", None)
        if isinstance(listener, asyncio.Future) and not listener.done():
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        pubsub = getattr(self, "pubsub", None)
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        redis = getattr(self, "redis", None)
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()
        self.connected = False


# -- the bus -> rooms bridge --------------------------------------------------------------------


class Realtime:
    """The Socket.IO server of one gateway process and the forwarder from the event bus."""

    def __init__(self, app: web.Application, *, redis_url: str | None = None) -> None:
        self.app = app
        self.manager: RedisClientManager | None = (
            RedisClientManager(redis_url) if redis_url else None
        )
        options: dict[str, Any] = {}
        if self.manager is not None:
            options["client_manager"] = self.manager
        self.server = socketio.AsyncServer(
            async_mode="aiohttp",
            cors_allowed_origins=None,  # the page's own origin only
            logger=False,
            engineio_logger=False,
            **options,
        )
        self.namespace = RealtimeNamespace(app)
        self.server.register_namespace(self.namespace)
        self._queue: asyncio.Queue[BusEvent] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def attach(self) -> None:
        self.server.attach(self.app, socketio_path=SOCKETIO_PATH)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        server = self.server
        if not server.manager_initialized:
            # Start listening on Redis now, not when the first client connects.
            server.manager_initialized = True
            server.manager.initialize()
        self._task = asyncio.get_running_loop().create_task(self._forward_forever())
        self._task.add_done_callback(self._forwarder_done)

    def _forwarder_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("socket.io forwarder stopped", exc_info=task.exception())

    async def close_sockets(self) -> None:
        """Hang up on every client (on shutdown, before the server waits for handlers)."""
        await self.namespace.close_all()
        if self.server.eio.sockets:
            await self.server.eio.disconnect()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.close_sockets()
        await self.server.shutdown()
        if self.manager is not None:
            await self.manager.close()

    # -- forwarding -------------------------------------------------------------------------

    async def on_bus_event(self, event: BusEvent) -> None:
        """The bus subscriber: never waits on a slow client or on Redis."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("socket.io backlog full; events dropped", dropped=self.dropped)

    async def _forward_forever(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self.forward(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("socket.io forward failed", event_name=event.event)
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every event queued so far was handed to Socket.IO (tests, shutdown)."""
        await self._queue.join()

    async def forward(self, event: BusEvent) -> None:
        if event.event == "qr-raw":
            await self._forward_qr(event)
            return
        if event.event in _TRANSFORMED:
            return
        rooms = [user_room(event.user_id)]
        if event.session_id is not None:
            rooms.append(session_room(event.session_id))
            if event.event == "session-state":
                await self._join_session_room(event.user_id, event.session_id)
        payload = dict(event.payload)
        payload.setdefault("session_id", event.session_id)
        payload["seq"] = event.seq
        payload["created_at"] = event.created_at
        data = _wire(LiveEvent.model_validate(payload))
        await self.server.emit(event.event, data, to=rooms, namespace=NAMESPACE)
        if event.event == "conversation-updated":
            # The current system's clients reload their chat list on this one.
            await self.server.emit("chats-updated", data, to=rooms, namespace=NAMESPACE)

    async def _join_session_room(self, user_id: int, session_id: int) -> None:
        manager = self.server.manager
        room = session_room(session_id)
        for sid, _eio in list(manager.get_participants(NAMESPACE, user_room(user_id))):
            await self.server.enter_room(sid, room, namespace=NAMESPACE)

    async def _forward_qr(self, event: BusEvent) -> None:
        sid = event.session_id
        if sid is None:
            return
        qr = self.app[SUPERVISOR].qr(sid)
        if qr is None:  # expired or replaced before we got to it; the next one follows
            return
        data = _wire(
            QrCode(
                sessionId=sid,
                session_id=sid,
                qr=qr_data_url(qr.code),
                expires_at=qr.expires_at,
            )
        )
        # The owner and whoever asked for this session's QR: never the session room.
        rooms = [user_room(event.user_id), qr_room(sid)]
        await self.server.emit("qr-code", data, to=rooms, namespace=NAMESPACE)


REALTIME = web.AppKey("realtime", Realtime)


async def _realtime_context(app: web.Application) -> AsyncIterator[None]:
    realtime = app[REALTIME]
    await realtime.start()
    unsubscribe = app[BUS].subscribe(realtime.on_bus_event)
    try:
        yield
    finally:
        unsubscribe()
        try:
            async with asyncio.timeout(5.0):
                await realtime.stop()
        except TimeoutError:
            log.error("shutdown step timed out", step="socket.io", seconds=5.0)


async def _close_sockets(app: web.Application) -> None:
    await app[REALTIME].close_sockets()


def attach_realtime(app: web.Application) -> Realtime:
    """Mount Socket.IO on `/socket.io/` and forward the bus to it.

    Call after the cleanup context that creates the bus and the supervisor: this one starts
    after it and stops before it.
    """
    settings = app[SETTINGS]
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    realtime = Realtime(app, redis_url=redis_url)
    app[REALTIME] = realtime
    realtime.attach()
    app.on_shutdown.append(_close_sockets)
    app.cleanup_ctx.append(_realtime_context)
    return realtime
