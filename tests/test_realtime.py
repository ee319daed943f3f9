"""Socket.IO with real `socketio.AsyncClient`s: authentication, rooms, QR codes, sending,
catching up by `seq`, and two gateway processes sharing events through Redis."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from gateway.keys import TOKENS
from gateway.realtime import REALTIME
from gateway.settings import Settings
from sessions.fake_server import FakeWhatsApp, Phone
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, bearer, login
from tests.procs import Server, free_port
from tests.sessions_helpers import (
    Client,
    create_session,
    fast_settings,
    link,
    phone,
    text,
    wait_for,
    wait_state,
)

pytestmark = pytest.mark.timeout(120)

PNG_URL = "data:image/png;base64,"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return fast_settings(tmp_path, db_url, qr_first_seconds=2.0)


@pytest.fixture
async def admin(client: Client) -> str:
    return await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)


async def operator(client: Client, admin_token: str, email: str) -> tuple[int, str]:
    password = "operator-password-1"
    resp = await client.post(
        "/api/v1/users",
        json={"email": email, "password": password, "role": "operator"},
        headers=bearer(admin_token),
    )
    assert resp.status == 201, await resp.text()
    return int((await resp.json())["id"]), await login(client, email, password)


class Socket:
    """A real Socket.IO client that records every event it receives, in order."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self.disconnected = asyncio.Event()
        self.sio.on("*", self._record)
        self.sio.on("disconnect", self._gone)
        self.sio.on("connect_error", self._refused)
        self.refusal: Any = None

    async def _record(self, event: str, data: Any = None) -> None:
        self.events.append((event, data))

    async def _refused(self, data: Any = None) -> None:
        self.refusal = data

    async def _gone(self, *_args: Any) -> None:
        self.disconnected.set()

    def named(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    async def wait(
        self, event: str, match: Callable[[Any], bool] = lambda _d: True, timeout: float = 20.0
    ) -> Any:
        async def found() -> Any:
            return next((d for d in self.named(event) if match(d)), None)

        return await wait_for(found, timeout=timeout, what=f"{event!r} on the socket")

    async def connect(self, url: str, **options: Any) -> None:
        await self.sio.connect(url, transports=["websocket"], wait_timeout=10, **options)

    async def close(self) -> None:
        await self.sio.disconnect()
        # python-socketio keeps its aiohttp session open for a reconnection; close it.
        http = getattr(self.sio.eio, "http", None)
        if http is not None and not http.closed:
            await http.close()


@contextlib.asynccontextmanager
async def connected(url: str, **options: Any) -> AsyncIterator[Socket]:
    sock = Socket()
    try:
        await sock.connect(url, **options)
        yield sock
    finally:
        await sock.close()


def base_url(client: Client) -> str:
    return str(client.server.make_url("/"))


def with_session(sid: int) -> Callable[[Any], bool]:
    return lambda d: isinstance(d, dict) and d.get("session_id") == sid


def message_with(body: str) -> Callable[[Any], bool]:
    return lambda d: isinstance(d, dict) and d.get("text_content") == body


async def refused(url: str, **options: Any) -> str:
    sock = Socket()
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await sock.connect(url, **options)
    finally:
        await sock.close()
    assert isinstance(sock.refusal, dict), sock.refusal
    return str(sock.refusal["message"])


# -- authentication ---------------------------------------------------------------------------


async def test_bad_and_expired_tokens_are_refused_at_connect(client: Client, admin: str) -> None:
    url = base_url(client)
    assert "invalid token" in await refused(url, auth={"token": "not-a-token"})
    assert "invalid token" in await refused(url, headers={"Authorization": "Bearer nope"})
    expired, _ = client.app[TOKENS].issue(1, "admin", now=datetime.now(UTC) - timedelta(days=2))
    assert "token expired" in await refused(url, auth={"token": expired})
    # A good token in the header works as well as in `auth`.
    async with connected(url, headers={"Authorization": f"Bearer {admin}"}) as sock:
        assert sock.sio.connected


async def test_a_socket_is_dropped_when_its_token_expires(client: Client) -> None:
    tokens = client.app[TOKENS]
    short, expires = tokens.issue(
        1, "admin", now=datetime.now(UTC) - tokens.ttl + timedelta(seconds=3)
    )
    async with connected(base_url(client), auth={"token": short}) as sock:
        await asyncio.wait_for(sock.disconnected.wait(), 10)
        assert sock.named("error") == ["token expired"]
    assert datetime.now(UTC) >= expires


async def test_a_socket_without_token_hears_nothing_and_is_dropped(
    client: Client, admin: str, settings: Settings
) -> None:
    client.app[REALTIME].namespace.join_grace = 1.0
    async with (
        connected(base_url(client)) as bare,
        connected(base_url(client), auth={"token": admin}) as authed,
    ):
        answer = await bare.sio.call("get-qr", {}, timeout=5)
        assert answer["success"] is False
        assert "not authenticated" in answer["error"]
        sid = await create_session(client, admin)
        await authed.wait("session-state", with_session(sid))
        await asyncio.wait_for(bare.disconnected.wait(), 5)
        assert "not authenticated" in bare.named("error")[-1]
        assert bare.named("session-state") == []
        assert bare.named("qr-code") == []


async def test_join_after_connect_is_accepted(client: Client, admin: str) -> None:
    client.app[REALTIME].namespace.join_grace = 0.5
    async with connected(base_url(client)) as sock:
        answer = await sock.sio.call("join", {"token": admin}, timeout=5)
        assert answer["success"] is True
        await asyncio.sleep(1.0)  # past the grace period: still connected
        assert sock.sio.connected
        sid = await create_session(client, admin)
        state = await sock.wait("session-state", with_session(sid))
        assert isinstance(state["seq"], int)


async def test_join_with_a_bad_token_disconnects(client: Client) -> None:
    async with connected(base_url(client)) as sock:
        await sock.sio.emit("join", {"token": "forged"})
        await asyncio.wait_for(sock.disconnected.wait(), 5)
        assert sock.named("error") == ["invalid token"]


# -- rooms ------------------------------------------------------------------------------------


async def test_two_operators_never_receive_each_others_events(
    client: Client, admin: str, settings: Settings
) -> None:
    ana_id, ana = await operator(client, admin, "ana@example.com")
    bob_id, bob = await operator(client, admin, "bob@example.com")
    url = base_url(client)
    async with (
        connected(url, auth={"token": ana}) as ana_sock,
        connected(url, headers={"Authorization": f"Bearer {bob}"}) as bob_sock,
    ):
        ana_sid = await link(client, ana, settings, "ana's phone")
        bob_sid = await link(client, bob, settings, "bob's phone")
        await ana_sock.wait("session-ready", with_session(ana_sid))
        await bob_sock.wait("session-ready", with_session(bob_sid))
        # Sessions added while connected put the owner's sockets in their rooms, and only them.
        server = client.app[REALTIME].server
        ana_rooms = set(server.rooms(ana_sock.sio.get_sid("/")))
        bob_rooms = set(server.rooms(bob_sock.sio.get_sid("/")))
        assert {f"user:{ana_id}", f"session:{ana_sid}"} <= ana_rooms
        assert {f"user:{bob_id}", f"session:{bob_sid}"} <= bob_rooms
        assert not {f"user:{bob_id}", f"session:{bob_sid}"} & ana_rooms
        assert not {f"user:{ana_id}", f"session:{ana_sid}"} & bob_rooms

        phone(settings, ana_sid).send(text("+5215511111111", "for ana"))
        phone(settings, bob_sid).send(text("+5215522222222", "for bob"))
        ana_msg = await ana_sock.wait("message-new", message_with("for ana"))
        bob_msg = await bob_sock.wait("message-new", message_with("for bob"))
        assert ana_msg["session_id"] == ana_sid
        assert isinstance(ana_msg["seq"], int)
        assert bob_msg["session_id"] == bob_sid
        assert isinstance(bob_msg["seq"], int)
        update = await ana_sock.wait("conversation-updated", with_session(ana_sid))
        chats = await ana_sock.wait("chats-updated", with_session(ana_sid))
        assert chats["conversation_id"] == update["conversation_id"]
        await client.app[REALTIME].drain()
        await asyncio.sleep(0.2)

    for sock, own in ((ana_sock, ana_sid), (bob_sock, bob_sid)):
        sessions = {d.get("session_id") for _, d in sock.events if isinstance(d, dict)}
        assert sessions == {own}, sock.events
        texts = {d.get("text_content") for d in sock.named("message-new")}
        assert texts == {"for ana" if own == ana_sid else "for bob"}
        seqs = [d["seq"] for _, d in sock.events if isinstance(d, dict) and d.get("seq")]
        assert seqs == sorted(seqs), "events arrive in event-log order"


# -- QR codes ---------------------------------------------------------------------------------


async def test_get_qr_sends_the_code_and_every_rotation_to_the_owner_only(
    client: Client, admin: str
) -> None:
    _, ana = await operator(client, admin, "ana@example.com")
    _, bob = await operator(client, admin, "bob@example.com")
    ana_sid = await create_session(client, ana)
    await wait_state(client, ana, ana_sid, "qr_required")
    url = base_url(client)
    async with (
        connected(url, auth={"token": ana}) as ana_sock,
        connected(url, auth={"token": bob}) as bob_sock,
    ):
        answer = await ana_sock.sio.call("get-qr", {"sessionId": ana_sid}, timeout=5)
        assert answer["success"] is True
        first = await ana_sock.wait("qr-code")
        assert first["sessionId"] == ana_sid
        assert first["qr"].startswith(PNG_URL)
        assert base64.b64decode(first["qr"][len(PNG_URL) :]).startswith(b"\x89PNG\r\n\x1a\n")
        assert datetime.fromisoformat(first["expires_at"]) > datetime.now(UTC)
        assert first["seq"] is None  # ephemeral: never in the event log

        # The next code (2 s later in these settings) comes without asking.
        rotated = await ana_sock.wait("qr-code", lambda d: d["qr"] != first["qr"], timeout=10)
        assert rotated["sessionId"] == ana_sid

        # Another operator's session is not found; nothing of Ana's reaches Bob.
        denied = await bob_sock.sio.call("get-qr", {"sessionId": ana_sid}, timeout=5)
        assert denied == {"success": False, "error": "session not found"}
        assert await bob_sock.wait("error") == "session not found"
        assert bob_sock.named("qr-code") == []
        assert [e for e, _ in bob_sock.events if e != "error"] == []


async def test_get_qr_with_the_token_in_the_event_on_a_bare_socket(
    client: Client, admin: str, settings: Settings
) -> None:
    """The current system's client: connect, then `get-qr {token}` with no session id."""
    _, ana = await operator(client, admin, "ana@example.com")
    async with connected(base_url(client)) as sock:
        await sock.sio.emit("get-qr", {"token": ana})
        code = await sock.wait("qr-code")
        assert code["qr"].startswith(PNG_URL)
        sid = code["sessionId"]
        phone(settings, sid).scan()
        ready = await sock.wait("session-ready", with_session(sid))
        assert ready["success"] is True
        assert isinstance(ready["seq"], int)
        # Asked again once linked: it says so instead of showing a code.
        await sock.sio.emit("get-qr", {})
        await sock.wait("session-ready", lambda d: d["seq"] is None)


# -- sending ----------------------------------------------------------------------------------


async def test_send_message_queues_and_answers_message_sent(
    client: Client, admin: str, settings: Settings
) -> None:
    _, ana = await operator(client, admin, "ana@example.com")
    _, bob = await operator(client, admin, "bob@example.com")
    sid = await link(client, ana, settings)
    url = base_url(client)
    async with (
        connected(url, auth={"token": ana}) as sock,
        connected(url, auth={"token": bob}) as other,
    ):
        # Sessions owned at connect time: their rooms are joined on connect.
        assert f"session:{sid}" in client.app[REALTIME].server.rooms(sock.sio.get_sid("/"))
        phone(settings, sid).send(text("+5215511111111", "hello"))
        inbound = await sock.wait("message-new", message_with("hello"))
        conversation = inbound["conversation_id"]

        await sock.sio.emit(
            "send-message", {"conversationId": conversation, "textContent": "hi there"}
        )
        sent = await sock.wait("message-sent")
        assert sent["success"] is True
        assert sent["conversationId"] == conversation
        outbound = await sock.wait("message-new", message_with("hi there"))
        assert outbound["id"] == sent["messageId"]
        assert outbound["direction"] == "outbound"

        # Bob can neither send into Ana's chat nor see it; bad requests get an error.
        await other.sio.emit(
            "send-message", {"conversationId": conversation, "textContent": "intruder"}
        )
        assert await other.wait("error") == "conversation not found"
        await sock.sio.emit("send-message", {"conversationId": conversation})
        assert (await sock.wait("error")).startswith("invalid request: textContent")
    assert other.named("message-new") == []


# -- catching up ------------------------------------------------------------------------------


async def test_a_reconnecting_client_catches_up_by_seq(
    client: Client, admin: str, settings: Settings
) -> None:
    sid = await link(client, admin, settings)
    url = base_url(client)
    async with connected(url, auth={"token": admin}) as sock:
        phone(settings, sid).send(text("+5215511111111", "seen live"))
        seen = await sock.wait("message-new", message_with("seen live"))
        await client.app[REALTIME].drain()
        await asyncio.sleep(0.2)
        last = max(d["seq"] for _, d in sock.events if isinstance(d, dict) and d.get("seq"))
    assert seen["seq"] <= last

    phone(settings, sid).send(
        text("+5215511111111", "missed 1"), text("+5215533333333", "missed 2")
    )

    async def missed() -> list[dict[str, Any]]:
        resp = await client.get(f"/api/v1/events?after={last}", headers=bearer(admin))
        assert resp.status == 200, await resp.text()
        items = (await resp.json())["items"]
        got = {i["data"].get("text_content") for i in items if i["event"] == "message-new"}
        return items if {"missed 1", "missed 2"} <= got else []

    items = await wait_for(missed, what="the missed messages in the event log")
    seqs = [i["seq"] for i in items]
    assert seqs == sorted(seqs)
    assert seqs[0] == last + 1, "nothing lost between the two"

    async with connected(url, auth={"token": admin}) as sock:
        phone(settings, sid).send(text("+5215511111111", "live again"))
        again = await sock.wait("message-new", message_with("live again"))
        assert again["seq"] > seqs[-1]


# -- several gateway processes ----------------------------------------------------------------


def _reachable(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own (`redis-server` on a free port), else the one on 6379.

    Our own keeps the Socket.IO channel to this test: concurrent runs on a shared Redis would
    hear each other's `user:1` rooms.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        if _reachable(6379):
            yield "redis://127.0.0.1:6379/0"
            return
        pytest.fail(
            "this test needs Redis: install redis-server (apt-get install redis-server) "
            "or run one on 127.0.0.1:6379"
        )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _reachable(port):
            assert proc.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def gateway(tmp_path: Path, name: str, db_url: str, redis_url: str) -> Server:
    return Server(
        tmp_path / name,
        free_port(),
        WAGATE_DATABASE_URL=db_url,
        WAGATE_REDIS_URL=redis_url,
        WAGATE_DRIVER="fake",
        WAGATE_SECRET_KEY="shared-secret-key-of-both-gateways",
        WAGATE_ADMIN_EMAIL=ADMIN_EMAIL,
        WAGATE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        WAGATE_LOG_LEVEL="warning",
        WAGATE_SPOOL_SYNC="flush",
        WAGATE_QR_FIRST_SECONDS="20",
    )


def stop(server: Server) -> None:
    if server.proc is not None and server.proc.poll() is None:
        with contextlib.suppress(AssertionError):
            server.signal(signal.SIGTERM)
    server.kill()


@pytest.mark.timeout(180)
async def test_an_event_raised_on_one_process_reaches_a_client_of_another(
    tmp_path: Path, db_url: str, redis_url: str
) -> None:
    a = gateway(tmp_path, "a", db_url, redis_url)
    b = gateway(tmp_path, "b", db_url, redis_url)
    try:
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                f"{a.base}/api/v1/auth/login",
                json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
            )
            token = (await resp.json())["access_token"]
            resp = await http.post(
                f"{a.base}/api/v1/sessions", json={"name": "on a"}, headers=bearer(token)
            )
            assert resp.status == 201, await resp.text()
            sid = int((await resp.json())["id"])

            async def state() -> str | None:
                got = await http.get(f"{a.base}/api/v1/sessions/{sid}", headers=bearer(token))
                body = await got.json()
                return body["state"] if body["worker"] else None

            # The session lives on A (its worker is A's child); the client talks to B only.
            await wait_for(lambda: _is(state, "qr_required"), what="a QR on A")
            fake = Phone(FakeWhatsApp(a.data_dir / "fake-wa"), sid)
            async with connected(b.base, auth={"token": token}) as sock:
                await sock.sio.emit("join", {"token": token})  # harmless when authenticated
                # Asked of B, answered by A: the code, then the next one without asking.
                answer = await sock.sio.call("get-qr", {"sessionId": sid}, timeout=10)
                assert answer["success"] is True
                first = await sock.wait("qr-code", lambda d: d["sessionId"] == sid)
                assert first["qr"].startswith(PNG_URL)
                await sock.wait("qr-code", lambda d: d["qr"] != first["qr"], timeout=30)
                fake.scan()
                ready = await sock.wait("session-ready", with_session(sid))
                assert isinstance(ready["seq"], int)
                fake.send(text("+5215511111111", "raised on A"))
                msg = await sock.wait("message-new", message_with("raised on A"))
                assert msg["session_id"] == sid
                assert isinstance(msg["seq"], int)

                # A send given to B goes out through A; its answer and status come back to B.
                await sock.sio.emit(
                    "send-message",
                    {"conversationId": msg["conversation_id"], "textContent": "sent via B"},
                )
                sent = await sock.wait("message-sent")
                assert sent["success"] is True
                assert sent["conversationId"] == msg["conversation_id"]
                await sock.wait(
                    "message-status",
                    lambda d: d.get("id") == sent["messageId"] and d.get("status") == "sent",
                )
                delivered = [
                    item
                    for item in fake.sent()
                    if item.get("message", {}).get("conversation") == "sent via B"
                ]
                assert len(delivered) == 1
            got = await http.get(f"{b.base}/api/v1/sessions/{sid}", headers=bearer(token))
            assert (await got.json())["worker"] is None, "B never ran the session"
    finally:
        stop(b)
        stop(a)


async def _is(check: Callable[[], Any], expected: str) -> bool:
    return bool(await check() == expected)
